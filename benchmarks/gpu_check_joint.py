"""gpu_check's joint training: the trainer's own step (`build_joint_step`) on the check's validated data,
for its fp16 step and, launched by torchrun (`gpu_check_joint.py BACKEND OUT`), for each DDP rank."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dgnet.data.datasets import TrainImages
from dgnet.data.samplers import ImagePairSampler
from dgnet.data.validated import read_validated_manifest
from dgnet.profiles import get_profile
from dgnet.training.loop import make_loader, training_labels
from dgnet.training.runtime import DistContext, determinism, init_distributed, resolve_amp, select_device
from dgnet.training.trainer import DGNetTrainConfig, build_joint_step, load_teachers

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also under torchrun
from common import clock


def amp_for(device: torch.device) -> str:  # bf16 on a GPU; on a CPU only where it runs in hardware
    return resolve_amp(device, "bf16" if device.type == "cuda" else "auto")


def validated(opts: argparse.Namespace) -> tuple[Any, Any, dict[int, int]]:
    """The manifest as `dgnet train --manifest` reads it, the profile sized to it (random init without
    ImageNet weights in the torch cache: GPU machines have no network), the label map."""
    frame = read_validated_manifest(opts.manifest, opts.report)
    label_map = training_labels(frame)
    return frame, get_profile(opts.profile, require_pretrained=False, num_classes=len(label_map)), label_map


def train_config(opts: argparse.Namespace, iterations: int, **fields: Any) -> DGNetTrainConfig:
    """The paper's DGNetTrainConfig compressed to `iterations` (warm-up from 30%, LR steps at 60%/90%)."""
    return dataclasses.replace(DGNetTrainConfig().scaled_to(iterations), **{
        "batch_size": opts.batch_size, "device": opts.device, "num_workers": opts.workers, **fields})


@contextlib.contextmanager
def joint_training(opts: argparse.Namespace, ctx: DistContext, amp: str, iterations: int, workers: int,
                   scalers: dict[str, torch.amp.GradScaler] | None = None) -> Iterator[tuple[Any, Any, Any]]:
    """(the trainer's joint step, this rank's sampler, its batches) on the validated data, seeded per rank
    (the ranks start from different weights: DDP's broadcast must make them equal)."""
    frame, model_cfg, label_map = validated(opts)
    cfg = train_config(opts, iterations, amp=amp, num_workers=workers)
    with determinism(cfg.seed, False):
        torch.manual_seed(cfg.seed + ctx.rank)
        teacher = load_teachers([opts.teacher], label_map, model_cfg, ctx.device)
        built = build_joint_step(model_cfg, cfg, ctx, teacher, scalers=scalers)
        dataset = TrainImages(frame, (model_cfg.image_height, model_cfg.image_width), cfg.augmentation)
        sampler = ImagePairSampler(dataset.labels.numpy(), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
        yield built, sampler, make_loader(dataset, sampler, 0, iterations, workers, ctx.device)


def digests(module: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of each tensor's bytes: equal digests, bit-identical weights."""
    return {k: hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
            for k, t in module.state_dict().items()}


def ddp_rank(backend: str, out: str) -> None:
    """One torchrun rank: the trainer's step (gradient and BN averaging) on this rank's share of each
    global batch; writes the digests of its weights and what it saw to OUT/ddp/BACKEND_rankN.json."""
    opts = argparse.Namespace(**json.loads((Path(out) / "options.json").read_text()))
    device = select_device(opts.device)  # cuda:0 for both ranks (LOCAL_RANK 1 has no GPU of its own)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, opts.threads // 2))
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=60))  # torchrun's rendezvous (env://)
    try:
        ctx = init_distributed(str(device))  # the trainer's context on the group: torchrun's RANK, WORLD_SIZE
        dist.all_reduce(torch.ones(1, device=ctx.device))  # an unusable backend fails here, before the set-up
        times, seen, amp = [], [], amp_for(ctx.device)
        with joint_training(opts, ctx, amp, opts.ddp_iterations, 0) as (built, sampler, batches):
            initial = digests(built.model)
            for iteration, batch in enumerate(batches):
                start = clock(ctx.device)
                logs = built.step(iteration, batch)
                times.append(clock(ctx.device) - start)
                seen.append(sampler.batch(iteration).indices.tolist())
        (Path(out) / "ddp" / f"{backend}_rank{ctx.rank}.json").write_text(json.dumps({
            "rank": ctx.rank, "backend": backend, "device": str(ctx.device), "times": times, "seen": seen,
            "initial": initial, "final": digests(built.model), "last_logs": logs}))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    ddp_rank(*sys.argv[1:])
