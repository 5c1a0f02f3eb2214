"""Model files: one safetensors file holding both networks and the operator family, and a
JSON model card beside it (``<name>.json``) with how it was made and how well it does.

Loading is safe (safetensors holds tensors only, no code), checks the card's SHA-256 when
there is one, and names the file in every error. Shipped models live in ``weights/`` and are
reachable by name (:func:`list_models`); nothing is ever downloaded.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from . import notices
from .devices import (
    bfloat16_available,
    convolution_layout,
    empty_cache,
    inference_autocast,
    resolve_device,
    resolve_precision,
)
from .model_files import (  # noqa: F401 - the model-file names, without torch, re-exported
    _METADATA_KEY,
    DEFAULT_MODEL,
    FORMAT_VERSION,
    WEIGHTS_DIR,
    ModelFileError,
    ModelNotFoundError,
    check_is_model,
    list_models,
    model_header,
    resolve_model_path,
    sha256,
)
from .nets import DeblurringConfig, DeblurringNetwork, IdentificationConfig, IdentificationNetwork
from .optics import NYQUIST_FC, OperatorFamily, ZernikeConvolution, family_from_state
from .optics.psf import MAX_PSF_SIZE_PX
from .optics.zernike import DEFAULT_NOLL_INDICES, check_noll_indices


@dataclass(frozen=True)
class DeepBlurModel:
    """An operator family with its identification and deblurring networks.

    ``fc`` (cycles/pixel) is the sampling the networks were trained at; images with another
    sampling are resampled to it by the pipeline. ``precision``: the networks' arithmetic at
    inference, one of :data:`~napari_deepblur.devices.PRECISIONS`.

    A model is a value: nothing its holder did not ask for changes it. :meth:`to` and
    :meth:`with_precision` return other models and leave this one as it is; the networks of
    a model from :func:`load_model` are shared between its holders and frozen (no
    gradients; train a :func:`trainable_copy`).
    """

    family: OperatorFamily
    identification: IdentificationNetwork
    deblurring: DeblurringNetwork | None
    fc: float
    name: str = "unsaved"
    path: Path | None = None
    card: dict = field(default_factory=dict)
    precision: str = "auto"
    #: for loaded models: their networks by device, shared by every handle of one file
    _placements: dict | None = field(default=None, repr=False, compare=False)

    def to(self, device) -> DeepBlurModel:
        """This model on ``device``: itself when its networks are there, else a model with
        copies of them there, in the device's fastest convolution layout
        (:func:`~napari_deepblur.devices.convolution_layout`); a loaded model's copies are
        made once per device. The precision is kept where the device computes it (a
        bfloat16 model copied to a CPU without bfloat16 runs at "auto")."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if self.device == device:
            return self
        if self._placements is None:  # a model built by its holder: a copy every time
            networks = _copies_on(device, self.identification, self.deblurring)
        else:
            with _PLACEMENT_LOCK:
                if str(device) not in self._placements:
                    first = next(iter(self._placements.values()))
                    self._placements[str(device)] = _copies_on(device, *first)
                networks = self._placements[str(device)]
        precision = self.precision
        if precision == "bfloat16" and not bfloat16_available(device):
            precision = "auto"
        return replace(self, identification=networks[0], deblurring=networks[1],
                       precision=precision)  # fmt: skip

    def with_precision(self, precision: str) -> DeepBlurModel:
        """This model with its networks to run at ``precision`` (checked now, rather than
        mid-run: :class:`~napari_deepblur.devices.PrecisionError` where the device cannot)."""
        resolve_precision(self.device, precision)
        return replace(self, precision=precision)

    @property
    def device(self) -> torch.device:
        return next(self.identification.parameters()).device

    def inference(self):
        """The context the pipeline runs the networks in: bfloat16 autocast or float32, from
        :attr:`precision` and the device (:func:`~napari_deepblur.devices.inference_autocast`)."""
        return inference_autocast(self.device, self.precision)

    def eval(self) -> DeepBlurModel:
        for network in (self.identification, self.deblurring):
            if network is not None and network.training:  # a walk over every module: skip it
                network.eval()
        return self

    def config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "fc": self.fc,
            "family": self.family.config(),
            "identification": self.identification.config.to_dict(),
            "deblurring": None if self.deblurring is None else self.deblurring.config.to_dict(),
        }


