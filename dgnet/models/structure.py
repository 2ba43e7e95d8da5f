"""Structure encoder E_s: a shallow conv net on the grayscale image, keeping a 1/4-resolution map.

The paper's two stride-2 convolutions are the first and the fourth; with `structure_downsamplings`
1 the fourth keeps stride 1 and the map is at 1/2 resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from dgnet.models.config import ModelConfig
from dgnet.models.layers import ConvBlock, ResidualBlock, init_generator


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """The mean of the 3 (normalised) colour channels, N x 1 x H x W; 1-channel input passes through.

    Dropping colour keeps clothing colour out of the structure code, so it must come from E_a.
    """
    if images.shape[1] == 1:
        return images
    if images.shape[1] != 3:
        raise ValueError(f"structure encoder: expected 1 or 3 channels, got {images.shape[1]}")
    return images.mean(dim=1, keepdim=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch and 1x1 -> dilated 3x3 branches, fused by a 1x1 conv.

    As published (docs/method.md section 8): the 1x1 branch is conv + IN; each dilated branch is
    1x1 conv + IN + LeakyReLU, then the dilated 3x3 conv + IN; the fuse is conv + IN. No activation
    ends a branch or the fuse, and the code is instance-normalised: its scale carries no
    information, so no loss can be lowered by shrinking it.
    """

    def __init__(self, in_channels: int, width: int, dilations: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        branches = [ConvBlock(in_channels, width, 1, instance_norm=True, activation=False)]
        for dilation in dilations:
            branches.append(nn.Sequential(
                ConvBlock(in_channels, width, 1, instance_norm=True),
                ConvBlock(width, width, 3, dilation=dilation, instance_norm=True, activation=False)))
        self.branches = nn.ModuleList(branches)
        self.fuse = ConvBlock(width * len(branches), out_channels, 1, instance_norm=True, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class StructureEncoder(nn.Module):
    """E_s: grayscale image -> structure code, structure_channels x H/stride x W/stride (paper: 128x64x32)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w0, w1, w2, w3 = cfg.structure_widths
        self.stem = nn.Sequential(
            ConvBlock(1, w0, 3, stride=2, instance_norm=True),
            ConvBlock(w0, w1, 3, instance_norm=True),
            ConvBlock(w1, w2, 3, instance_norm=True),
            ConvBlock(w2, w3, 3, stride=cfg.structure_downsamplings, instance_norm=True),
        )
        self.blocks = nn.Sequential(*(ResidualBlock(w3, instance_norm=True)
                                      for _ in range(cfg.structure_residual_blocks)))
        self.aspp = ASPP(w3, cfg.aspp_width, cfg.aspp_dilations, cfg.structure_channels)
        init_generator(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.aspp(self.blocks(self.stem(to_grayscale(images))))
