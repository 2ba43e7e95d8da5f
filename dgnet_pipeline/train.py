"""DVC stages `warmup`, `train` and `ablation`: joint DG-Net training, one seed per run, tracked in MLflow.

Reads params.yaml `model` (profile + overrides; the number of classes comes from the manifest),
`train` (DGNetTrainConfig fields, `schedule:` and `objective:` nested, plus the stage keys `seeds`,
`teachers` and `scale_schedule_from: N`: the schedule numbers are written for an N-iteration run and
compressed to `iterations`) and `mlflow`. One run trains one seed (`--seed S`, default the first of
`train.seeds`) with the teacher of the same seed (`teachers: paired`; `ensemble`: all teachers).

- `--warmup`: the first `schedule.warmup_start` iterations, which every variant shares (the paper's
  ablation switches act only on losses whose weight is 0 until then). Writes
  outputs/warmup/seed<S>/checkpoint.pt and warmup.json; MLflow run `warmup-seed<S>`.
- (no option) the full model: outputs/dgnet/seed<S>/model.pt (see dgnet.models.persist),
  reports/metrics/dgnet_seed<S>.json (rank1, mAP, mAP_finite, mINP of the final evaluation) and
  reports/figures/dgnet_seed<S>_swap_grid.png (a DVC plot: the top row gives the structure, the
  left column the appearance, tile (i, j) = G(s_j, a_i)); MLflow run `dgnet-seed<S>` (params, loss
  curves, weights, learning rates, `eval/...`, swap grids, the model); every seed's model is
  registered as a new version of `mlflow.model` with the alias `<mlflow.alias>-seed<S>`, the first
  seed's also with `mlflow.alias` (as the teacher stage does).
- `--ablation NAME`: the `train` section with the keys of params `ablations.NAME` changed (same
  data, seed and teacher), to outputs/ablations/NAME/seed<S>/, reports/metrics/ablation_NAME_seed<S>.json
  and the swap grid beside it; MLflow run `NAME-seed<S>`, not registered.
- `--fork DIR`: start from the warm-up checkpoint in DIR (outputs/warmup/seed<S>) instead of
  iteration 0: the result is the same, bit for bit in deterministic mode (tests/test_warmup_fork.py).
Every MLflow run is tagged `dgnet.variant` and `dgnet.seed`: group by the variant in the UI.
Any other section or single keys can be trained the same way: `--section S --variant V --out DIR
--metrics FILE --set objective.appearance_code_loss_grad=true`.
Checkpoints live in checkpoints/dgnet-<variant>-seed<S>-<config hash>/ (outside DVC's outputs) so
that an interrupted run resumes; they are deleted once the stage has succeeded.

Exit codes: 0 done; 2 bad params, missing manifest, teacher or warm-up, unreachable tracking store,
or a training error such as a NaN loss (message on stderr, MLflow run FAILED, outputs untouched).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from dgnet.errors import ConfigError
from dgnet.io import atomic_dir, atomic_path, write_json
from dgnet.profiles import STAGE_KEYS as PROFILE_STAGE_KEYS
from dgnet.profiles import apply_assignments, merge
from dgnet_pipeline.common import TEACHER_OUT, parse_seeds, section, teacher_paths
from dgnet_pipeline.mlflow_hooks import LastImage, MlflowHooks, metrics_summary
from dgnet_pipeline.mlflow_runs import link_previous_run, run_tags, tracked_run
from dgnet_pipeline.tracking import view_hint
from dgnet_pipeline.workspace import (
    StageInputs,
    hold_run_locks,
    model_config,
    model_fingerprint,
    open_inputs,
    read_params,
    remove_work_dirs,
    stage_main,
    train_config,
    work_dir,
)

STAGE = "train"
STAGE_KEYS = PROFILE_STAGE_KEYS[STAGE]  # keys of params `train` that belong to the stage, not the config
TEACHER_MODES = ("paired", "ensemble")
WARMUP_OUT = Path("outputs/warmup")
WARMUP_CHECKPOINT = "checkpoint.pt"


def ablation_settings(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The training section of ablation `name`: params `train` changed by `ablations.<name>`."""
    ablations = params.get("ablations") or {}
    if not isinstance(ablations.get(name), dict):
        known = sorted(k for k, v in ablations.items() if isinstance(v, dict))
        raise ConfigError(f"--ablation {name!r}: params.yaml has no `ablations.{name}` mapping; "
                          f"defined: {known or 'none'}")
    return merge(section(params, STAGE), ablations[name])


