"""What the Identify dock shows of an estimate besides layers: the coefficient table
(:func:`coefficient_rows`: Zernike terms in waves RMS, or the γ of a space-varying
estimate, with text bars; :func:`coefficient_text`: every value with the same fixed
decimals; :func:`is_uncertain`: a term whose ± is large next to it) and the summary
(:func:`summary_text`: total aberration, Strehl ratio, noise, model, the uncertain terms;
how the PSF changes across the field)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..formats import zernike_names

#: A full bar in the coefficient table is this many waves RMS.
BAR_FULL_SCALE_WAVES = 0.2


BAR_WIDTH = 10


#: Maréchal criterion: a wavefront error below this RMS (waves) is "diffraction-limited".
MARECHAL_WAVES = 0.072


#: The kernel map of a space-varying estimate: local PSFs on a grid of this many cells a side.
KERNEL_MAP_GRID = 5


#: Decimals of every coefficient in the table (waves RMS, or γ).
DECIMALS = 3


#: A coefficient is "uncertain" when its ± (the spread over flipped copies) is at least this
#: fraction of its magnitude, and at least :data:`UNCERTAIN_MIN` (waves RMS, or γ): below
#: that, a small term with a small spread is surely small.
UNCERTAIN_FRACTION = 0.5
UNCERTAIN_MIN = 0.01
#: How the table marks an uncertain coefficient (its row is also greyed, with this tooltip).
UNCERTAIN_MARK = "?"
UNCERTAIN_TOOLTIP = (
    "Uncertain: the ± (spread over flipped copies of the image) is at least half the value"
)


def coefficient_text(value: float, uncertainty: float | None = None) -> str:
    """A coefficient for the table, always with :data:`DECIMALS` fixed decimals and a sign
    (no e-notation, and no "-0.000": a value that rounds to zero is "0.000").

    >>> coefficient_text(0.0271, 0.004), coefficient_text(-1.474), coefficient_text(-3e-5)
    ('+0.027 ± 0.004', '-1.474', '0.000')
    """
    text = f"{float(value):+.{DECIMALS}f}"
    if float(text) == 0:
        text = f"{0:.{DECIMALS}f}"
    if uncertainty is not None:
        text += f" ± {abs(float(uncertainty)):.{DECIMALS}f}"
    return text


def is_uncertain(value: float, uncertainty: float | None) -> bool:
    """Whether the spread ``uncertainty`` of a coefficient is large next to its value
    (:data:`UNCERTAIN_FRACTION`, :data:`UNCERTAIN_MIN`).

    >>> is_uncertain(0.06, 0.05), is_uncertain(0.2, 0.01), is_uncertain(0.002, 0.003)
    (True, False, False)
    """
    if uncertainty is None:
        return False
    u = abs(float(uncertainty))
    return u >= UNCERTAIN_MIN and u >= UNCERTAIN_FRACTION * abs(float(value))


def is_field_estimate(estimate: Mapping) -> bool:
    """True for a space-varying (product-convolution) estimate (a ``to_dict()`` or PSF
    metadata): its coefficients are the γ of its family, not Zernike coefficients."""
    inner = estimate.get("estimate") if isinstance(estimate.get("estimate"), Mapping) else {}
    return bool(estimate.get("field") or inner.get("field"))


def coefficient_columns(estimate: Mapping) -> tuple[str, str, str]:
    """The coefficient table's column titles for ``estimate``."""
    if is_field_estimate(estimate):
        return ("term", "γ", "")
    return ("aberration", "waves RMS", "")


def coefficient_rows(estimate: Mapping) -> list[dict]:
    """One row per Zernike term of ``estimate`` (a ``to_dict()`` or PSF metadata):
    aberration name, Noll index, coefficient (waves RMS), its uncertainty and a text bar
    proportional to its magnitude (full bar = :data:`BAR_FULL_SCALE_WAVES`); ``label`` is
    the row's short name (``Z4``).

    For a space-varying estimate, one row per parameter ``γ[i, j]`` (no unit; ``noll`` is
    None): ``label`` is its name (``e1·f2``: eigen-PSF 1 weighted by spatial map 2),
    ``aberration`` says it in words, and the full bar is the largest ``|γ|``."""
    coefficients = (
        estimate.get("coefficients", estimate.get("coefficients_waves_rms", estimate.get("gamma")))
        or []
    )
    noll = estimate.get("noll_indices") or []
    names = estimate.get("names") or zernike_names(noll)
    uncertainty = estimate.get("uncertainty", estimate.get("uncertainty_waves_rms"))
    if not noll and is_field_estimate(estimate):
        return _field_rows(estimate, [float(c) for c in coefficients], names, uncertainty)
    rows = []
    for i, (j, c) in enumerate(zip(noll, coefficients, strict=True)):
        u = None if uncertainty is None else float(uncertainty[i])
        rows.append(
            {
                "aberration": names[i] if i < len(names) else f"Z{j}",
                "noll": int(j),
                "label": f"Z{int(j)}",
                "waves_rms": float(c),
                "uncertainty": u,
                "uncertain": is_uncertain(float(c), u),
                "bar": magnitude_bar(float(c)),
            }
        )
    return rows


