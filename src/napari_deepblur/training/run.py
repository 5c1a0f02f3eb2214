"""``deepblur train``: the whole recipe, IN then DN, ending in a model file and its card."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..devices import device_name, resolve_device
from ..models import DeepBlurModel, load_family, load_model, save_model, trainable_copy
from ..nets import (
    DeblurringConfig,
    DeblurringNetwork,
    IdentificationConfig,
    IdentificationNetwork,
    count_parameters,
)
from ..optics import ProductConvolution, ZernikeConvolution
from .data import BlurredBatches, NoiseRange, make_image_bank
from .train import LoopConfig, freeze_all_but, train_deblurring, train_identification

ARCHITECTURES = {
    "compact": (IdentificationConfig, DeblurringConfig),
    "large": (
        lambda: IdentificationConfig(
            widths=(48, 96, 192, 384),
            blocks=(1, 1, 2, 2),
            spectrum_widths=(48, 96, 192),
            hidden=384,
        ),
        DeblurringConfig,
    ),
    "paper": (IdentificationConfig.paper, lambda: DeblurringConfig(widths=(64, 128))),
}


@dataclass
class TrainOptions:
    out: Path
    arch: str = "compact"
    fc: float = 0.2
    eta: float = 0.15  # half-width of γ ~ U[−η, η], waves RMS
    noll: tuple[int, ...] = tuple(range(4, 11))
    identification_steps: int = 3000
    deblurring_steps: int = 1500
    batch_size: int = 32
    deblurring_batch_size: int = 8
    deblurring_widths: tuple[int, ...] | None = None  # DN U-Net channels per scale (arch's)
    crop: int = 128
    bank_size: int = 4000
    images: Path | tuple[Path, ...] | None = None  # folder(s) of real sharp images
    real_fraction: float = 1.0  # with images: the share of the bank cut from them
    train_layers: tuple[str, ...] = ()  # IN parameters to train (name prefixes); () all
    kind: str = "mixed"
    seed: int = 0
    device: str = "auto"
    identification_time_s: float | None = None
    deblurring_time_s: float | None = None
    stage: str = "both"  # identification | deblurring | both
    identification_from: Path | None = None  # model file whose IN to start from / to use
    deblurring_from: Path | None = None  # model file whose DN to start from (fine-tuning)
    family_file: Path | None = None  # a family file (e.g. product-convolution) to train for
    parameter_error: float = 0.1  # DN of a field family: γ̂ = γ + this × bank std × N(0, 1)
    lr: float = 1e-3  # identification stage
    deblurring_lr: float = 1e-3
    quiet: bool = False
    command: str | None = None  # recorded in the card; default: this process's command line


def git_commit() -> str:
    """The commit of the code that trains (``+dirty`` with local changes). Where the code
    runs from a copy without ``.git`` (e.g. on a rented GPU machine), the commit is taken
    from the environment variable ``DEEPBLUR_GIT_COMMIT``."""
    if os.environ.get("DEEPBLUR_GIT_COMMIT"):
        return os.environ["DEEPBLUR_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        ).stdout.strip()
        return (
            out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _process_command() -> str:
    """This process's command line, spelled ``deepblur train …`` when it is our CLI."""
    if Path(sys.argv[0]).name in ("deepblur", "cli.py"):
        return shlex.join(["deepblur", *sys.argv[1:]])
    return shlex.join(sys.argv)


