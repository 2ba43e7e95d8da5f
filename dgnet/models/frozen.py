"""Frozen views of a network: its forward with weights that get no gradient, and no copy of it.

The published DG-Net deep-copies E_a every iteration (and keeps frozen copies of E_s and of the
teacher) so that a loss can pass gradient through a network without training it. `frozen_call`
gives the same for free: detached parameters (shared storage), so autograd differentiates w.r.t. the
inputs only; cloned buffers, so BatchNorm's running-statistic updates land in throw-away tensors;
and, as published (`train_bn`), eval mode with every BatchNorm on the batch's own statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def frozen_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)` as a frozen copy of it would compute it (see above), without copying it;
    every submodule's training flag is restored afterwards."""
    tensors = {name: p.detach() for name, p in module.named_parameters()}
    tensors.update({name: b.clone() for name, b in module.named_buffers()})
    modes = [(m, m.training) for m in module.modules()]
    for m in module.modules():  # eval mode (dropout off), BatchNorm on the batch's statistics
        m.training = isinstance(m, nn.modules.batchnorm._BatchNorm)
    try:
        return torch.func.functional_call(module, tensors, args, kwargs)
    finally:
        for m, mode in modes:
            m.training = mode
