"""Training batches: sharp images → blur with random γ → Poisson–Gaussian noise.

Sharp images come from a bank generated once (dead leaves and fluorescence-like scenes, or
crops of the user's own images) and kept on the training device; every batch draws crops,
random flips/rotations and gains from the bank, random parameters γ from the family and
random noise levels, all on the device from one seeded ``torch.Generator``, so synthesis
never waits on Python.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..optics import OperatorFamily, add_poisson_gaussian
from .synthetic import FolderCrops, random_sharp_image


@dataclass(frozen=True)
class NoiseRange:
    """Noise levels drawn per image: ``α = α_max u²``, ``β = β_max v²`` (u, v uniform), so that
    low noise is well represented; a fraction of images is noise-free."""

    alpha_max: float = 0.05
    beta_max: float = 0.25
    clean_fraction: float = 0.15

    def sample(self, count: int, generator: torch.Generator, device) -> tuple:
        u = torch.rand(3, count, generator=generator, device=device)
        keep = (u[2] >= self.clean_fraction).float()
        return self.alpha_max * u[0] ** 2 * keep, self.beta_max * u[1] ** 2 * keep


@dataclass
class Batch:
    x: torch.Tensor  # sharp (B, H, W)
    y: torch.Tensor  # blurred and noisy (B, H, W)
    gamma: torch.Tensor  # (B, K)
    alpha: torch.Tensor  # (B,)
    beta: torch.Tensor  # (B,)


def _bank_image(args) -> np.ndarray:
    size, seed, index, kind = args
    return random_sharp_image(size, np.random.default_rng([seed, index]), kind=kind)


def make_image_bank(
    count: int,
    size: int,
    seed: int,
    kind: str = "mixed",
    folder: str | Path | Sequence[str | Path] | None = None,
    workers: int | None = None,
    real_fraction: float = 1.0,
) -> torch.Tensor:
    """``count`` sharp images ``(count, size, size)`` float16 in [0, 1], deterministic in
    ``seed``: synthetic (``kind`` mixed / dead_leaves / fluorescence) or, with ``folder``
    (one or several), random crops of real images for ``real_fraction`` of them and
    synthetic images for the rest (real ones first)."""
    if not 0 <= real_fraction <= 1:
        raise ValueError(f"real_fraction must be in [0, 1], got {real_fraction}")
    real = 0 if folder is None else round(count * real_fraction)
    images = []
    if real:
        crops = FolderCrops(folder, size=size, rng=seed)
        images = [crops.sample() for _ in range(real)]
    jobs = [(size, seed, i, kind) for i in range(real, count)]
    workers = workers or min(os.cpu_count() or 1, 16)
    if workers > 1 and len(jobs) >= 64:
        with ProcessPoolExecutor(workers) as pool:
            images += list(pool.map(_bank_image, jobs, chunksize=32))
    else:
        images += [_bank_image(job) for job in jobs]
    return torch.from_numpy(np.stack(images)).to(torch.float16)


class BlurredBatches:
    """Random training batches for an operator family, synthesised on ``device``."""

    def __init__(
        self,
        family: OperatorFamily,
        bank: torch.Tensor,
        crop: int = 128,
        noise: NoiseRange = NoiseRange(),
        seed: int = 0,
        device="cpu",
    ):
        if bank.shape[-1] < crop:
            raise ValueError(f"bank images ({bank.shape[-1]} px) smaller than the crop {crop}")
        self.family = family
        self.bank = bank.to(device)
        self.crop = crop
        self.noise = noise
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _randint(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(high, (count,), generator=self.generator, device=self.device)

    def sharp(self, count: int) -> torch.Tensor:
        """Crops with random flips, 90° rotations, gain and offset: ``(count, crop, crop)``."""
        n, size = self.bank.shape[0], self.bank.shape[-1]
        index = self._randint(n, count)
        top = self._randint(size - self.crop + 1, count)
        left = self._randint(size - self.crop + 1, count)
        r = torch.arange(self.crop, device=self.device)
        rows = (top[:, None] + r)[:, :, None]
        cols = (left[:, None] + r)[:, None, :]
        x = self.bank[index[:, None, None], rows, cols].float()
        flips = torch.rand(3, count, generator=self.generator, device=self.device) < 0.5
        x = torch.where(flips[0, :, None, None], x.flip(-1), x)
        x = torch.where(flips[1, :, None, None], x.flip(-2), x)
        x = torch.where(flips[2, :, None, None], x.transpose(-2, -1), x)
        gain = 0.4 + 0.6 * torch.rand(count, 1, 1, generator=self.generator, device=self.device)
        offset = 0.1 * torch.rand(count, 1, 1, generator=self.generator, device=self.device)
        return x * gain + offset

    def sample(self, count: int) -> Batch:
        x = self.sharp(count)
        gamma = self.family.sample_parameters(count, self.generator, self.device)
        clean = self.family.forward(x, gamma)
        alpha, beta = self.noise.sample(count, self.generator, self.device)
        y = add_poisson_gaussian(clean, alpha[:, None, None], beta[:, None, None], self.generator)
        return Batch(x, y, gamma, alpha, beta)
