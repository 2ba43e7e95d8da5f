"""Where and how a training run executes: device, mixed precision, determinism, compilation, DDP.

Each is a switch that leaves the training code the same (an autocast that may be a no-op, a
GradScaler that may pass through, a gradient average that returns at once on one process).

Multi-process training (torchrun) averages gradients explicitly instead of wrapping models in
DistributedDataParallel: the DG-Net objective calls sub-networks through `frozen_call` (functional
views that must bypass any wrapper), has two backward passes and three optimisers an iteration, and
some parameters get no gradient before the warm-up. Every rank starts from rank 0's weights
(`broadcast_module`); after each backward the stepped parameters' gradients are averaged
(`average_gradients`; which have one depends only on the iteration, so every rank reduces the same
list). BatchNorm uses per-rank statistics (as DDP without SyncBatchNorm); its running statistics
are averaged after each iteration (`average_buffers`), so every rank holds one model.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dgnet.config import AMP_MODES, DEVICES, RunConfig
from dgnet.errors import ConfigError

# Elements per all-reduce call: large enough to amortise latency, small enough to bound the copy.
_BUCKET_ELEMENTS = 1 << 24


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda" (GPU `local_rank` under torchrun)."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"device: {name!r} is not one of {DEVICES} (or cuda:N)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available here; use --device cpu")
    return torch.device(name if ":" in name else f"cuda:{local_rank}")


def trained_on(device: torch.device, amp: str, world_size: int = 1) -> str:
    """Where a run trained, for its model file and the report: "cuda: NVIDIA H100 x 1, bf16"."""
    if device.type == "cuda":
        where = f"cuda: {torch.cuda.get_device_name(device)} x {world_size}"
    else:
        cpu = next((line.split(":", 1)[1].strip() for line in (_cpuinfo() or "").splitlines()
                    if line.startswith("model name")), "CPU")
        ranks = f" x {world_size}" if world_size > 1 else ""
        where = f"cpu: {cpu}, {torch.get_num_threads()} threads{ranks}"
    return f"{where}, {'fp32' if amp == 'off' else amp}"


def _cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def _check_amp(device: torch.device, amp: str) -> None:
    if amp not in AMP_MODES:
        raise ConfigError(f"amp: {amp!r} is not one of {AMP_MODES}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs a CUDA device; use bf16 (or off) on the CPU")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (an AVX2 CPU, say) autocast emulates bf16, and a convolution is ~30 times slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if (info := _cpuinfo()) is None:  # not Linux: trust torch's vector-capability probe
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")
    flags = info.split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(device: torch.device, amp: str) -> str:
    """The precision a run uses: "auto" is bf16 where it runs in hardware (`native_bf16`), else off.
    An explicit "bf16" is kept, with a warning where it is emulated, since the user asked for it."""
    _check_amp(device, amp)
    if amp == "auto":
        return "bf16" if native_bf16(device) else "off"
    if amp == "bf16" and not native_bf16(device):
        warnings.warn(
            f"amp: bf16 on {device} without hardware bf16 (no AVX512-BF16/AMX): autocast emulates it "
            "and training is many times slower than amp 'off' (or 'auto')",
            stacklevel=2,
        )
    return amp


def autocast_context(device: torch.device, amp: str) -> torch.amp.autocast:
    """The autocast region for forward passes: disabled for "off", bf16 or fp16 autocast otherwise."""
    amp = resolve_amp(device, amp) if amp == "auto" else amp  # the trainers resolve once and pass it
    _check_amp(device, amp)
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.amp.autocast(device_type=device.type, dtype=dtype, enabled=amp != "off")


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler that scales only for fp16 (bf16 and fp32 need none); disabled it passes through."""
    _check_amp(device, amp)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")  # "auto" never means fp16


