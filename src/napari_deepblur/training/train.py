"""Training loops: IN on (y, γ) pairs, then DN with IN's estimate γ̂ as input (as the paper).

Both loops are seeded, resumable from a checkpoint, show a progress bar with the loss and
throughput, validate on a fixed held-out draw, and can stop on a time budget: the learning
rate follows a cosine from ``lr`` to ``lr / 100`` over whichever of steps or time runs out
first, so a time-limited run still ends with a decayed rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..devices import convolution_layout, native_bfloat16
from ..intensity import identification_inputs, normalize
from ..nets import DeblurringNetwork, IdentificationNetwork
from ..optics import OperatorFamily
from ..optics.noise import estimate_noise, noise_sigma_map
from ..pipeline import Progress, ProgressBar
from .data import BlurredBatches
from .losses import identification_loss, psf_snr_db


@dataclass
class LoopConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    time_limit_s: float | None = None
    validate_every: int = 500
    checkpoint_every: int = 500
    amp: bool = True  # bf16 autocast where the device computes it natively (CUDA, recent CPUs)


def network_inputs(
    y: torch.Tensor, fc: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw blurred images ``(B, H, W)`` → ``(y_n (B,1,H,W), σ_n (B,1,H,W), low, scale)``.

    ``y_n`` is :func:`identification_inputs`' normalised image and ``σ_n`` the per-pixel
    noise std estimated from it (Poisson–Gaussian, in normalised units,
    :func:`~napari_deepblur.optics.noise.noise_sigma_map`, as the pipeline computes it), which
    the deblurring network needs.
    """
    y_n, low, scale = identification_inputs(y)
    alpha, beta = estimate_noise(y_n[:, 0], fc)
    sigma = noise_sigma_map(y_n, alpha[:, None, None, None], beta[:, None, None, None])
    return y_n, sigma, low, scale


def _learning_rate(cfg: LoopConfig, step: int, elapsed: float) -> float:
    progress = step / cfg.steps
    if cfg.time_limit_s:
        progress = max(progress, elapsed / cfg.time_limit_s)
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def freeze_all_but(network: torch.nn.Module, prefixes) -> list[str]:
    """Train only the parameters whose names start with one of ``prefixes`` (e.g.
    ``("image_stages.3", "head")``): fine-tuning the last layers costs a fraction of a full
    step (on a 2-core CPU: head only 4×, the last stages 2× faster). Returns the names of
    the parameters left trainable; an error when a prefix matches nothing."""
    prefixes = tuple(prefixes)
    names = [name for name, _ in network.named_parameters()]
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"no layer named {', '.join(unknown)}; the network has {', '.join(tops)}")
    kept = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
        if parameter.requires_grad:
            kept.append(name)
    return kept


def _train_mode(module: torch.nn.Module) -> None:
    """``module.train()``, but batch norms whose parameters are frozen stay in eval mode:
    their running statistics belong to the frozen layers around them."""
    module.train()
    for child in module.modules():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in child.parameters()
        ):
            child.eval()