_PLACEMENT_LOCK = threading.Lock()


def _copies_on(device: torch.device, *networks):
    """Copies of ``networks`` (None stays None) on ``device`` in its convolution layout."""
    layout = convolution_layout(device)
    return tuple(
        None if network is None else copy.deepcopy(network).to(device, memory_format=layout)
        for network in networks
    )


def fall_back_to_cpu(model: DeepBlurModel, what: str) -> DeepBlurModel:
    """``model``'s CPU copy, to go on with after its GPU ran out of memory ``what`` (e.g.
    "identifying"), with a warning; the caller's model stays where it is. Call it outside
    the ``except`` clause: the failed attempt's tensors, which its traceback holds, must be
    freed first."""
    empty_cache(model.device)
    cpu_model = model.to("cpu")
    precision = resolve_precision(cpu_model.device, cpu_model.precision)
    notices.warn(
        f"out of memory on {model.device} {what}: continuing on the CPU ({precision})",
        RuntimeWarning,
        stacklevel=3,
    )
    return cpu_model


def trainable_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of a (possibly shared, frozen) network to train: gradients on, training mode."""
    return copy.deepcopy(network).requires_grad_(True).train()


def save_model(model: DeepBlurModel, path: str | Path, card: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and, with ``card``, ``path.with_suffix('.json')`` whose
    ``sha256`` is the weights file's. Written atomically (temporary file, then rename)."""
    tensors = {f"identification.{k}": v for k, v in model.identification.state_dict().items()}
    if model.deblurring is not None:
        tensors.update({f"deblurring.{k}": v for k, v in model.deblurring.state_dict().items()})
    tensors.update({f"family.{k}": v for k, v in model.family.tensors().items()})
    # Weights are stored as float16 (half the size; inference upcasts to float32).
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    return _write_with_card(path, tensors, model.config(), card)


def save_family(
    family: OperatorFamily, fc: float, path: str | Path, card: dict | None = None
) -> Path:
    """Write an operator family (e.g. product-convolution from beads or from a field model)
    as a family file: ``path`` (.safetensors, float32) and its card ``path.with_suffix
    ('.json')``. ``fc``: the sampling of its kernels (cycles/pixel)."""
    tensors = {f"family.{k}": v.float() for k, v in family.tensors().items()}
    config = {"format_version": FORMAT_VERSION, "fc": float(fc), "family": family.config()}
    return _write_with_card(path, tensors, config, card)


def _write_with_card(path, tensors: dict, config: dict, card: dict | None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(config)})
    os.replace(tmp, path)
    if card is not None:
        card = {
            **card,
            "file": path.name,
            "sha256": sha256(path),
            "size_bytes": path.stat().st_size,
        }
        card_path = path.with_suffix(".json")
        tmp = card_path.with_name(f".{card_path.name}.partial")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, card_path)
    return path


