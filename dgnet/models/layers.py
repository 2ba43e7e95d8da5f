"""Small building blocks shared by the structure encoder, the decoder and the discriminator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A convolution with reflect padding that keeps the size (divided by the stride)."""
    padding = dilation * (kernel - 1) // 2
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                     padding_mode="reflect" if padding else "zeros")


class ConvBlock(nn.Sequential):
    """conv (reflect padding) -> optional InstanceNorm (no affine) -> optional LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1,
                 instance_norm: bool = False, activation: bool = True) -> None:
        layers: list[nn.Module] = [conv(in_channels, out_channels, kernel, stride, dilation)]
        if instance_norm:
            layers.append(nn.InstanceNorm2d(out_channels, affine=False))
        if activation:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """x + [conv3x3 -> (IN) -> LReLU -> conv3x3 -> (IN)]; no activation after the sum."""

    def __init__(self, channels: int, instance_norm: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBlock(channels, channels, 3, instance_norm=instance_norm),
            ConvBlock(channels, channels, 3, instance_norm=instance_norm, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SampleLayerNorm(nn.Module):
    """LayerNorm over (C, H, W) of each sample, then a per-channel scale and bias.

    As published: (x - mean) / (std + eps) with the unbiased std, not torch's
    (x - mean) / sqrt(var + eps). The two differ where a sample's std is small (6e-4 of the decoder's
    output on the reference weights, tests/test_published_import.py).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        # The published LayerNorm draws its scale uniformly in [0, 1] (see init_generator).
        self.weight = nn.Parameter(torch.empty(channels).uniform_(0.0, 1.0))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = (x - flat.mean(1).view(shape)) / (flat.std(1).view(shape) + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def adain(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Adaptive instance norm: instance-normalise x (N x C x H x W), then x * scale + bias (each N x C).

    The scale is used as is (not 1 + scale), as in DG-Net.
    """
    x = F.instance_norm(x, eps=eps)
    return x * scale[:, :, None, None] + bias[:, :, None, None]


def init_generator(module: nn.Module) -> None:
    """The published initialisation of G (E_s, decoder, AdaIN MLPs), in place.

    Every Conv2d and Linear weight Kaiming-normal (fan_in, a = 0: std = sqrt(2 / fan_in)), every
    bias 0; a SampleLayerNorm's scale uniform in [0, 1], its shift 0. PyTorch's default (uniform,
    a = sqrt(5)) gives layers a third of that gain, which starts the AdaIN scales near 0.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight, a=0.0, mode="fan_in")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, SampleLayerNorm):
            nn.init.uniform_(layer.weight, 0.0, 1.0)
            nn.init.zeros_(layer.bias)
