"""Identification network IN: blurry image → operator parameters γ (scaled to ≈ [−1, 1]).

Two branches read the same (normalised, border-cropped) image:

- a ResNet on the image itself, with a 4× stem, which keeps the phase information (the sign
  of odd aberrations such as coma is visible only in the image, not in its power spectrum);
- a small CNN on the Welch-averaged log power spectrum of Hann-windowed patches, which
  carries ``|OTF|²`` (times the image's spectrum, plus the noise floor) directly and makes
  the even aberrations (defocus, astigmatism) easy to read.

Both end in adaptive average pooling, so any image of at least ``min_size`` pixels works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import fused
from .blocks import resnet_stages


@dataclass
class IdentificationConfig:
    num_parameters: int = 7
    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    spectrum_widths: tuple[int, ...] = (32, 64, 128)
    spectrum_window: int = 64  # px, Hann window of the Welch power spectrum
    border: int = 16  # px cropped on every side (≥ half the kernel) before the network
    hidden: int = 256
    training_px: int = 128  # crop size it was trained on: the pipeline identifies in such windows

    @classmethod
    def paper(cls, num_parameters: int = 7) -> IdentificationConfig:
        """Close to ResNet-18 (≈11 M parameters), as in the paper."""
        return cls(
            num_parameters,
            widths=(64, 128, 256, 512),
            blocks=(2, 2, 2, 2),
            spectrum_widths=(64, 128, 256),
            hidden=512,
        )

    @property
    def min_size(self) -> int:
        return 2 * self.border + self.spectrum_window

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IdentificationConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def welch_log_spectrum(image: torch.Tensor, window: int = 64) -> torch.Tensor:
    """Log of the mean power spectrum of half-overlapping Hann-windowed patches.

    ``image (B, 1, H, W)`` with ``H, W ≥ window`` → ``(B, 1, window, window // 2 + 1)``, the
    zero frequency moved to the centre row, each map shifted to zero mean (the overall
    intensity scale drops out).
    """
    step = window // 2
    patches = image.unfold(2, window, step).unfold(3, window, step)  # B, C, ny, nx, w, w
    patches = patches.reshape(image.shape[0], -1, window, window)
    patches = patches - patches.mean(dim=(-2, -1), keepdim=True)
    hann = torch.hann_window(window, periodic=False, dtype=image.dtype, device=image.device)
    spectrum = torch.fft.rfft2(patches * (hann[:, None] * hann[None, :]))
    power = (spectrum.real**2 + spectrum.imag**2).mean(dim=1, keepdim=True)
    log_power = torch.log(power + 1e-8 * power.mean(dim=(-2, -1), keepdim=True) + 1e-20)
    log_power = torch.fft.fftshift(log_power, dim=-2)
    return log_power - log_power.mean(dim=(-2, -1), keepdim=True)


class IdentificationNetwork(nn.Module):
    """``y (B, 1, H, W)`` normalised to ≈ [0, 1] → ``γ / parameter_scale`` ``(B, K)``."""

    def __init__(self, config: IdentificationConfig | None = None):
        super().__init__()
        self.config = config = config or IdentificationConfig()
        w0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(1, w0, 5, 2, 2, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.Conv2d(w0, w0, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        )
        self.image_stages = resnet_stages(w0, config.widths, config.blocks)
        s0 = config.spectrum_widths[0]
        self.spectrum_stem = nn.Sequential(
            nn.Conv2d(1, s0, 3, 1, 1, bias=False), nn.BatchNorm2d(s0), nn.ReLU(inplace=True)
        )
        self.spectrum_stages = resnet_stages(
            s0, config.spectrum_widths, (1,) * len(config.spectrum_widths)
        )
        features = config.widths[-1] + config.spectrum_widths[-1]
        self.head = nn.Sequential(
            nn.Linear(features, config.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden, config.num_parameters),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b = self.config.border
        if min(y.shape[-2:]) < self.config.min_size:
            raise ValueError(
                f"the identification network needs images of at least "
                f"{self.config.min_size}×{self.config.min_size} px, got "
                f"{tuple(y.shape[-2:])}"
            )
        y = y[..., b : y.shape[-2] - b, b : y.shape[-1] - b]
        stem = fused.sequential(self.stem, y - 0.5)
        image_features = self.image_stages(stem).mean(dim=(-2, -1))
        spectrum = welch_log_spectrum(y.float(), self.config.spectrum_window).to(y.dtype)
        spectrum_features = self.spectrum_stages(fused.sequential(self.spectrum_stem, spectrum / 4))
        features = torch.cat([image_features, spectrum_features.mean(dim=(-2, -1))], dim=1)
        with torch.autocast(features.device.type, enabled=False):  # full-precision outputs
            return self.head(features.float())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "IdentificationConfig",
    "IdentificationNetwork",
    "welch_log_spectrum",
    "count_parameters",
]