@contextlib.contextmanager
def determinism(seed: int, deterministic: bool) -> Iterator[None]:
    """Seed every global RNG; with `deterministic`, also deterministic kernels; for the block only
    (torch's global flags are restored afterwards). On the CPU a run is then bit-for-bit repeatable
    for a given thread count (CPU reductions split work by thread). On CUDA some kernels this model
    uses (max-pool and reflect-pad backward) have no deterministic version: torch warns about them
    instead of failing (close to, not exactly, repeatable)."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required for deterministic cuBLAS
    torch.use_deterministic_algorithms(deterministic, warn_only=torch.cuda.is_available())
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def iteration_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The torch seed of one iteration on one rank (dropout masks): a pure function, like the batches,
    so a resumed run needs no RNG state for them, and ranks draw different masks."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


def prepare_module(module: nn.Module, *, channels_last: bool, compile: bool) -> nn.Module:
    """Channels-last and/or compiled in place (`nn.Module.compile` keeps the object, its state-dict
    keys and sub-modules: checkpoints and `frozen_call` are unaffected)."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module


def sgd_with_heads(trunk: Iterable[nn.Parameter], heads: Iterable[nn.Parameter], lr: float,
                   cfg: RunConfig) -> torch.optim.SGD:
    """SGD (Nesterov) of a re-ID network: its id heads at `lr` x head_lr_mult (`set_learning_rate`)."""
    return torch.optim.SGD(
        [{"params": trunk, "lr": lr, "lr_mult": 1.0},
         {"params": heads, "lr": lr * cfg.head_lr_mult, "lr_mult": cfg.head_lr_mult}],
        lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Each param group at the scheduled `lr` x its "lr_mult" (the id heads' head_lr_mult, else 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def to_channels_last(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-d image batch in channels-last layout when asked for, as is otherwise."""
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: rank 0 of 1 when not distributed."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when init_distributed created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto", timeout_minutes: float = 30.0) -> DistContext:
    """Join the torchrun process group (RANK/WORLD_SIZE/LOCAL_RANK), NCCL on CUDA, gloo on the CPU;
    else a single process. An existing group (e.g. tests') is used as it is. The timeout covers
    rank 0's evaluations, during which the other ranks wait."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistContext(rank, world, local_rank, select_device(device_name, local_rank), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, select_device(device_name), False)
    if not dist.is_available():
        raise ConfigError("distributed: WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def is_main_process() -> bool:
    """True on rank 0 and outside a process group (after the trainers destroy theirs, torchrun's RANK
    still says which process this is, so that only rank 0 reports)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank; nothing to wait for without a process group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if `init_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_mean(tensors: list[torch.Tensor], world_size: int) -> None:
    """Average `tensors` over ranks in place, a few large all-reduces instead of one per tensor."""
    buckets: list[list[torch.Tensor]] = []
    for tensor in tensors:
        last = buckets[-1] if buckets else []
        if (not last or (last[0].dtype, last[0].device) != (tensor.dtype, tensor.device)
                or sum(t.numel() for t in last) + tensor.numel() > _BUCKET_ELEMENTS):
            buckets.append([])
        buckets[-1].append(tensor)
    for bucket in buckets:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat /= world_size
        for tensor, mean in zip(bucket, flat.split([t.numel() for t in bucket]), strict=True):
            tensor.copy_(mean.view_as(tensor))


def average_gradients(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Average the gradients of `parameters` over ranks (those without a gradient are skipped)."""
    if ctx.distributed:
        _all_reduce_mean([p.grad for p in parameters if p.grad is not None], ctx.world_size)


def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks."""
    if ctx.distributed:
        _all_reduce_mean([b for b in module.buffers() if b.is_floating_point()], ctx.world_size)


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if ctx.distributed:
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor, src=0)


def mean_over_ranks(values: Mapping[str, float], ctx: DistContext) -> dict[str, float]:
    """Average a dict of floats over ranks (the same keys on every rank): on the losses before they
    are checked, so a NaN on any rank stops every rank together."""
    if not ctx.distributed or not values:
        return dict(values)
    names = list(values)
    tensor = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return dict(zip(names, (tensor / ctx.world_size).tolist(), strict=True))


def broadcast_object(value: object, ctx: DistContext) -> object:
    """Rank 0's `value` on every rank (small picklable objects: a path, a flag)."""
    if not ctx.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return holder[0]
