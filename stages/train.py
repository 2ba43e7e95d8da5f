"""DVC stage `train`: joint DG-Net training with the teacher(s) of the teacher stage, tracked in MLflow.

Reads params.yaml `model` (profile + overrides; the number of classes comes from the manifest),
`train` (DGNetTrainConfig fields, `schedule:` and `objective:` nested, plus the optional
`scale_schedule_from: N`: the schedule numbers are written for an N-iteration run and compressed to
`iterations`) and `mlflow`. Writes
- outputs/dgnet/model.pt (see dgnet.models.persist), once training has succeeded, and
  reports/figures/dgnet_swap_grid.png, the last swap grid (a DVC plot: the top row gives the
  structure, the left column the appearance, tile (i, j) = G(s_j, a_i));
- reports/metrics/dgnet.json: rank1, mAP, mINP (fractions) of the final evaluation;
- one MLflow run `dgnet`: params, losses / loss weights / learning rates per logged iteration,
  re-ID metrics (`eval/...`), swap grids (`images/`), the model (`model/`), registered as a new
  version of `mlflow.model` with the alias `mlflow.alias`.
Checkpoints live in checkpoints/dgnet-<config hash>/ (outside DVC's outputs) so that an interrupted
run resumes; they are deleted once the stage has succeeded.

The ablation stages run `python -m stages.train --ablation NAME`: the `train` section with the
keys of params `ablations.NAME` changed (same data, seed and teacher), written to
outputs/ablations/NAME/model.pt, reports/metrics/ablation_NAME.json and
reports/figures/ablation_NAME_swap_grid.png, MLflow run NAME (tag `dgnet.variant`), not registered.
Any other section or single keys can be trained the same way: `--section S --variant V --out DIR
--metrics FILE --set objective.appearance_code_loss_grad=true`.

Exit codes: 0 done; 2 bad params, missing manifest or teacher, unreachable tracking store, or a
training error such as a NaN loss (message on stderr, MLflow run FAILED, outputs untouched).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dgnet.errors import ConfigError, DgnetError
from dgnet.io import atomic_dir, atomic_path, write_json
from stages.common import load_params, section
from stages.teacher import OUT as TEACHER_OUT
from stages.teacher import teacher_paths
from stages.tracking import (
    LastImage,
    MlflowHooks,
    artifact_location,
    connect,
    ensure_experiment,
    file_md5,
    hold_run_locks,
    interrupt_on_sigterm,
    link_previous_run,
    manifest_path,
    metrics_summary,
    mlflow_settings,
    model_config,
    model_fingerprint,
    quiet_mlflow,
    read_manifest,
    remove_work_dirs,
    report_path,
    run_tags,
    tracked_run,
    tracking_uri,
    train_config,
    view_hint,
    work_dir,
    workspace_root,
)

STAGE = "train"


def apply_overrides(values: dict[str, Any], assignments: list[str], where: str) -> dict[str, Any]:
    """`key.sub=value` assignments (values parsed as YAML) applied to a copy of a params section."""
    values = copy.deepcopy(values)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. objective.r1_weight=0")
        node = values
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {assignment!r}: {where}.{name} is not a mapping")
        node[leaf] = yaml.safe_load(text)
    return values


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key, nested mappings merged (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def ablation_settings(params: dict[str, Any], name: str) -> dict[str, Any]:
    """The training section of ablation `name`: params `train` changed by `ablations.<name>`."""
    ablations = params.get("ablations") or {}
    if not isinstance(ablations.get(name), dict):
        known = sorted(k for k, v in ablations.items() if isinstance(v, dict))
        raise ConfigError(f"--ablation {name!r}: params.yaml has no `ablations.{name}` mapping; "
                          f"defined: {known or 'none'}")
    return merge(section(params, STAGE), ablations[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", metavar="NAME", default=None,
                        help="train ablation NAME of params `ablations` (sets the defaults below)")
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


def with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the unset options: the `train` stage's outputs, or an ablation's."""
    name = args.ablation
    stem = f"ablation_{name}" if name else "dgnet"
    defaults = {"section": STAGE, "variant": name or "dgnet",
                "out": Path(f"outputs/ablations/{name}") if name else Path("outputs/dgnet"),
                "metrics": Path(f"reports/metrics/{stem}.json"),
                "swap_grid": Path(f"reports/figures/{stem}_swap_grid.png"),
                "registered_model": "" if name else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = with_defaults(build_parser().parse_args(argv))
    quiet_mlflow()
    interrupt_on_sigterm()
    from dgnet.training.trainer import DGNetTrainConfig

    name = args.section
    try:
        workspace = workspace_root()
        params = load_params(workspace)
        settings = mlflow_settings(params)
        base = ablation_settings(params, args.ablation) if args.ablation else section(params, name)
        values = apply_overrides(base, args.assignments, name)
        cfg, _ = train_config(DGNetTrainConfig, values, name)
        manifest = manifest_path(params, workspace)
        frame = read_manifest(manifest, report_path(params, workspace))
        model_cfg = model_config(params, frame)
        teachers = teacher_paths(workspace, args.teachers) if cfg.needs_teacher() else []
        uri = tracking_uri()
        client = connect(uri)
        experiment_id = ensure_experiment(client, settings["experiment"], artifact_location(uri))
    except DgnetError as exc:
        print(f"stages.train: error: {exc}", file=sys.stderr)
        return exc.exit_code

    out, metrics_file = workspace / args.out, workspace / args.metrics
    registered = settings["model"] if args.registered_model is None else args.registered_model
    manifest_md5 = file_md5(manifest)
    teacher_prints = [model_fingerprint(path) for path in teachers]
    train = frame[frame["split"] == "train"]
    extra = {"model.profile": (params.get("model") or {}).get("profile", "cpu"), "stage.section": name,
             "data.manifest": str(manifest), "data.manifest_md5": manifest_md5,
             "data.train_images": len(train), "data.train_ids": int(train["person_id"].nunique()),
             "teacher.fingerprints": [f[:16] for f in teacher_prints]}
    if args.assignments:
        extra["stage.overrides"] = args.assignments
    if args.ablation:
        extra["stage.ablation"] = args.ablation
        extra["stage.ablation_changes"] = (params.get("ablations") or {})[args.ablation]
    folder = work_dir(workspace, f"dgnet-{args.variant}", {
        "model": model_cfg, "train": cfg, "manifest": manifest_md5, "teachers": teacher_prints})
    stage = f"ablation@{args.ablation}" if args.ablation else name  # the dvc.yaml stage
    tags = run_tags(stage, "dgnet", args.variant, "stages/train.py", workspace)
    try:  # one run per folder: a second stage in this workspace stops here, before any MLflow run
        locks = hold_run_locks([folder], f"{args.variant} run folder")
    except DgnetError as exc:
        print(f"stages.train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    with locks:
        return _train_and_publish(args, client, experiment_id, settings, registered, frame, model_cfg, cfg,
                                  teachers, folder, out, metrics_file, extra, tags, workspace, uri)


def _train_and_publish(args: argparse.Namespace, client: Any, experiment_id: str, settings: dict[str, Any],
                       registered: str, frame: Any, model_cfg: Any, cfg: Any, teachers: list[Path],
                       folder: Path, out: Path, metrics_file: Path, extra: dict[str, Any],
                       tags: dict[str, str], workspace: Path, uri: str) -> int:
    """Train in the (locked) run folder, log and register the model, write the outputs."""
    from dgnet.training.trainer import train_dgnet

    started = time.monotonic()
    pictures = LastImage()
    try:
        with tracked_run(client, experiment_id, args.variant, tags) as run:
            link_previous_run(client, folder, run.info.run_id)
            hooks = MlflowHooks(client, run.info.run_id, registered_model=registered or None,
                                alias=settings["alias"] or None, variant=args.variant, extra_params=extra)
            try:
                result = train_dgnet(frame, model_cfg, cfg, teachers, folder, hooks=[pictures, hooks],
                                     resume=True)
            finally:
                hooks.close()
            summary = metrics_summary(result.metrics)
            with atomic_dir(out) as tmp:
                shutil.copy2(result.model_path, tmp / "model.pt")
            if "swap_grid" in pictures.images:
                with atomic_path(workspace / args.swap_grid) as png:
                    pictures.images["swap_grid"].save(png, format="PNG")
            write_json(metrics_file, summary)
    except DgnetError as exc:
        print(f"stages.train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("stages.train: interrupted; re-run to resume from the last checkpoint", file=sys.stderr)
        return 130
    remove_work_dirs(workspace, f"dgnet-{args.variant}")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items())
    version = hooks.model_version
    version = f", registered {registered!r} version {version.version}" if version else ""
    print(f"{args.variant}: model in {out} after {time.monotonic() - started:.0f} s; {shown}")
    print(f"metrics: {metrics_file}; MLflow run {run.info.run_id} in experiment {settings['experiment']!r} "
          f"at {uri}{version} (view: {view_hint(uri)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