def seed_settings(stage: dict[str, Any]) -> tuple[list[int], str]:
    """`train.seeds` (one run per seed and variant) and `train.teachers` (paired or ensemble)."""
    seeds = parse_seeds(stage, "train")
    mode = stage.get("teachers", "paired")
    if mode not in TEACHER_MODES:
        raise ConfigError(f"train.teachers: must be one of {TEACHER_MODES} (paired: DG-Net seed S learns "
                          f"from the teacher of seed S; ensemble: from all of them), got {mode!r}")
    return seeds, mode


def seed_teachers(workspace: Path, teachers: Path, seed: int, mode: str) -> list[Path]:
    """The teacher model(s) DG-Net seed `seed` learns from (see `seed_settings`)."""
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dgnet_pipeline.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", metavar="NAME", default=None,
                        help="train ablation NAME of params `ablations` (sets the defaults below)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the run's seed (default: the first of train.seeds)")
    parser.add_argument("--warmup", action="store_true",
                        help="train the warm-up the variants share (to schedule.warmup_start), to fork from")
    parser.add_argument("--fork", type=Path, default=None, metavar="DIR",
                        help="start from the warm-up checkpoint in DIR (the warmup stage's output)")
    parser.add_argument("--section", default=None, help="params.yaml section of the training config")
    parser.add_argument("--variant", default=None, help="the `dgnet.variant` tag of the MLflow run")
    parser.add_argument("--out", type=Path, default=None, help="model folder (replaced)")
    parser.add_argument("--metrics", type=Path, default=None, help="final metrics JSON (dvc metrics)")
    parser.add_argument("--swap-grid", type=Path, default=None,
                        help="where the last swap grid goes (a DVC plot)")
    parser.add_argument("--teachers", type=Path, default=TEACHER_OUT,
                        help="the teacher stage's output folder")
    parser.add_argument("--registered-model", default=None,
                        help="registry name (default: params mlflow.model; '' registers nothing)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the section (dotted, YAML value); repeatable")
    return parser


