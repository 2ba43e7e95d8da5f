"""Appearance encoder E_a: ResNet trunk, appearance code for the decoder, two id heads for re-ID."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dgnet.models.backbone import ResNetTrunk, build_trunk
from dgnet.models.config import ModelConfig
from dgnet.models.grouped_norm import GroupedBatchNorm1d


class IdHead(nn.Module):
    """Linear -> BatchNorm1d -> Dropout -> Linear (no ReLU); returns (logits, post-BN embedding)."""

    def __init__(self, in_features: int, embedding_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, embedding_dim)
        self.bn = GroupedBatchNorm1d(embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embedding_dim, num_classes)
        # Re-ID convention: Kaiming for the embedding, small normal for the classifier, BN at (1, 0).
        nn.init.kaiming_normal_(self.embed.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.embed.bias)
        nn.init.normal_(self.bn.weight, 1.0, 0.02)
        nn.init.zeros_(self.bn.bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.bn(self.embed(feature))
        return self.classifier(self.dropout(embedding)), embedding


class AppearanceOutput(NamedTuple):
    """Everything one E_a forward gives."""

    code: torch.Tensor  # N x (C * rows), channel-major: index rows * c + h
    feature: torch.Tensor  # N x C global max-pooled feature
    primary_logits: torch.Tensor
    primary_embedding: torch.Tensor
    fine_logits: torch.Tensor
    fine_embedding: torch.Tensor


def appearance_code(feature_map: torch.Tensor, rows: int) -> torch.Tensor:
    """Max-pool an N x C x H x W map to N x C x rows x 1 and flatten channel-major (index rows*c + h).

    So code[:, rows*c : rows*(c+1)] are channel c's rows top to bottom, and a contiguous slice of the
    code (what one AdaIN block reads) covers a band of channels over the whole body, not one stripe.
    """
    return F.adaptive_max_pool2d(feature_map, (rows, 1)).flatten(1)


class AppearanceEncoder(nn.Module):
    """E_a: trunk -> C x H/16 x W/16 map; appearance code (C*rows), global feature (C), two id heads."""

    def __init__(self, cfg: ModelConfig, trunk: ResNetTrunk | None = None) -> None:
        super().__init__()
        self.rows = cfg.appearance_rows
        self.trunk = trunk if trunk is not None else build_trunk(cfg)
        channels = self.trunk.out_channels
        self.primary_head = IdHead(channels, cfg.embedding_dim, cfg.num_classes, cfg.primary_dropout)
        self.fine_head = IdHead(channels, cfg.embedding_dim, cfg.num_classes, cfg.fine_dropout)

    def forward(self, x: torch.Tensor) -> AppearanceOutput:
        feature_map = self.trunk(x)
        feature = F.adaptive_max_pool2d(feature_map, 1).flatten(1)
        primary_logits, primary_embedding = self.primary_head(feature)
        fine_logits, fine_embedding = self.fine_head(feature)
        return AppearanceOutput(appearance_code(feature_map, self.rows), feature, primary_logits,
                                primary_embedding, fine_logits, fine_embedding)
