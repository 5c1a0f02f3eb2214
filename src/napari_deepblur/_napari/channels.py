"""Channels are not planes: the channel axis of a layer (from its metadata, or the OME /
ImageJ metadata of the TIFF it was opened from, whichever reader opened it), and the
refusal of a job that would mix channels (:func:`check_not_across_channels`). A median over
the planes of a CYX stack, or one PSF for all its planes, would mix emission wavelengths."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .messages import UserError


def layer_axes(
    metadata: Mapping | None, shape: Sequence[int], source_path: str | os.PathLike | None = None
) -> str:
    """The axes of a layer's data (``"CYX"``, ``"ZCYX"``…) when known: its metadata's
    ``axes``, else those of the TIFF it was opened from when that file's shape is the
    layer's; ``""`` when unknown."""
    shape = tuple(int(n) for n in shape)
    axes = (metadata or {}).get("axes")
    if isinstance(axes, str) and len(axes) == len(shape):
        return axes.upper()
    if source_path and str(source_path).lower().endswith((".tif", ".tiff")):
        from ..io import read_axes

        file_axes, file_shape = read_axes(source_path)
        if file_axes and file_shape == shape:
            return file_axes.upper()
    return ""


def channel_count(axes: str, shape: Sequence[int]) -> int:
    """The number of channels (the length of axis ``C``; 1 without one).

    >>> channel_count("CYX", (3, 64, 64)), channel_count("ZYX", (5, 64, 64))
    (3, 1)
    """
    return int(shape[axes.index("C")]) if "C" in axes and len(axes) == len(shape) else 1


def check_not_across_channels(axes: str, shape: Sequence[int], what: str) -> None:
    """Refuse, with a :class:`UserError` that says what to do, a job over all planes of a
    stack with several channels. ``what``: the job, in words ("the median over all
    planes")."""
    channels = channel_count(axes, shape)
    if channels <= 1:
        return
    raise UserError(
        f"this stack has {channels} channels (axes {axes}), and {what} would mix channels "
        "imaged at different wavelengths, with one wavelength. Channels are not planes: "
        "choose 'current plane' and move the channel slider, setting each channel's "
        "emission wavelength, or split the channels (right-click the layer › Split Stack) "
        "and process each channel layer"
    )