def _field_rows(estimate: Mapping, gamma: list[float], names, uncertainty) -> list[dict]:
    field_dict = estimate.get("field")
    if not isinstance(field_dict, Mapping):
        field_dict = (estimate.get("estimate") or {}).get("field") or {}
    num_maps = len(field_dict.get("maps") or []) or 1
    full = max((abs(g) for g in gamma), default=0.0) or 1.0
    rows = []
    for k, g in enumerate(gamma):
        i, j = divmod(k, num_maps)
        u = None if uncertainty is None else float(uncertainty[k])
        rows.append(
            {
                "aberration": f"eigen-PSF {i + 1} × map {j + 1}",
                "noll": None,
                "label": names[k] if k < len(names) else f"γ{k + 1}",
                "waves_rms": g,  # (the same key as Zernike rows; γ has no unit)
                "uncertainty": u,
                "uncertain": is_uncertain(g, u),
                "bar": magnitude_bar(g, full=full),
            }
        )
    return rows


def magnitude_bar(value: float, full: float = BAR_FULL_SCALE_WAVES, width: int = BAR_WIDTH) -> str:
    """A text bar of ``|value|`` (eighth-block resolution), ``▸`` past ``full``.

    >>> magnitude_bar(0.1, full=0.2, width=4)
    '██'
    """
    blocks = " ▏▎▍▌▋▊▉█"
    eighths = round(min(abs(value) / full, 1.0) * width * 8)
    text = "█" * (eighths // 8) + (blocks[eighths % 8] if eighths % 8 else "")
    return text + ("▸" if abs(value) > full else "")


def summary_text(estimate: Mapping, field_summary: Mapping | None = None) -> str:
    """Total aberration (RMS waves, Strehl ratio), noise and model, in a few lines. For a
    space-varying estimate, its parameters and how much the PSF changes across the field
    (``field_summary``: :func:`field_summary`, kept in the PSF layer's metadata)."""
    coefficients = np.asarray(
        estimate.get("coefficients", estimate.get("coefficients_waves_rms")) or [], float
    )
    lines = []
    if is_field_estimate(estimate):
        field_dict = estimate.get("field") or (estimate.get("estimate") or {}).get("field") or {}
        psfs, maps = len(field_dict.get("eigen_psfs") or []), len(field_dict.get("maps") or [])
        lines.append(
            f"Space-varying blur (product-convolution): {coefficients.size} parameters γ "
            f"({psfs} eigen-PSFs × {maps} spatial maps); the PSF shown is the one at the "
            "image centre."
        )
        radius = (field_summary or {}).get("rms_radius_px") or {}
        if radius:
            grid = (field_summary or {}).get("grid", KERNEL_MAP_GRID)
            lines.append(
                f"PSF RMS radius: {radius['centre']:.2f} px at the centre, "
                f"{radius['min']:.2f}–{radius['max']:.2f} px across the field "
                f"({grid}×{grid} grid)"
            )
    elif coefficients.size:
        rms = float(np.sqrt((coefficients**2).sum()))
        strehl = math.exp(-((2 * math.pi * rms) ** 2))
        verdict = "diffraction-limited" if rms < MARECHAL_WAVES else "aberrated"
        lines.append(
            f"Total aberration: {rms:.3f} waves RMS, Strehl ≈ {strehl:.2f} ({verdict}; "
            f"diffraction-limited below {MARECHAL_WAVES} waves)"
        )
    noise = estimate.get("noise") or {}
    if noise:
        lines.append(
            f"Noise: Poisson gain α = {noise.get('alpha', 0):.3g}, Gaussian std β = "
            f"{noise.get('beta', 0):.3g} (image intensity units)"
        )
    if estimate.get("refined"):
        lines.append("Refined on the image itself (fit through the physics after the network)")
    if estimate.get("uncertainty", estimate.get("uncertainty_waves_rms")) is not None:
        lines.append(
            "± = spread over flipped/rotated copies of the image (waves RMS); the error "
            "can be larger (a bias of the network is the same in every copy)"
        )
        unsure = [r["aberration"] for r in coefficient_rows(estimate) if r["uncertain"]]
        if unsure:
            lines.append(
                f"Uncertain ({UNCERTAIN_MARK}, greyed): {', '.join(unsure)} (the ± is at "
                "least half the value): the "
                "copies of the image disagree, so take these terms with caution; another "
                "plane or region, or the median over planes, may tell more"
            )
    if estimate.get("model"):
        lines.append(f"Model: {estimate['model']}, fc = {float(estimate.get('fc', 0)):.3f}")
    return "\n".join(lines)


def rms_radius(psf: np.ndarray) -> float:
    """The RMS radius (pixels) of a PSF about its centroid (negative values clipped).

    >>> round(rms_radius(np.pad(np.ones((1, 1)), 2)), 3)
    0.0
    """
    p = np.clip(np.asarray(psf, np.float64), 0, None)
    total = p.sum()
    if total <= 0:
        return 0.0
    yy, xx = np.indices(p.shape)
    cy, cx = (p * yy).sum() / total, (p * xx).sum() / total
    return float(np.sqrt((p * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total))


def field_summary(estimate, count: int = KERNEL_MAP_GRID) -> dict | None:
    """How the PSF of a space-varying ``estimate`` changes across the field: the RMS radius
    (pixels of the image) of the centre PSF and its range over a ``count × count`` grid;
    None without a field."""
    if getattr(estimate, "field", None) is None:
        return None
    _, psfs = estimate.psf_grid(count)
    radii = [rms_radius(p) for p in psfs]
    return {
        "grid": int(count),
        "rms_radius_px": {
            "centre": rms_radius(estimate.psf),
            "min": float(min(radii)),
            "max": float(max(radii)),
        },
        "eigen_psfs": int(estimate.field.num_psfs),
        "maps": int(estimate.field.num_maps),
    }
