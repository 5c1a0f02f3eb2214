"""Zernike polynomials in Noll's indexing, orthonormal on the unit disk (RMS 1).

``Z_j(ρ, θ) = sqrt(n + 1) R_n^m(ρ)`` for ``m = 0`` and
``sqrt(2 (n + 1)) R_n^m(ρ) cos(mθ)`` (even ``j``) or ``… sin(mθ)`` (odd ``j``) otherwise,
so that ``mean over the disk of Z_j Z_k = δ_jk`` (Noll 1976). A coefficient of 1 is one wave
RMS of wavefront error when the pupil phase is ``2π Σ γ_j Z_j``.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import factorial

import numpy as np

#: Default aberration family: defocus, 2× astigmatism, 2× coma, 2× trefoil.
DEFAULT_NOLL_INDICES: tuple[int, ...] = tuple(range(4, 11))

_NAMES = {
    1: "piston",
    2: "tilt x",
    3: "tilt y",
    4: "defocus",
    5: "oblique astigmatism",
    6: "vertical astigmatism",
    7: "vertical coma",
    8: "horizontal coma",
    9: "vertical trefoil",
    10: "oblique trefoil",
    11: "primary spherical",
    12: "vertical secondary astigmatism",
    13: "oblique secondary astigmatism",
    14: "vertical quadrafoil",
    15: "oblique quadrafoil",
}


#: The highest Noll index accepted (radial order 10): finer aberrations than a 31 px kernel
#: can show, and far beyond what one image lets a network tell apart.
MAX_NOLL_INDEX = 66


def check_noll_indices(indices: Iterable[int]) -> tuple[int, ...]:
    """``indices`` as a tuple of whole numbers from 1 to :data:`MAX_NOLL_INDEX`, none twice;
    ValueError (TypeError for what is not a list of numbers) otherwise."""
    values = tuple(indices)
    if not all(isinstance(j, int | np.integer) and not isinstance(j, bool) for j in values):
        raise TypeError(f"Noll indices must be whole numbers, got {list(values)!r}")
    bad = [int(j) for j in values if not 1 <= j <= MAX_NOLL_INDEX]
    if bad:
        raise ValueError(
            f"Noll indices run from 1 to {MAX_NOLL_INDEX} (radial order 10) here, got {bad[0]}"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"a Noll index is given twice in {[int(j) for j in values]}")
    return tuple(int(j) for j in values)


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order ``n`` and signed azimuthal frequency ``m`` of Noll index ``j`` (≥ 1).

    The sign of ``m`` follows Noll: even ``j`` → cosine (m > 0), odd ``j`` → sine (m < 0).
    """
    if j < 1:
        raise ValueError(f"Noll indices start at 1, got {j}")
    n = 0
    while (n + 1) * (n + 2) // 2 < j:  # row n holds indices n(n+1)/2 + 1 … (n+1)(n+2)/2
        n += 1
    k = j - n * (n + 1) // 2 - 1  # position within the row, 0..n
    m_abs = _noll_abs_m(n, k)
    if m_abs == 0:
        return n, 0
    return n, (m_abs if j % 2 == 0 else -m_abs)


def _noll_abs_m(n: int, k: int) -> int:
    """|m| of the k-th (0-based) Noll index of radial order n: the zero once, others twice."""
    values = []
    for m in range(n % 2, n + 1, 2):
        values += [m] if m == 0 else [m, m]
    return values[k]


def zernike_name(j: int) -> str:
    """Common optical name of Noll index ``j`` (e.g. 4 → 'defocus')."""
    n, m = noll_to_nm(j)
    return _NAMES.get(j, f"Z{j} (n={n}, m={m})")


def is_even_order(j: int) -> bool:
    """True for terms symmetric under a 180° rotation (``m`` even: defocus, astigmatism, …).

    Flipping the sign of all such terms together leaves an in-focus intensity PSF unchanged.
    """
    return noll_to_nm(j)[1] % 2 == 0


def radial_polynomial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """Zernike radial polynomial ``R_n^|m|(ρ)``."""
    m = abs(m)
    out = np.zeros_like(rho, dtype=np.float64)
    if (n - m) % 2:
        return out
    for s in range((n - m) // 2 + 1):
        c = (-1) ** s * factorial(n - s)
        c /= factorial(s) * factorial((n + m) // 2 - s) * factorial((n - m) // 2 - s)
        out += c * rho ** (n - 2 * s)
    return out


def zernike(j: int, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Orthonormal Zernike polynomial ``Z_j`` at polar coordinates (ρ ≤ 1 on the pupil)."""
    n, m = noll_to_nm(j)
    radial = radial_polynomial(n, m, rho)
    if m == 0:
        return np.sqrt(n + 1) * radial
    angular = np.cos(m * theta) if m > 0 else np.sin(-m * theta)
    return np.sqrt(2 * (n + 1)) * radial * angular


def zernike_basis(noll_indices: Iterable[int], rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Stack ``(K, …)`` of ``Z_j(ρ, θ)`` for the given Noll indices, float64."""
    return np.stack([zernike(int(j), rho, theta) for j in noll_indices])
