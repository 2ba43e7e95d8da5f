"""Frozen views of a network: its forward with weights that get no gradient, and no copy of it.

The published DG-Net deep-copies E_a every iteration (and keeps frozen copies of E_s and of the
teacher) so that a loss can pass gradient through a network without training it. `frozen_call`
gives the same semantics for free: the parameters are passed detached (shared storage), so
autograd differentiates w.r.t. the inputs only; the buffers are passed as clones, so BatchNorm's
running-statistic updates land in throw-away tensors.

Mode, as published (`train_bn`): eval mode, so no dropout, with every BatchNorm layer on the
batch's own statistics. The module's own train/eval flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def batch_statistics_eval(module: nn.Module) -> Iterator[None]:
    """Within the block: `module` in eval mode (dropout off) but its BatchNorm layers in train mode
    (normalise with the batch's statistics). Every submodule's flag is restored on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def frozen_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """`module(*args, **kwargs)` as a frozen copy of it would compute it, without copying it.

    Detached parameters: gradients reach the inputs, never the weights (none is even computed).
    Cloned buffers: BatchNorm's running statistics stay as they are. Eval mode with BatchNorm on
    batch statistics (`batch_statistics_eval`): no dropout, so two dropout seeds give equal outputs.
    """
    tensors = {name: p.detach() for name, p in module.named_parameters()}
    tensors.update({name: b.clone() for name, b in module.named_buffers()})
    with batch_statistics_eval(module):
        return torch.func.functional_call(module, tensors, args, kwargs)