def load_model(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> DeepBlurModel:
    """Load a shipped model by name (default ``zernike-default``) or a model file by path,
    on ``device`` ("cpu", "cuda", "mps" or "auto"), in eval mode, its networks to run at
    ``precision`` ("auto": bfloat16 where the device computes it natively; "float32";
    "bfloat16"). Files are read once; every call returns a model of its own (the networks,
    frozen, are shared per device), which no later call changes.

    >>> model = load_model(precision="float32")
    >>> model.name, model.fc, model.device.type, model.precision
    ('zernike-default', 0.2, 'cpu', 'float32')
    >>> load_model(device="cpu").precision  # the first model is not changed by it
    'auto'
    """
    path = resolve_model_path(name_or_path).resolve()
    stat = path.stat()
    model = _load_cached(str(path), stat.st_mtime_ns, stat.st_size).to(resolve_device(device))
    if precision is None:  # the former "as it is": the file's models start at "auto"
        precision = "auto"
    model = model.with_precision(precision)
    return replace(model, card=copy.deepcopy(model.card))


def as_model(model=None, device="auto", precision: str | None = None) -> DeepBlurModel:
    """The model an entry point was given, on ``device``, in eval mode: a
    :class:`DeepBlurModel` as it is (moved to ``device``: :meth:`DeepBlurModel.to` returns
    another model, this one is unchanged), else :func:`load_model` of a shipped model's name or
    a model file (None: the default model) at ``precision``."""
    if isinstance(model, DeepBlurModel):
        return model.to(resolve_device(device)).eval()
    return load_model(model, device=device, precision=precision)


def _read_file(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(config, float32 tensors, card)`` of a model or family file, checked."""
    from safetensors import safe_open

    card_path = path.with_suffix(".json")
    card = {}
    if card_path.exists():
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as err:
            raise ModelFileError(f"the card {card_path} is not valid JSON: {err}") from err
        if not isinstance(card, dict):
            raise ModelFileError(f"the card {card_path} is not a JSON object ({{...}})")
        if card.get("sha256") and card["sha256"] != sha256(path):
            raise ModelFileError(
                f"the file {path} does not match the checksum in its card {card_path}: "
                "the file is corrupt or was replaced; reinstall the package or rebuild it"
            )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
        config = json.loads(metadata[_METADATA_KEY])
    except (OSError, KeyError, json.JSONDecodeError, Exception) as err:  # noqa: BLE001
        raise ModelFileError(f"{path} is not a readable napari-deepblur file: {err}") from err
    if not isinstance(config, dict):
        raise ModelFileError(
            f"{path}: its settings (metadata {_METADATA_KEY!r}) are not a JSON object"
        )
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: unsupported format {config.get('format_version')}")
    fc = config.get("fc")
    if not (_is_int_or_float(fc) and 0 < fc <= NYQUIST_FC):
        raise ModelFileError(f"{path}: its sampling fc {fc!r} is not a number in (0, {NYQUIST_FC}]")
    return config, tensors, card


#: The most parameters a model file's networks may have (the shipped ones have ~3 M, the
#: paper's ResNet-18-like one ~11 M): counted from the settings, on torch's "meta" device,
#: before anything is built, so that a crafted file cannot make us allocate gigabytes.
MAX_NETWORK_PARAMETERS = 100_000_000
#: A network setting: a whole number, or a list of 1 to :data:`_MAX_STAGES` ("ints"), from a
#: minimum to a maximum: generous for any network worth training (the shipped ones: 4
#: stages, 2 blocks, 4 iterations), tight enough to count the largest in about a second.
_MAX_STAGES = 6
_NETWORK_SETTINGS = {
    "identification": {
        "num_parameters": ("int", 1, 1024),
        "widths": ("ints", 1, 4096),
        "blocks": ("ints", 1, 8),
        "spectrum_widths": ("ints", 1, 4096),
        "spectrum_window": ("int", 8, 1024),
        "border": ("int", 0, 1024),
        "hidden": ("int", 1, 65536),
        "training_px": ("int", 16, 16384),
    },
    "deblurring": {
        "iterations": ("int", 1, 16),
        "widths": ("ints", 1, 4096),
        "blocks": ("int", 1, 8),
    },
}
_NETWORKS = {
    "identification": (IdentificationConfig, IdentificationNetwork),
    "deblurring": (DeblurringConfig, DeblurringNetwork),
}


def _is_int_or_float(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _network_config(path: Path, part: str, settings) -> IdentificationConfig | DeblurringConfig:
    """The config of the ``part`` network from a file's settings, checked: known keys,
    whole numbers within :data:`_NETWORK_SETTINGS`' bounds."""
    if not isinstance(settings, dict):
        raise ModelFileError(f"{path}: its {part} settings are not a JSON object")
    known = _NETWORK_SETTINGS[part]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ModelFileError(
            f"{path}: unknown {part} setting(s) {', '.join(map(repr, unknown))} (a file from "
            "a newer napari-deepblur, or a damaged one)"
        )
    for key, value in settings.items():
        kind, low, high = known[key]
        values = value if kind == "ints" and isinstance(value, list) else [value]
        ok = (kind == "int" or isinstance(value, list) and 1 <= len(value) <= _MAX_STAGES) and all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
        )
        if not ok:
            what = "a whole number"
            if kind == "ints":
                what = f"a list of 1 to {_MAX_STAGES} whole numbers"
            raise ModelFileError(
                f"{path}: the {part} setting {key} = {value!r} is not {what} from {low} to {high}"
            )
    config = _NETWORKS[part][0].from_dict(settings)
    if part == "identification" and len(config.blocks) != len(config.widths):
        raise ModelFileError(
            f"{path}: the identification network has {len(config.widths)} widths but "
            f"{len(config.blocks)} block counts"
        )
    return config


def _check_tensors(path: Path, configs: dict, tensors: dict[str, torch.Tensor]) -> None:
    """The networks' size (at most :data:`MAX_NETWORK_PARAMETERS`) and the file's tensors
    (names and shapes) against the networks its settings describe, built on the "meta"
    device (shapes only, no memory)."""
    expected = {}
    with torch.device("meta"):
        for part, config in configs.items():
            network = _NETWORKS[part][1](config)
            expected.update({f"{part}.{k}": v.shape for k, v in network.state_dict().items()})
    size = sum(shape.numel() for shape in expected.values())
    if size > MAX_NETWORK_PARAMETERS:
        raise ModelFileError(
            f"{path}: its settings describe networks of {size:,} parameters, above the "
            f"{MAX_NETWORK_PARAMETERS:,} this version loads (a damaged or crafted file?)"
        )
    given = {k: v.shape for k, v in tensors.items() if k.split(".", 1)[0] in configs}
    problems = [f"{k} missing" for k in expected if k not in given]
    problems += [f"{k} unexpected" for k in given if k not in expected]
    problems += [
        f"{k} of shape {tuple(given[k])} instead of {tuple(shape)}"
        for k, shape in expected.items()
        if k in given and given[k] != shape
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(
            f"{path}: its tensors do not match its network settings: "
            f"{'; '.join(problems[:3])}{more}"
        )


def _family(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> OperatorFamily:
    """The operator family of a file, checked (ModelFileError naming the file)."""
    settings = config.get("family")
    if not isinstance(settings, dict):
        raise ModelFileError(f"{path}: its family settings are missing or not a JSON object")
    if settings.get("kind") == ZernikeConvolution.kind:
        try:
            check_noll_indices(settings.get("noll_indices", DEFAULT_NOLL_INDICES))
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: its Zernike family is not usable: {err}") from err
        size = settings.get("kernel_size", 31)
        if not (isinstance(size, int) and size % 2 == 1 and 3 <= size <= MAX_PSF_SIZE_PX):
            raise ModelFileError(
                f"{path}: its kernel size {size!r} is not an odd number of pixels from 3 to "
                f"{MAX_PSF_SIZE_PX}"
            )
    part = _part(tensors, "family")
    if not all(bool(torch.isfinite(t).all()) for t in part.values() if t.is_floating_point()):
        raise ModelFileError(f"{path}: its operator family holds NaN or infinite values")
    try:
        return family_from_state(settings, part)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise ModelFileError(f"{path} does not hold a usable operator family: {err}") from err


def _part(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_family(path: str | Path) -> tuple[OperatorFamily, float, dict]:
    """An operator family from a family file or a model file: ``(family, fc, card)``."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"family file not found: {path}")
    config, tensors, card = _read_file(path)
    return _family(path, config, tensors), float(config["fc"]), card


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> DeepBlurModel:
    path = Path(path)
    config, tensors, card = _read_file(path)
    check_is_model(path, config)
    family = _family(path, config, tensors)
    configs = {"identification": _network_config(path, "identification", config["identification"])}
    if config.get("deblurring"):
        configs["deblurring"] = _network_config(path, "deblurring", config["deblurring"])
    predicted = configs["identification"].num_parameters
    if isinstance(family, ZernikeConvolution) and predicted != family.num_parameters:
        raise ModelFileError(
            f"{path}: its identification network gives {predicted} coefficients for "
            f"{family.num_parameters} Zernike terms"
        )
    _check_tensors(path, configs, tensors)
    identification = IdentificationNetwork(configs["identification"])
    identification.load_state_dict(_part(tensors, "identification"))
    deblurring = None
    if "deblurring" in configs:
        deblurring = DeblurringNetwork(configs["deblurring"])
        deblurring.load_state_dict(_part(tensors, "deblurring"))
    layout = convolution_layout(torch.device("cpu"))
    networks = tuple(
        None if network is None else network.to(memory_format=layout).requires_grad_(False).eval()
        for network in (identification, deblurring)
    )
    return DeepBlurModel(
        family, *networks, float(config["fc"]), path.stem, path, card,
        _placements={"cpu": networks},
    )  # fmt: skip
