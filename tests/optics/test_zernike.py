import numpy as np
import pytest

from napari_deepblur.optics.zernike import is_even_order, noll_to_nm, zernike, zernike_name


def test_noll_ordering_matches_noll_1976():
    expected = [
        (0, 0),
        (1, 1),
        (1, -1),
        (2, 0),
        (2, -2),
        (2, 2),
        (3, -1),
        (3, 1),
        (3, -3),
        (3, 3),
        (4, 0),
        (4, 2),
        (4, -2),
        (4, 4),
        (4, -4),
    ]
    assert [noll_to_nm(j) for j in range(1, 16)] == expected
    assert zernike_name(4) == "defocus"
    assert [is_even_order(j) for j in range(4, 12)] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        True,
    ]


def test_orthonormal_on_unit_disk():
    # Dense polar quadrature: Gauss–Legendre in r (weight r), uniform in θ.
    nodes, weights = np.polynomial.legendre.leggauss(40)
    r = (nodes + 1) / 2
    w_r = weights / 2 * r
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rr, tt = np.meshgrid(r, theta, indexing="ij")
    w = (w_r[:, None] * np.full(theta.size, 2 * np.pi / theta.size)[None]) / np.pi
    basis = np.stack([zernike(j, rr, tt) for j in range(1, 22)])
    gram = np.einsum("iab,jab,ab->ij", basis, basis, w)
    np.testing.assert_allclose(gram, np.eye(21), atol=1e-10)


def test_invalid_index():
    with pytest.raises(ValueError, match="start at 1"):
        noll_to_nm(0)