class _Loop:
    """The shared mechanics: optimiser, schedule, checkpoint, progress bar, time budget."""

    def __init__(
        self,
        name: str,
        module: torch.nn.Module,
        cfg: LoopConfig,
        checkpoint: Path | None,
        device: torch.device,
    ):
        self.name, self.module, self.cfg, self.device = name, module, cfg, device
        self.checkpoint = checkpoint
        self.trainable = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trainable, lr=cfg.lr)
        self.step = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        if checkpoint is not None and checkpoint.exists():
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            module.load_state_dict(state["module"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
            self.history = list(state.get("history", []))

    def save(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_name(self.checkpoint.name + ".partial")
        torch.save(
            {
                "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "elapsed": self.elapsed,
                "history": self.history,
                "config": asdict(self.cfg),
            },
            tmp,
        )
        tmp.replace(self.checkpoint)

    def autocast(self):
        enabled = self.cfg.amp and native_bfloat16(self.device)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def run(self, train_step, validate, quiet: bool = False) -> list[dict]:
        cfg = self.cfg
        bar, postfix = ProgressBar(self.name, quiet, leave=True), ""
        start = time.perf_counter() - self.elapsed
        samples_t0, t0 = 0, time.perf_counter()
        while self.step < cfg.steps:
            self.elapsed = time.perf_counter() - start
            if cfg.time_limit_s and self.elapsed >= cfg.time_limit_s:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = _learning_rate(cfg, self.step, self.elapsed)
            _train_mode(self.module)
            loss = train_step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.step += 1
            samples_t0 += cfg.batch_size
            if self.step % 20 == 0:
                rate = samples_t0 / max(time.perf_counter() - t0, 1e-9)
                postfix = f"loss={loss.item():.4f}, samples_per_s={rate:.0f}"
            bar(Progress(self.step, cfg.steps, postfix))
            if self.step % cfg.validate_every == 0 or self.step == cfg.steps:
                rate = samples_t0 / max(time.perf_counter() - t0, 1e-9)
                self.history.append(
                    {
                        "step": self.step,
                        "elapsed_s": round(self.elapsed, 1),
                        "samples_per_s": round(rate, 1),
                        "loss": float(loss.detach()),
                        **validate(),
                    }
                )
                bar.write(f"{self.name} step {self.step}: {self.history[-1]}")
            if self.step % cfg.checkpoint_every == 0:
                self.save()
        self.elapsed = time.perf_counter() - start
        if not self.history or self.history[-1]["step"] != self.step:
            self.history.append(
                {"step": self.step, "elapsed_s": round(self.elapsed, 1), **validate()}
            )
        self.save()
        bar.close()
        return self.history


def train_identification(
    network: IdentificationNetwork,
    family: OperatorFamily,
    fc: float,
    data: BlurredBatches,
    validation: BlurredBatches,
    cfg: LoopConfig,
    checkpoint: Path | None = None,
    quiet: bool = False,
) -> list[dict]:
    """Train IN to predict ``γ / parameter_scale``; returns the validation history."""
    device = data.device
    network.to(device, memory_format=convolution_layout(device))
    loop = _Loop("identification", network, cfg, checkpoint, device)
    held_out = validation.sample(min(256, 4 * cfg.batch_size))

    def train_step():
        batch = data.sample(cfg.batch_size)
        y_n, *_ = identification_inputs(batch.y)
        with loop.autocast():
            predicted = network(y_n).float()
        return identification_loss(predicted, batch.gamma, family)

    @torch.no_grad()
    def validate():
        network.eval()
        y_n, *_ = identification_inputs(held_out.y)
        with loop.autocast():
            predicted = network(y_n).float() * family.parameter_scale
        snr = psf_snr_db(family.psf(predicted), family.psf(held_out.gamma))
        return {"val_psf_snr_db": round(float(snr.mean()), 3)}

    return loop.run(train_step, validate, quiet)


def train_deblurring(
    network: DeblurringNetwork,
    identification: IdentificationNetwork,
    family: OperatorFamily,
    fc: float,
    data: BlurredBatches,
    validation: BlurredBatches,
    cfg: LoopConfig,
    checkpoint: Path | None = None,
    quiet: bool = False,
    operator_for=None,
) -> list[dict]:
    """Train DN on ``(y, γ̂ = IN(y))`` against the sharp image (L1 in normalised units).
    ``operator_for(batch, y_n)``, when given, supplies the operator instead of IN."""
    device = data.device
    network.to(device, memory_format=convolution_layout(device))
    identification.to(device, memory_format=convolution_layout(device)).eval()
    loop = _Loop("deblurring", network, cfg, checkpoint, device)
    held_out = validation.sample(min(64, 2 * cfg.batch_size))

    def restore(batch):
        y_n, sigma, low, scale = network_inputs(batch.y, fc)
        with torch.no_grad():  # the operator in float32: its data steps need the precision
            if operator_for is not None:
                operator = operator_for(batch, y_n)
            else:
                with loop.autocast():
                    gamma = identification(y_n).float() * family.parameter_scale
                operator = family.operator(gamma[:, None], y_n.shape[-2:])
        with loop.autocast():
            x_hat = network(y_n, operator, sigma).float()
        return x_hat, normalize(batch.x, low, scale)[:, None]

    def train_step():
        x_hat, target = restore(data.sample(cfg.batch_size))
        return (x_hat - target).abs().mean()

    @torch.no_grad()
    def validate():
        network.eval()
        x_hat, target = restore(held_out)
        mse = ((x_hat - target) ** 2).mean((-3, -2, -1))
        return {"val_psnr_normalised_db": round(float((-10 * torch.log10(mse)).mean()), 3)}

    return loop.run(train_step, validate, quiet)
