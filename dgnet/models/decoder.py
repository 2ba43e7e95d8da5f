"""Decoder G: structure code + appearance code -> image, through AdaIN residual blocks."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from dgnet.models.config import ModelConfig
from dgnet.models.layers import LEAKY_SLOPE, ConvBlock, SampleLayerNorm, adain, conv, init_generator


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int) -> nn.Sequential:
    """Linear layers with LeakyReLU(0.2) between them, no norm, no final activation."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.LeakyReLU(LEAKY_SLOPE)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class AdaINMapping(nn.Module):
    """Appearance code -> AdaIN scales and biases of every decoder residual block.

    The code is cut into `blocks` contiguous slices; slice k feeds `scale_mlps[k]` and `bias_mlps[k]`,
    whose outputs (2 x channels: one vector per AdaIN layer) drive residual block k. Paper: 4 slices
    of 2048 -> 8 MLPs 2048 -> 512 -> 512 -> 256.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = cfg.decoder_residual_blocks
        self.channels = cfg.structure_channels
        dims = (cfg.adain_slice_dim, cfg.mlp_hidden, 2 * self.channels)
        self.scale_mlps = nn.ModuleList(mlp(*dims) for _ in range(self.blocks))
        self.bias_mlps = nn.ModuleList(mlp(*dims) for _ in range(self.blocks))

    def forward(self, code: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per residual block k: (scales, biases), each N x (2 * channels) = [first conv | second conv]."""
        slices = code.chunk(self.blocks, dim=1)
        return [(scale(piece), bias(piece))
                for piece, scale, bias in zip(slices, self.scale_mlps, self.bias_mlps, strict=True)]


class AdaINResidualBlock(nn.Module):
    """x + [conv3x3 -> AdaIN -> LReLU -> conv3x3 -> AdaIN]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, 3)
        self.conv2 = conv(channels, channels, 3)

    def forward(self, x: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
        scale1, scale2 = scales.chunk(2, dim=1)
        bias1, bias2 = biases.chunk(2, dim=1)
        y = F.leaky_relu(adain(self.conv1(x), scale1, bias1), LEAKY_SLOPE)
        return x + adain(self.conv2(y), scale2, bias2)


class UpsampleBlock(nn.Module):
    """Nearest x2 upsample -> conv5x5 -> LayerNorm over (C, H, W) with per-channel affine -> LReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv(in_channels, out_channels, 5)
        self.norm = SampleLayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE)


class Decoder(nn.Module):
    """G: (structure code, appearance code) -> image in normalised image space (no final activation);
    `mapping` holds the AdaIN MLPs, `body_parameters()` are the decoder proper."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        channels = cfg.structure_channels
        widths = (channels, *cfg.decoder_widths)
        self.mapping = AdaINMapping(cfg)
        self.blocks = nn.ModuleList(AdaINResidualBlock(channels) for _ in range(cfg.decoder_residual_blocks))
        self.upsample = nn.Sequential(*(UpsampleBlock(a, b) for a, b in itertools.pairwise(widths)))
        last = widths[-1]
        self.refine = nn.Sequential(ConvBlock(last, last, 3), ConvBlock(last, last, 3))
        self.to_image = nn.Conv2d(last, 3, 1)
        init_generator(self)

    def body_parameters(self) -> list[nn.Parameter]:
        mapping = {id(p) for p in self.mapping.parameters()}
        return [p for p in self.parameters() if id(p) not in mapping]

    def forward(self, structure: torch.Tensor, appearance_code: torch.Tensor) -> torch.Tensor:
        x = structure
        for block, (scales, biases) in zip(self.blocks, self.mapping(appearance_code), strict=True):
            x = block(x, scales, biases)
        return self.to_image(self.refine(self.upsample(x)))
