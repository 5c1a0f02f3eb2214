"""Tiles: their layout over an image (on the deblurring network's stride), their blending,
reading and writing."""

from __future__ import annotations

import numpy as np

from ..models import DeepBlurModel
from ._sampling import resamples

#: Images are processed in tiles of at most this many pixels a side (bounded memory).
DEFAULT_TILE_PX = 1024


TILE_OVERLAP_PX = 64


#: The smallest tile size accepted (``tile_px``, ``--tile-px``): two blending overlaps.
MIN_TILE_PX = 2 * TILE_OVERLAP_PX


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with ≥ ``overlap`` px."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _blend_window(shape, overlap: int) -> np.ndarray:
    """Separable weights: 1 inside, a raised-cosine ramp over ``overlap`` px at the edges."""

    def ramp(n):
        w = np.ones(n, np.float32)
        m = min(overlap, n // 2)
        if m:
            r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
            w[:m], w[n - m :] = r, r[::-1]
        return w

    return ramp(shape[0])[:, None] * ramp(shape[1])[None, :]


def check_tile_px(tile_px) -> int:
    """``tile_px`` as an int, or a ValueError that says what is accepted."""
    if isinstance(tile_px, bool) or not isinstance(tile_px, int | np.integer):
        raise ValueError(f"the tile size must be a whole number of pixels, got {tile_px!r}")
    if tile_px < MIN_TILE_PX:
        raise ValueError(f"the tile size must be at least {MIN_TILE_PX} px, got {tile_px}")
    return int(tile_px)


def _grid_factor(model: DeepBlurModel) -> int:
    """The deblurring network's stride (pixel-unshuffle × down-samplings): its output is
    shift-equivariant only for shifts that are multiples of it, so tiles start on it."""
    if model.deblurring is None:
        return 1
    return max((int(getattr(m, "factor", 1)) for m in model.deblurring.modules()), default=1)


def _tile_spans(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """``(start, end)`` of tiles of about ``tile`` px covering ``length`` px, overlapping by
    at least ``overlap`` px, starting on multiples of ``align`` (the last tile then reaches
    the end, up to ``align − 1`` px longer)."""
    if length <= tile:
        return [(0, length)]
    count = len(tile_starts(length, tile, overlap + align))
    # The smallest tiles that cover the length in as many tiles: a 2048 px side cut into
    # 1024 px tiles would otherwise be computed 2.25 times over (3 tiles of 1024 px).
    balanced = -(-(length + (count - 1) * (overlap + align)) // count)
    tile = min(tile, -(-balanced // align) * align)
    starts = [s // align * align for s in tile_starts(length, tile, overlap + align)]
    ends = [min(length, s + tile) for s in starts[:-1]] + [length]
    return list(zip(starts, ends, strict=True))


def _tile_layout(
    shape, zoom: float, tile_px: int, align: int = 1
) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """The overlap (the blending ramp) in the image's pixels and the tiles' row and column
    spans; ``tile_px`` and the overlap are given in the model's pixels. Tiles start on
    multiples of ``align`` when the image is not resampled."""
    tile_px = check_tile_px(tile_px)
    if not resamples(zoom):
        tile, overlap = tile_px, TILE_OVERLAP_PX
    else:
        tile = max(2 * TILE_OVERLAP_PX, int(tile_px / zoom))
        overlap = int(np.ceil(TILE_OVERLAP_PX / zoom))
        align = 1  # resampled tiles have their own grid
    overlap = min(overlap, tile // 2)
    align = align if tile > 4 * align else 1
    rows, cols = (_tile_spans(n, tile, overlap, align) for n in shape)
    return overlap, rows, cols


def _read_tile(
    source, rows: tuple[int, int], cols: tuple[int, int], scanned: bool = False
) -> np.ndarray:
    """The tile ``rows × cols`` of ``source`` as float32, refused when it holds NaN or
    infinite values; ``scanned``: ``source`` was checked (:func:`check_finite`), so only
    tiles of wider floats, which float32 may overflow, are checked again."""
    block = np.array(source[rows[0] : rows[1], cols[0] : cols[1]], dtype=np.float32)
    dtype = np.dtype(source.dtype)
    if scanned and not (dtype.kind == "f" and dtype.itemsize > 4):
        return block
    if not np.isfinite(block).all():
        bad = int((~np.isfinite(block)).sum())
        raise ValueError(
            f"the image has NaN or infinite pixels ({bad} in the tile at y={rows[0]}, "
            f"x={cols[0]}); replace them (e.g. with numpy.nan_to_num or an inpainting) first"
        )
    return block


def _store_rows(out, top: int, rows: np.ndarray) -> None:
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        rows = np.clip(np.rint(rows), info.min, info.max)
    out[top : top + rows.shape[0]] = rows.astype(out.dtype, copy=False)