def hardware(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = device_name(device)
    return info


def _family(opts: TrainOptions):
    """``(family, fc, family the IN predicts, data description)`` for the options: the
    Zernike family, or a family file's (a product-convolution family's IN reads local
    PSFs: :meth:`ProductConvolution.local_family`)."""
    if opts.family_file is None:
        family = ZernikeConvolution(opts.fc, opts.noll, 31, opts.eta)
        described = f"U[-{opts.eta}, {opts.eta}] waves RMS, Noll {list(opts.noll)}"
        return family, opts.fc, family, described
    family, fc, card = load_family(opts.family_file)
    if isinstance(family, ProductConvolution):
        local = family.local_family(seed=opts.seed)
        described = (
            f"rows of the parameter bank of {opts.family_file} ({len(family.parameter_bank)}); "
            "IN: normalised eigen-PSF weights at random field positions"
        )
        return family, fc, local, described
    return family, fc, family, f"the parameter bank / range of {opts.family_file}"


def _start_from(network: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Copy the parameters of ``source`` whose names and shapes match; returns the names
    that were not copied (e.g. an output layer of another size)."""
    own = network.state_dict()
    theirs = source.state_dict()
    copied = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
    own.update(copied)
    network.load_state_dict(own)
    return sorted(set(own) - set(copied))


def train_model(opts: TrainOptions) -> Path:
    """Train (or resume) a model into ``opts.out``; returns the model file's path."""
    start = time.time()
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    family, fc, in_family, gamma_description = _family(opts)
    opts.fc = fc
    in_cfg, dn_cfg = (make() for make in ARCHITECTURES[opts.arch])
    if opts.deblurring_widths:
        dn_cfg.widths = tuple(opts.deblurring_widths)
    in_cfg.num_parameters = in_family.num_parameters
    in_cfg.training_px = opts.crop
    identification = IdentificationNetwork(in_cfg)
    deblurring = DeblurringNetwork(dn_cfg)
    deblurring_initialised_from = None
    if opts.deblurring_from is not None:
        source = load_model(opts.deblurring_from)
        if source.deblurring is None:
            raise ValueError(f"{opts.deblurring_from} has no deblurring network")
        deblurring = trainable_copy(source.deblurring)
        dn_cfg = deblurring.config
        deblurring_initialised_from = {
            "file": str(opts.deblurring_from),
            "sha256": source.card.get("sha256"),
        }

    bank_size = max(opts.bank_size, 64)
    bank_px = opts.crop + 32
    bank = make_image_bank(
        bank_size, bank_px, opts.seed, opts.kind, opts.images, real_fraction=opts.real_fraction
    )
    held_out = make_image_bank(
        max(bank_size // 16, 64), bank_px, opts.seed + 1, opts.kind, opts.images,
        real_fraction=opts.real_fraction,
    )  # fmt: skip
    noise = NoiseRange()

    def batches(seed, images, for_family=family):
        return BlurredBatches(for_family, images, opts.crop, noise, seed, device)

    history = {}
    initialised_from = None
    in_ckpt = out / "checkpoint-identification.pt"
    if opts.identification_from is not None:
        source = load_model(opts.identification_from)
        reader = isinstance(family, ProductConvolution) and opts.stage == "deblurring"
        if source.family.config() in (in_family.config(), family.config()):
            # the same family (or a model of it, whose IN reads its local weights): as it is
            identification = trainable_copy(source.identification)
        elif reader:  # its network reads local kernels of its own family, as it is
            if abs(source.fc - fc) > 1e-6 or source.family.kernel_size != family.kernel_size:
                raise ValueError(
                    f"{opts.identification_from} works at fc {source.fc} with "
                    f"{source.family.kernel_size} px kernels, the family at fc {fc} with "
                    f"{family.kernel_size} px: it cannot read this family's local PSFs"
                )
            identification = trainable_copy(source.identification)
            in_family = source.family
            family.local_reader = source.family.config()
        else:  # another family: start from its features, with a new output layer
            cfg = IdentificationConfig.from_dict(source.identification.config.to_dict())
            cfg.num_parameters = in_family.num_parameters
            identification = IdentificationNetwork(cfg)
            fresh = _start_from(identification, source.identification)
            if not opts.quiet:
                print(f"identification network from {opts.identification_from}; new: {fresh}")
        in_cfg = identification.config
        previous = dict(source.card.get("training", {}))
        previous.pop("history", None)
        initialised_from = {
            "file": str(opts.identification_from),
            "sha256": source.card.get("sha256"),
            "training": previous,
        }
        history["identification"] = (
            source.card.get("training", {}).get("history", {}).get("identification", [])
        )
    if opts.stage in ("identification", "both"):
        if opts.train_layers:
            freeze_all_but(identification, opts.train_layers)
        cfg = LoopConfig(
            steps=opts.identification_steps,
            batch_size=opts.batch_size,
            lr=opts.lr,
            time_limit_s=opts.identification_time_s,
        )
        history["identification"] = history.get("identification", []) + train_identification(
            identification,
            in_family,
            opts.fc,
            batches(opts.seed, bank, in_family),
            batches(opts.seed + 1, held_out, in_family),
            cfg,
            in_ckpt,
            opts.quiet,
        )
    elif opts.identification_from is None:
        state = torch.load(in_ckpt, map_location=device, weights_only=True)
        identification.load_state_dict(state["module"])
        history["identification"] = state.get("history", [])
    if opts.stage in ("deblurring", "both"):
        cfg = LoopConfig(
            steps=opts.deblurring_steps,
            batch_size=opts.deblurring_batch_size,
            lr=opts.deblurring_lr,
            time_limit_s=opts.deblurring_time_s,
            validate_every=250,
            checkpoint_every=250,
        )
        history["deblurring"] = train_deblurring(
            deblurring,
            identification,
            family,
            opts.fc,
            batches(opts.seed + 2, bank),
            batches(opts.seed + 3, held_out),
            cfg,
            out / "checkpoint-deblurring.pt",
            opts.quiet,
            _parameter_error(family, opts.parameter_error),
        )

    model = DeepBlurModel(family, identification.cpu(), deblurring.cpu(), opts.fc, name=out.name)

    card = {
        "name": out.name,
        "family": family.config(),
        "fc": opts.fc,
        "architecture": {
            "arch": opts.arch,
            "identification": in_cfg.to_dict(),
            "identification_parameters": count_parameters(identification),
            "deblurring": dn_cfg.to_dict(),
            "deblurring_parameters": count_parameters(deblurring),
        },
        "training": {
            "command": opts.command or _process_command(),
            "options": {k: _jsonable(v) for k, v in asdict(opts).items()},
            "seed": opts.seed,
            "identification_steps": history["identification"][-1]["step"]
            if history["identification"]
            else 0,
            "deblurring_steps": history.get("deblurring", [{}])[-1].get("step", 0),
            "data": {
                "images": _describe_images(opts),
                "bank_size": bank_size,
                "crop_px": opts.crop,
                "noise": asdict(noise),
                "gamma": gamma_description,
                "family_file": str(opts.family_file) if opts.family_file else None,
            },
            "identification_initialised_from": initialised_from,
            "deblurring_initialised_from": deblurring_initialised_from,
            "git_commit": git_commit(),
            "wall_time_s": round(time.time() - start, 1),
            "hardware": hardware(device),
            "date": time.strftime("%Y-%m-%d"),
            "history": history,
        },
    }
    return save_model(model, out / "model.safetensors", card)


def _jsonable(value):
    """An option as the card records it (paths as text, also inside tuples)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _describe_images(opts: TrainOptions) -> str:
    """The bank's images as the card records them."""
    if not opts.images:
        return f"synthetic:{opts.kind}"
    folders = [opts.images] if isinstance(opts.images, str | Path) else list(opts.images)
    real = ", ".join(str(f) for f in folders)
    if opts.real_fraction >= 1:
        return real
    return f"{opts.real_fraction:.0%} crops of {real}; the rest synthetic:{opts.kind}"


def _parameter_error(family, relative: float):
    """For a product-convolution family, the operator DN trains with: γ plus Gaussian error
    of ``relative`` × the bank's per-entry std (IN reads local PSFs, and γ is fitted to many
    windows of a whole image, which a training crop is not; the error stands in for the
    identification's). ``None`` (DN trains with IN's estimate) for other families."""
    if not isinstance(family, ProductConvolution) or family.parameter_bank is None:
        return None
    std = family.parameter_bank.float().std(0)

    def operator_for(batch, y_n):
        noise = torch.randn(batch.gamma.shape, device=batch.gamma.device, dtype=torch.float32)
        gamma = batch.gamma.float() + relative * std.to(batch.gamma.device) * noise
        return family.operator(gamma[:, None], y_n.shape[-2:])

    return operator_for
