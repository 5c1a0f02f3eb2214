"""Model files without torch: where the shipped models are, their names and cards, a name
or path resolved to a file, and a file's header (its sampling and family) — what a dock
needs to offer and describe models before any network is loaded, so that opening it does
not import torch on napari's main thread. :mod:`napari_deepblur.models` loads them."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

#: The shipped models (``<name>.safetensors`` with its card ``<name>.json``).
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "zernike-default"
#: The range of ``strength`` where the deblurring networks do what they promise (> 1 smoother,
#: < 1 sharper): measured on the demo and on table1 images at L1/H1 (SSIM against strength,
#: 2026-12-03), the result turns noisier again above ~3 and falls apart towards 10, far from the
#: noise levels it was trained on.
STRENGTH_RANGE = (0.25, 3.0)
#: The family kind of space-varying models (``optics.families.ProductConvolution.kind``),
#: which :func:`model_header` reports.
SPACE_VARYING_KIND = "product_convolution"
FORMAT_VERSION = 1
_METADATA_KEY = "napari_deepblur"


class ModelFileError(ValueError):
    """A model file that cannot be used: corrupt, truncated, or of another format."""


class ModelNotFoundError(FileNotFoundError):
    """A model or family file that does not exist, or no shipped model of that name."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_models() -> dict[str, dict]:
    """Shipped models by name → their model card (``{}`` if a card is missing)."""
    models = {}
    for path in sorted(WEIGHTS_DIR.glob("*.safetensors")):
        card = path.with_suffix(".json")
        models[path.stem] = json.loads(card.read_text()) if card.exists() else {}
    return models


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A shipped model's name, or a path to a ``.safetensors`` file → its path."""
    name_or_path = name_or_path or DEFAULT_MODEL
    candidate = Path(name_or_path)
    if candidate.suffix == ".safetensors" or candidate.exists() or os.sep in str(name_or_path):
        if not candidate.exists():
            raise ModelNotFoundError(f"model file not found: {candidate}")
        return candidate
    shipped = WEIGHTS_DIR / f"{name_or_path}.safetensors"
    if not shipped.exists():
        names = ", ".join(list_models()) or "none"
        raise ModelNotFoundError(
            f"no shipped model named {name_or_path!r} (looked for {shipped}); available: {names}"
        )
    return shipped


def model_header(name_or_path: str | Path | None = None) -> tuple[float, str]:
    """``(fc, family kind)`` of a model file, from its header alone (milliseconds: no
    weights read, no network built), e.g. for a dock to show the sampling as soon as a
    model is chosen; :func:`load_model` checks the file in full when it is used.

    >>> model_header("field-default")
    (0.2, 'product_convolution')
    """
    path = resolve_model_path(name_or_path).resolve()
    stat = path.stat()
    return _header_cached(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _header_cached(path: str, mtime_ns: int, size: int) -> tuple[float, str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            config = json.loads((f.metadata() or {})[_METADATA_KEY])
        fc, kind = float(config["fc"]), str(config["family"]["kind"])
    except Exception as err:  # noqa: BLE001 - any unreadable header is one error
        raise ModelFileError(f"{path} is not a readable napari-deepblur file: {err}") from err
    check_is_model(path, config)
    return fc, kind


def check_is_model(path, config: dict) -> None:
    """Refuse a family file (from calibration: the operators, no networks) where a model
    is needed, from its configuration (a model file's header)."""
    if "identification" not in config:
        raise ModelFileError(f"{path} is a family file, not a model (train one with it)")
