"""Multi-scale patch discriminator D (LSGAN): one small conv net per image scale."""

from __future__ import annotations

import torch
from torch import nn

from dgnet.models.config import ModelConfig
from dgnet.models.layers import ConvBlock, ResidualBlock


class PatchDiscriminator(nn.Module):
    """One scale: conv1x1 -> 3 conv3x3 (one stride 2) -> conv3x3 s2 -> residual blocks -> conv1x1 to 1;
    no normalisation, LeakyReLU(0.2), reflect padding. Output: N x 1 x H/4 x W/4 patch scores."""

    def __init__(self, widths: tuple[int, int], residual_blocks: int) -> None:
        super().__init__()
        w0, w1 = widths
        self.net = nn.Sequential(
            ConvBlock(3, w0, 1),
            ConvBlock(w0, w0, 3),
            ConvBlock(w0, w0, 3, stride=2),
            ConvBlock(w0, w0, 3),
            ConvBlock(w0, w1, 3, stride=2),
            *(ResidualBlock(w1, instance_norm=False) for _ in range(residual_blocks)),
            nn.Conv2d(w1, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleDiscriminator(nn.Module):
    """D: `scales` patch discriminators on the image, then on 3x3/2 average-pooled copies of it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(cfg.discriminator_widths, cfg.discriminator_residual_blocks)
            for _ in range(cfg.discriminator_scales)
        )
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, cfg.discriminator_init_std)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch maps, full resolution first."""
        outputs = []
        for index, scale in enumerate(self.scales):
            if index:
                images = self.downsample(images)
            outputs.append(scale(images))
        return outputs
