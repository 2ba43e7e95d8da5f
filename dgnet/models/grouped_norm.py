"""BatchNorm over groups of a batch: G separate forwards' statistics in one forward.

As published, every batch of N images goes through E_a (and the teacher) on its own, normalised with
its own statistics, the running statistics updated once per batch, in order; ten forwards of 8
small images leave most of a CPU idle. Under `statistics_groups(module, G)` one forward of G*N
images computes exactly that (r <- (1 - m) r + m s_g for g = 1..G; `num_batches_tracked` += G);
convolutions, pooling and linear layers are per sample, so the forward and backward equal the G
separate ones up to float rounding. With one group, in eval mode, or momentum None: torch's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _GroupedBatchNorm:
    """The forward of `GroupedBatchNorm1d/2d` (same parameters, buffers and keys as torch's)."""

    statistics_groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.statistics_groups
        if groups == 1 or not self.training or not self.track_running_stats or self.momentum is None:
            if groups > 1 and self.training:  # batch statistics per group, torch's own updates
                return torch.cat([super().forward(part) for part in x.chunk(groups)])
            return super().forward(x)
        if x.shape[0] % groups:
            raise ValueError(f"statistics_groups: a batch of {x.shape[0]} is not {groups} equal groups")
        n, channels, rest = x.shape[0] // groups, x.shape[1], x.shape[2:]
        # Group g's channel c becomes channel g*C + c of an N-sample batch: per-channel statistics of
        # that batch are the per-group statistics, in one native batch_norm call.
        folded = x.reshape(groups, n, channels, *rest).transpose(0, 1).reshape(n, groups * channels, *rest)
        means = self.running_mean.new_zeros(groups * channels)
        variances = self.running_var.new_zeros(groups * channels)
        weight = self.weight.repeat(groups) if self.weight is not None else None
        bias = self.bias.repeat(groups) if self.bias is not None else None
        # momentum 1: `means` / `variances` receive each group's mean and unbiased variance exactly.
        out = F.batch_norm(folded, means, variances, weight, bias, True, 1.0, self.eps)
        with torch.no_grad():
            for g in range(groups):
                part = slice(g * channels, (g + 1) * channels)
                self.running_mean.lerp_(means[part], self.momentum)
                self.running_var.lerp_(variances[part], self.momentum)
            self.num_batches_tracked.add_(groups)
        return out.reshape(n, groups, channels, *rest).transpose(0, 1).reshape(x.shape)


class GroupedBatchNorm1d(_GroupedBatchNorm, nn.BatchNorm1d):
    pass


class GroupedBatchNorm2d(_GroupedBatchNorm, nn.BatchNorm2d):
    pass


@contextlib.contextmanager
def statistics_groups(module: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, every grouped BatchNorm of `module` treats a batch as `groups` equal batches.

    Raises ValueError if `module` has a plain BatchNorm layer (it would mix the groups' statistics)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    plain = [type(m).__name__ for m in norms if not isinstance(m, _GroupedBatchNorm)]
    if plain and groups > 1:
        raise ValueError(f"statistics_groups: {type(module).__name__} has plain {plain[0]} layers")
    previous = [m.statistics_groups for m in norms if isinstance(m, _GroupedBatchNorm)]
    for m in norms:
        m.statistics_groups = groups
    try:
        yield
    finally:
        for m, value in zip(norms, previous, strict=True):
            m.statistics_groups = value


def grouped_call(module: Callable[..., Any], images: torch.Tensor, groups: int, *args: Any,
                 norms_of: nn.Module | None = None) -> Any:
    """`module(images, *args)` as `groups` separate forwards of equal parts of `images` would give it
    (outputs concatenated along the batch), in one forward when every BatchNorm of `norms_of`
    (default `module`) is grouped; otherwise as those separate forwards."""
    owner = norms_of if norms_of is not None else module
    if groups == 1:
        return module(images, *args)
    norms = [m for m in owner.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if all(isinstance(m, _GroupedBatchNorm) for m in norms):
        with statistics_groups(owner, groups):
            return module(images, *args)
    parts = [module(part, *args) for part in images.chunk(groups)]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    fields = [torch.cat(outputs) for outputs in zip(*parts, strict=True)]  # tuples / NamedTuples of tensors
    return type(parts[0])(*fields) if hasattr(parts[0], "_fields") else type(parts[0])(fields)
