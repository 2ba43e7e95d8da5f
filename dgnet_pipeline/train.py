"""The `warmup`, `train` and `ablation` stages (stages/train.py runs them): DG-Net training of one seed
and variant (params `train`, or changed by `ablations.<name>`; `--set` over it), tracked in MLflow.

`--warmup` stops at `schedule.warmup_start`, which every variant shares (the ablation switches act only
on losses weighted 0 until then); a variant `--fork`s from that checkpoint, bit for bit the same in
deterministic mode (tests/test_warmup_fork.py). Runs are tagged `dgnet.variant` and `dgnet.seed`; each
seed of the full model is registered under `<alias>-seed<S>`, the first also under `<alias>`.
Checkpoints live in checkpoints/dgnet-<variant>-seed<S>-<config hash>/ (outside DVC's outputs) so that
an interrupted run resumes; they are deleted once the stage succeeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from dgnet.config import TrainStage
from dgnet.errors import ConfigError
from dgnet.io import atomic_dir, atomic_path, write_json
from dgnet.training.hooks import LossCurve
from dgnet_pipeline.common import LOSS_CURVE as LOSSES
from dgnet_pipeline.common import teacher_paths
from dgnet_pipeline.mlflow_hooks import LastImage, MlflowHooks, metrics_summary
from dgnet_pipeline.mlflow_runs import link_previous_run, run_tags, tracked_run
from dgnet_pipeline.tracking import view_hint
from dgnet_pipeline.workspace import (
    StageInputs,
    hold_run_locks,
    model_config,
    model_fingerprint,
    remove_work_dirs,
    work_dir,
)

WARMUP_CHECKPOINT = "checkpoint.pt"


def seed_teachers(workspace: Path, teachers: Path, seed: int, mode: str) -> list[Path]:
    """The teacher model(s) DG-Net seed `seed` learns from (params `train.teachers`)."""
    paths = teacher_paths(workspace, teachers)
    if mode == "ensemble":
        return paths
    by_seed = {path.parent.name: path for path in paths}
    if f"seed{seed}" not in by_seed:
        trained = sorted(by_seed)
        raise ConfigError(f"train.teachers: paired: DG-Net seed {seed} learns from the teacher of seed "
                          f"{seed}, but the teacher stage trained {trained}; add {seed} to teacher.seeds, "
                          f"or set train.teachers: ensemble")
    return [by_seed[f"seed{seed}"]]


def warmup_config(cfg: Any) -> Any:
    start = cfg.schedule.warmup_start
    if not 0 < start < cfg.iterations:
        raise ConfigError(f"--warmup: schedule.warmup_start is {start} (after scaling) in a run of "
                          f"{cfg.iterations} iterations: there is no warm-up inside the run to share")
    return dataclasses.replace(cfg, iterations=start)


def fork_checkpoint(workspace: Path, args: argparse.Namespace, seed: int) -> Path | None:
    if args.fork is None:
        return None
    fork = workspace / args.fork / WARMUP_CHECKPOINT
    if not fork.is_file():
        raise ConfigError(f"--fork {args.fork}: no warm-up checkpoint {fork}; run the warm-up first "
                          f"(`dvc repro warmup@{seed}`, or `python stages/train.py --warmup --seed {seed}`)")
    return fork


def run_params(inputs: StageInputs, args: argparse.Namespace, mode: str, teacher_prints: list[str],
               fork: Path | None) -> dict[str, Any]:
    """What the MLflow run records beside the configuration."""
    extra = {**inputs.data_params(), "stage.section": args.section, "train.teachers": mode,
             "teacher.fingerprints": [fingerprint[:16] for fingerprint in teacher_prints]}
    if args.assignments:
        extra["stage.overrides"] = args.assignments
    if args.ablation:
        extra["stage.ablation"] = args.ablation
        extra["stage.ablation_changes"] = (inputs.params.get("ablations") or {})[args.ablation]
    if fork is not None:
        extra["stage.forked_from"] = str(args.fork)
    return extra


def train_variant(inputs: StageInputs, args: argparse.Namespace, cfg: Any, stage: TrainStage) -> int:
    """One seed of one variant (args: the stage's command line) in its locked run folder."""
    from dgnet.training.checkpoint import checkpoint_path
    from dgnet.training.trainer import train_dgnet

    workspace, seed = inputs.workspace, cfg.seed
    model_cfg = model_config(inputs.params, inputs.frame)
    needs_teacher = cfg.needs_teacher() or args.warmup
    teachers = seed_teachers(workspace, args.teachers, seed, stage.teachers) if needs_teacher else []
    fork = fork_checkpoint(workspace, args, seed)
    registered = inputs.mlflow.model if args.registered_model is None else args.registered_model
    teacher_prints = [model_fingerprint(path) for path in teachers]  # loads each model: once
    run_name = f"{args.variant}-seed{seed}"
    folder = work_dir(workspace, f"dgnet-{run_name}", {
        "model": model_cfg, "train": cfg, "manifest": inputs.manifest_md5, "teachers": teacher_prints})
    name = f"ablation@{args.ablation}-{seed}" if args.ablation else \
        f"{'warmup' if args.warmup else args.section}@{seed}"
    tags = {**run_tags(name, "dgnet", args.variant, "stages/train.py", workspace), "dgnet.seed": str(seed)}
    extra = run_params(inputs, args, stage.teachers, teacher_prints, fork)
    # One run per folder: a second stage in this workspace stops here, before any MLflow run.
    with hold_run_locks([folder], f"{run_name} run folder"):
        out, started, pictures = inputs.workspace / args.out, time.monotonic(), LastImage()
        metrics_file = inputs.workspace / args.metrics if args.metrics else None
        with tracked_run(inputs.client, inputs.experiment_id, run_name, tags) as run:
            link_previous_run(inputs.client, folder, run.info.run_id)
            alias = inputs.mlflow.alias
            hooks = MlflowHooks(inputs.client, run.info.run_id, registered_model=registered or None,
                                alias=f"{alias}-seed{cfg.seed}" if alias else None, variant=args.variant,
                                extra_params=extra, version_tags={"dgnet.seed": cfg.seed})
            try:
                # A warm-up stops where the ramps start: the trainer's warning about it is expected.
                with hooks.logging_warnings(), warnings.catch_warnings():
                    if args.warmup:
                        warnings.filterwarnings("ignore", "schedule.warmup_start .* is past the run")
                    curve = LossCurve(folder / LOSSES, history=fork.parent / LOSSES if fork else None)
                    result = train_dgnet(inputs.frame, model_cfg, cfg, teachers, folder,
                                         hooks=[pictures, hooks, curve], resume=True, fork_from=fork)
            finally:
                hooks.close()
            if hooks.model_version is not None and alias and seed == stage.seeds[0]:
                hooks.set_alias(alias)
            summary = metrics_summary(result.metrics)
            with atomic_dir(out) as tmp:
                if args.warmup:
                    shutil.copy2(checkpoint_path(folder / "checkpoints", cfg.iterations),
                                 tmp / WARMUP_CHECKPOINT)
                    write_json(tmp / "warmup.json", {"seed": cfg.seed, "iterations": cfg.iterations,
                                                     "metrics": summary, "mlflow_run_id": run.info.run_id})
                else:
                    shutil.copy2(result.model_path, tmp / "model.pt")
                if curve.path.is_file():
                    shutil.copy2(curve.path, tmp / LOSSES)
            if "swap_grid" in pictures.images:
                with atomic_path(inputs.workspace / args.swap_grid) as png:
                    pictures.images["swap_grid"].save(png, format="PNG")
            if metrics_file is not None:
                write_json(metrics_file, summary)
        remove_work_dirs(inputs.workspace, f"dgnet-{run_name}")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
        version = hooks.model_version
        version = f", registered {registered!r} version {version.version}" if version else ""
        what = "warm-up checkpoint" if args.warmup else "model"
        print(f"{run_name}: {what} in {out} after {time.monotonic() - started:.0f} s; {shown}")
        note = f"metrics: {metrics_file}; " if metrics_file else ""
        print(f"{note}MLflow run {run.info.run_id} in experiment {inputs.mlflow.experiment!r} at "
              f"{inputs.uri}{version} (view: {view_hint(inputs.uri)})")
        return 0
