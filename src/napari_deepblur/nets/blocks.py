"""Building blocks shared by the networks (torch.nn only, no I/O)."""

from __future__ import annotations

import torch
from torch import nn

from . import fused


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with batch norm, ReLU and a skip."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        if fused.applies(self, x):
            skip = x if isinstance(self.skip, nn.Identity) else fused.sequential(self.skip, x)
            out = fused.conv(x, self.conv1, self.bn1, relu=True)
            return fused.conv(out, self.conv2, self.bn2, relu=True, add=skip)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet_stages(in_channels: int, widths, blocks) -> nn.Sequential:
    """Stages of basic blocks; each stage after the first halves the resolution."""
    layers, channels = [], in_channels
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for b in range(count):
            layers.append(BasicBlock(channels, width, 2 if stage > 0 and b == 0 else 1))
            channels = width
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """DRUNet-style residual block: conv–ReLU–conv plus identity, no normalisation."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1),
        )

    def forward(self, x):
        if fused.applies(self, x):
            first, _, second = self.body
            return fused.conv(fused.conv(x, first, relu=True), second, add=x)
        return x + self.body(x)


class ResidualUNet(nn.Module):
    """A small DRUNet-like residual U-Net: ``x = z + U([z, σ])``.

    The input image and a noise-level map are folded 2× into channels (pixel unshuffle) so
    that the first scale already runs at half resolution (cheap on CPU); ``len(widths)``
    scales, ``blocks`` residual blocks per scale on the way down and up.
    """

    def __init__(self, widths=(32, 64), blocks: int = 2, fold: int = 2):
        super().__init__()
        self.fold = fold
        self.factor = fold * 2 ** (len(widths) - 1)  # inputs padded to a multiple of this
        self.head = nn.Conv2d(2 * fold * fold, widths[0], 3, 1, 1)
        self.down = nn.ModuleList()
        self.encoders = nn.ModuleList()
        for i, width in enumerate(widths):
            self.encoders.append(nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)]))
            if i + 1 < len(widths):
                self.down.append(nn.Conv2d(width, widths[i + 1], 2, 2))
        self.up = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, 2))
            self.decoders.append(
                nn.Sequential(*[ResidualBlock(widths[i - 1]) for _ in range(blocks)])
            )
        self.tail = nn.Conv2d(widths[0], fold * fold, 3, 1, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``z (B, 1, H, W)``, ``sigma (B, 1, H, W)`` noise std map → ``(B, 1, H, W)``."""
        height, width = z.shape[-2:]
        ph, pw = (-height) % self.factor, (-width) % self.factor
        inputs = torch.cat([z, sigma], dim=1)
        if ph or pw:
            inputs = nn.functional.pad(inputs, (0, pw, 0, ph), mode="replicate")
        h = self.head(nn.functional.pixel_unshuffle(inputs, self.fold))
        skips = []
        for i, encoder in enumerate(self.encoders):
            h = encoder(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for up, decoder in zip(self.up, self.decoders, strict=True):
            h = decoder(up(h) + skips.pop())
        residual = nn.functional.pixel_shuffle(self.tail(h), self.fold)
        return z + residual[..., :height, :width]