def with_defaults(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """Fill the unset options: the outputs of the warm-up, the full model or an ablation, for `seed`."""
    name = args.ablation
    if args.warmup and name:
        raise ConfigError("--warmup trains what every variant shares: it takes no --ablation")
    variant = "warmup" if args.warmup else name or "dgnet"
    stem = f"ablation_{name}_seed{seed}" if name else f"{variant}_seed{seed}"
    folder = {"warmup": WARMUP_OUT, "dgnet": Path("outputs/dgnet")}.get(variant,
                                                                         Path(f"outputs/ablations/{name}"))
    defaults = {"section": STAGE, "variant": variant, "out": folder / f"seed{seed}",
                "metrics": None if args.warmup else Path(f"reports/metrics/{stem}.json"),
                "swap_grid": Path(f"reports/figures/{stem}_swap_grid.png"),
                "registered_model": "" if name or args.warmup else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def warmup_config(cfg: Any) -> Any:
    """The run stopped at the warm-up: the same configuration, `schedule.warmup_start` iterations."""
    start = cfg.schedule.warmup_start
    if not 0 < start < cfg.iterations:
        raise ConfigError(f"--warmup: schedule.warmup_start is {start} (after scaling) in a run of "
                          f"{cfg.iterations} iterations: there is no warm-up inside the run to share")
    return dataclasses.replace(cfg, iterations=start)


def run_config(params: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    """The run's DGNetTrainConfig: its section (or the ablation's), `--set`, the seed; cut at the
    warm-up for `--warmup`."""
    from dgnet.config import DGNetTrainConfig

    name = args.section
    base = ablation_settings(params, args.ablation) if args.ablation else section(params, name)
    values = apply_assignments(base, args.assignments, name)
    cfg, _ = train_config(DGNetTrainConfig, values, name, STAGE_KEYS, fixed={"seed": seed})
    return warmup_config(cfg) if args.warmup else cfg


def fork_checkpoint(workspace: Path, args: argparse.Namespace, seed: int) -> Path | None:
    """The warm-up checkpoint `--fork` names, which must exist."""
    if args.fork is None:
        return None
    fork = workspace / args.fork / WARMUP_CHECKPOINT
    if not fork.is_file():
        raise ConfigError(f"--fork {args.fork}: no warm-up checkpoint {fork}; run the warm-up first "
                          f"(`dvc repro warmup@{seed}`, or `python -m dgnet_pipeline.train --warmup --seed "
                          f"{seed}`)")
    return fork


def run_params(inputs: StageInputs, args: argparse.Namespace, mode: str, teacher_prints: list[str],
               fork: Path | None) -> dict[str, Any]:
    """What the MLflow run records beside the configuration: data, teachers, how the run was made."""
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


@stage_main("train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace, params = read_params()
    seeds, mode = seed_settings(section(params, STAGE))
    seed = seeds[0] if args.seed is None else args.seed
    args = with_defaults(args, seed)
    cfg = run_config(params, args, seed)
    inputs = open_inputs(workspace, params)
    model_cfg = model_config(params, inputs.frame)
    needs_teacher = cfg.needs_teacher() or args.warmup
    teachers = seed_teachers(workspace, args.teachers, seed, mode) if needs_teacher else []
    fork = fork_checkpoint(workspace, args, seed)
    registered = inputs.mlflow.model if args.registered_model is None else args.registered_model
    teacher_prints = [model_fingerprint(path) for path in teachers]  # loads each model: once
    run_name = f"{args.variant}-seed{seed}"
    folder = work_dir(workspace, f"dgnet-{run_name}", {
        "model": model_cfg, "train": cfg, "manifest": inputs.manifest_md5, "teachers": teacher_prints})
    stage = f"ablation@{args.ablation}-{seed}" if args.ablation else \
        f"{'warmup' if args.warmup else args.section}@{seed}"
    tags = {**run_tags(stage, "dgnet", args.variant, "dgnet_pipeline/train.py", workspace),
            "dgnet.seed": str(seed)}
    # One run per folder: a second stage in this workspace stops here, before any MLflow run.
    with hold_run_locks([folder], f"{run_name} run folder"):
        return train_and_publish(inputs, args, run_name, registered, model_cfg, cfg, teachers, fork, folder,
                                 run_params(inputs, args, mode, teacher_prints, fork), tags,
                                 first_seed=seed == seeds[0])


def train_and_publish(inputs: StageInputs, args: argparse.Namespace, run_name: str, registered: str,
                      model_cfg: Any, cfg: Any, teachers: list[Path], fork: Path | None, folder: Path,
                      extra: dict[str, Any], tags: dict[str, str], first_seed: bool = True) -> int:
    """Train in the (locked) run folder, log and register the model (alias `<alias>-seed<S>`, and
    `<alias>` for the first seed), write the outputs."""
    from dgnet.training.checkpoint import checkpoint_path
    from dgnet.training.trainer import train_dgnet

    out, started, pictures = inputs.workspace / args.out, time.monotonic(), LastImage()
    metrics_file = inputs.workspace / args.metrics if args.metrics else None
    with tracked_run(inputs.client, inputs.experiment_id, run_name, tags) as run:
        link_previous_run(inputs.client, folder, run.info.run_id)
        alias = inputs.mlflow.alias
        hooks = MlflowHooks(inputs.client, run.info.run_id, registered_model=registered or None,
                            alias=f"{alias}-seed{cfg.seed}" if alias else None, variant=args.variant,
                            extra_params=extra, version_tags={"dgnet.seed": cfg.seed})
        try:
            with hooks.logging_warnings(), warnings.catch_warnings():  # a warm-up stops where the ramps start
                if args.warmup:
                    warnings.filterwarnings("ignore", "schedule.warmup_start .* is past the run")
                result = train_dgnet(inputs.frame, model_cfg, cfg, teachers, folder, hooks=[pictures, hooks],
                                     resume=True, fork_from=fork)
        finally:
            hooks.close()
        if hooks.model_version is not None and alias and first_seed:
            hooks.set_alias(alias)
        summary = metrics_summary(result.metrics)
        with atomic_dir(out) as tmp:
            if args.warmup:
                shutil.copy2(checkpoint_path(folder / "checkpoints", cfg.iterations), tmp / WARMUP_CHECKPOINT)
                write_json(tmp / "warmup.json", {"seed": cfg.seed, "iterations": cfg.iterations,
                                                 "metrics": summary, "mlflow_run_id": run.info.run_id})
            else:
                shutil.copy2(result.model_path, tmp / "model.pt")
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
    print(f"{f'metrics: {metrics_file}; ' if metrics_file else ''}MLflow run {run.info.run_id} in experiment "
          f"{inputs.mlflow.experiment!r} at {inputs.uri}{version} (view: {view_hint(inputs.uri)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
