"""DGNet: the container of the four networks, with encode/decode and the optimiser parameter groups."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dgnet.models.appearance import AppearanceEncoder, AppearanceOutput
from dgnet.models.config import ModelConfig
from dgnet.models.decoder import Decoder
from dgnet.models.discriminator import MultiScaleDiscriminator
from dgnet.models.structure import StructureEncoder


@dataclass(frozen=True)
class ParameterGroups:
    """DG-Net's parameters split the way docs/method.md section 4 optimises them.

    generator: E_s, decoder and AdaIN MLPs (Adam); appearance_trunk: E_a's ResNet (SGD, base lr);
    id_heads: both id heads (SGD, lr x10); discriminator: D (Adam).
    """

    generator: list[nn.Parameter]
    appearance_trunk: list[nn.Parameter]
    id_heads: list[nn.Parameter]
    discriminator: list[nn.Parameter]


class DGNet(nn.Module):
    """appearance_encoder (E_a), structure_encoder (E_s), decoder (G, with AdaIN mapping), discriminator
    (D). The teacher is not part of it: it is trained first and held in a `FrozenTeacher`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.appearance_encoder = AppearanceEncoder(cfg)
        self.structure_encoder = StructureEncoder(cfg)
        self.decoder = Decoder(cfg)
        self.discriminator = MultiScaleDiscriminator(cfg)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, AppearanceOutput]:
        """(structure code, everything E_a gives: appearance code, global feature, id-head outputs)."""
        return self.structure_encoder(images), self.appearance_encoder(images)

    def decode(self, structure: torch.Tensor, appearance_code: torch.Tensor) -> torch.Tensor:
        """G(s, a): an image with `structure`'s pose and place and `appearance_code`'s clothes."""
        return self.decoder(structure, appearance_code)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Self-reconstruction G(E_s(x), E_a(x)); training uses `dgnet.training.objective` instead."""
        structure, appearance = self.encode(images)
        return self.decode(structure, appearance.code)

    def parameter_groups(self) -> ParameterGroups:
        encoder = self.appearance_encoder
        return ParameterGroups(
            generator=[*self.structure_encoder.parameters(), *self.decoder.parameters()],
            appearance_trunk=list(encoder.trunk.parameters()),
            id_heads=[*encoder.primary_head.parameters(), *encoder.fine_head.parameters()],
            discriminator=list(self.discriminator.parameters()),
        )
