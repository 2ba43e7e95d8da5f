"""The teacher: a plain ResNet re-ID baseline trained with the identity loss (docs/method.md section 2).

Each iteration: `batch_size` random training images (flip, pad + random crop, random erasing), the
cross-entropy of the one id head, one SGD step (Nesterov momentum; the new head learns x10 faster
than the trunk; step-down learning rate, a pure function of the iteration). An ensemble of teachers
is several runs (e.g. seeds 0, 1, 2) whose model files `train_dgnet` takes as a list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from dgnet.config import TeacherTrainConfig
from dgnet.data.datasets import TrainImages
from dgnet.data.manifest import train_fingerprint
from dgnet.data.samplers import RandomImageSampler
from dgnet.evaluation.evaluate import evaluate_reid, has_eval_splits
from dgnet.losses import identity_loss
from dgnet.models.config import ModelConfig
from dgnet.models.teacher import ReidBaseline
from dgnet.training.hooks import TrainingHooks, TrainingResult
from dgnet.training.loop import TrainingSession, make_loader, training_process, training_split
from dgnet.training.objective import check_finite
from dgnet.training.runtime import (
    autocast_context,
    average_buffers,
    average_gradients,
    broadcast_module,
    grad_scaler,
    iteration_seed,
    mean_over_ranks,
    prepare_module,
    set_learning_rate,
    sgd_with_heads,
    to_channels_last,
)
from dgnet.training.schedule import learning_rate_at


def train_teacher(
    frame: pd.DataFrame,
    model_cfg: ModelConfig,
    cfg: TeacherTrainConfig,
    out_dir: str | Path,
    hooks: Sequence[TrainingHooks] = (),
    resume: bool = True,
) -> TrainingResult:
    """Train a ReidBaseline on `frame`'s train split; write out_dir/model.pt (see dgnet.models.persist).
    Under torchrun every rank trains on its own images and rank 0 writes everything."""
    label_map, model_cfg = training_split(frame, model_cfg)
    with training_process(cfg, out_dir) as (ctx, cfg):
        device = ctx.device
        model = ReidBaseline(model_cfg).to(device)
        broadcast_module(model, ctx)
        prepare_module(model, channels_last=cfg.channels_last, compile=cfg.compile)
        head = list(model.head.parameters())
        trunk = [p for p in model.parameters() if all(p is not h for h in head)]
        optimizer = sgd_with_heads(trunk, head, cfg.lr, cfg)
        scaler = grad_scaler(device, cfg.amp)
        session = TrainingSession("teacher", out_dir, ctx, cfg, model_cfg, hooks)
        start = session.resume({"model": model, "optimizer": optimizer, "scaler": scaler},
                               {"model_config": dataclasses.asdict(model_cfg)}, resume)

        size = (model_cfg.image_height, model_cfg.image_width)
        dataset = TrainImages(frame, size, cfg.augmentation)
        sampler = RandomImageSampler(len(dataset), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
        loader = make_loader(dataset, sampler, start, cfg.iterations, cfg.num_workers, device)

        def step(iteration: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
            torch.manual_seed(iteration_seed(cfg.seed, iteration, ctx.rank))  # dropout masks
            set_learning_rate(optimizer, learning_rate_at(iteration, cfg.lr, cfg.lr_milestones, cfg.lr_gamma))
            images = to_channels_last(batch["image_erased"].to(device, non_blocking=True), cfg.channels_last)
            labels = batch["label"].to(device, non_blocking=True)
            with autocast_context(device, cfg.amp):
                logits, _ = model(images)
            loss = identity_loss(logits.float(), labels)
            accuracy = (logits.argmax(1) == labels).float().mean()
            logs = mean_over_ranks({"loss/id": loss.item(), "train/accuracy": accuracy.item()}, ctx)
            check_finite(logs, iteration + 1)  # before the step: a NaN never reaches the weights
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(model.parameters(), ctx)
            scaler.step(optimizer)
            scaler.update()
            average_buffers(model, ctx)
            return logs

        def describe(iteration: int) -> dict[str, float]:  # the learning rates the step set
            return {"lr/trunk": optimizer.param_groups[0]["lr"], "lr/head": optimizer.param_groups[1]["lr"]}

        def evaluate() -> dict[str, float]:
            return evaluate_reid(model, frame, size, device=device, batch_size=cfg.eval_batch_size)

        model.train()
        session.run(start, loader, step, describe, evaluate if has_eval_splits(frame) else None,
                    postfix=("loss/id",))
        return session.finish(model, label_map, train_fingerprint(frame))
