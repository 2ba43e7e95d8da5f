"""The teacher: a plain ResNet re-ID baseline, and a frozen (ensemble) wrapper that gives soft labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dgnet.models.appearance import IdHead
from dgnet.models.backbone import ResNetTrunk, build_trunk
from dgnet.models.config import ModelConfig
from dgnet.models.frozen import frozen_call
from dgnet.models.grouped_norm import grouped_call


class ReidBaseline(nn.Module):
    """Trunk -> global pooling -> one IdHead, trained with the ID loss only. Returns (logits, embedding)."""

    def __init__(self, cfg: ModelConfig, trunk: ResNetTrunk | None = None) -> None:
        super().__init__()
        self.trunk = trunk if trunk is not None else build_trunk(cfg, cfg.teacher_last_stride)
        self.pooling = cfg.teacher_pooling
        self.head = IdHead(self.trunk.out_channels, cfg.embedding_dim, cfg.num_classes, cfg.primary_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.trunk(x)
        pool = F.adaptive_avg_pool2d if self.pooling == "avg" else F.adaptive_max_pool2d
        return self.head(pool(feature_map, 1).flatten(1))


class FrozenTeacher(nn.Module):
    """One or more trained teachers, frozen: soft labels = their softmax outputs averaged.

    Always in eval mode (no dropout, whatever `.train()` asks), parameters never requiring grad,
    run under `torch.no_grad()`. BatchNorm uses the running statistics in `forward`, and in
    `soft_labels` with `batch_statistics=True` (the published `train_bn`) those of the batch it
    labels, without updating the running ones.
    """

    def __init__(self, teachers: nn.Module | Sequence[nn.Module]) -> None:
        super().__init__()
        members = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
        if not members:
            raise ValueError("FrozenTeacher needs at least one teacher")
        self.members = nn.ModuleList(members)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenTeacher:
        for parameter in self.members.parameters():
            parameter.requires_grad_(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, batch_statistics: bool = False, batches: int = 1) -> torch.Tensor:
        """N x C class probabilities: the mean over teachers of softmax(logits).

        `batch_statistics`: BatchNorm normalises with `images`' own statistics (running ones
        untouched), each of `batches` equal parts of `images` with its own, as separate forwards.
        """
        probabilities = None
        for member in self.members:
            output = grouped_call(lambda x, m=member: frozen_call(m, x), images, batches, norms_of=member) \
                if batch_statistics else member(images)
            logits = output[0] if isinstance(output, tuple | list) else output
            p = F.softmax(logits.float(), dim=1)
            if probabilities is not None and p.shape != probabilities.shape:
                raise ValueError(f"teacher ensemble: members disagree on the number of classes "
                                 f"({probabilities.shape[1]} vs {p.shape[1]})")
            probabilities = p if probabilities is None else probabilities + p
        return probabilities / len(self.members)

    def soft_labels(self, images: torch.Tensor, flip_average: bool = True,
                    batch_statistics: bool = True, batches: int = 1) -> torch.Tensor:
        """Teacher probabilities for `images`, averaged with those of the horizontally flipped images.

        `batch_statistics` (published): each view of each of `batches` equal parts of `images` is a
        batch of its own for BatchNorm (one grouped forward, dgnet.models.grouped_norm).
        """
        views = torch.cat([images, images.flip(3)]) if flip_average else images
        groups = batches * (2 if flip_average else 1)
        probabilities = self(views, batch_statistics, groups if batch_statistics else 1)
        return probabilities.view(2, images.shape[0], -1).mean(0) if flip_average else probabilities
