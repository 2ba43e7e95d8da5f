"""The `teacher` stage (stages/teacher.py runs it): the re-ID teacher of each seed of params
`teacher.seeds`, which DG-Net's runs of the same seed learn from (or all, as an ensemble: train.teachers).

Writes OUT/seed<S>/model.pt and OUT/teachers.json (the index the train stage reads) at once when every
teacher has trained, and METRICS (the mean over seeds, and per seed). One MLflow run `teacher`; with
several seeds one more run per seed (dgnet.variant `teacher`, dgnet.seed, dgnet.stage_run), the stage
run (`teacher-mean`) holding their mean. Each teacher is registered in `mlflow.teacher_model` under
`<alias>-seed<S>` (the first also `<alias>`). Checkpoints: checkpoints/teacher-seed<S>-<config hash>/.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any

from dgnet.io import atomic_dir, write_json
from dgnet.training.hooks import LossCurve
from dgnet_pipeline.common import LOSS_CURVE as LOSSES
from dgnet_pipeline.common import TEACHER_INDEX as INDEX
from dgnet_pipeline.mlflow_hooks import MlflowHooks, metrics_summary
from dgnet_pipeline.mlflow_runs import link_previous_run, run_tags, tracked_run
from dgnet_pipeline.tracking import view_hint
from dgnet_pipeline.workspace import (
    StageInputs,
    hold_run_locks,
    model_config,
    remove_work_dirs,
    work_dir,
)

STAGE = "teacher"


def run_folders(workspace: Path, model_cfg: Any, configs: dict[int, Any],
                manifest_md5: str) -> dict[int, Path]:
    return {seed: work_dir(workspace, f"teacher-seed{seed}", {"model": model_cfg, "teacher": cfg,
                                                               "manifest": manifest_md5})
            for seed, cfg in configs.items()}


def train_teachers(inputs: StageInputs, args: argparse.Namespace, configs: dict[int, Any]) -> int:
    from dgnet.training.teacher_trainer import train_teacher

    seeds, model_cfg = list(configs), model_config(inputs.params, inputs.frame)
    # Group by dgnet.variant in the UI: the per-seed runs are `teacher`; the parent of several holds
    # their mean, apart, so that it does not count as one more seed.
    variant = STAGE if len(seeds) == 1 else f"{STAGE}-mean"
    tags = run_tags(STAGE, "teacher", variant, "stages/teacher.py", inputs.workspace)
    if len(seeds) == 1:
        tags["dgnet.seed"] = str(seeds[0])
    folders = run_folders(inputs.workspace, model_cfg, configs, inputs.manifest_md5)
    extra = {**inputs.data_params(), "teacher.seeds": seeds}
    client, settings, nested = inputs.client, inputs.mlflow, len(seeds) > 1
    started, results = time.monotonic(), {}
    # One run per folder: a second stage in this workspace stops here, before any MLflow run.
    with hold_run_locks(folders.values(), "teacher run folder"):
        with tracked_run(client, inputs.experiment_id, STAGE, tags) as parent:
            for index, seed in enumerate(seeds):
                alias = settings.alias  # every seed gets <alias>-seed<S>, the first also <alias>
                aliases = [f"{alias}-seed{seed}", *([alias] if index == 0 else [])] if alias else []
                # With several seeds each logs into a run of its own tagged with the stage run (not nested:
                # MLflow's UI would add the parent, the mean, to every filtered runs table).
                seed_tags = {**tags, "dgnet.variant": STAGE, "dgnet.seed": str(seed),
                             "dgnet.stage_run": parent.info.run_id}
                with (tracked_run(client, inputs.experiment_id, f"{STAGE}-seed{seed}", seed_tags) if nested
                      else contextlib.nullcontext(parent)) as run:
                    run_id = run.info.run_id
                    link_previous_run(client, folders[seed], run_id)
                    with contextlib.closing(MlflowHooks(
                            client, run_id, registered_model=settings.teacher_model or None,
                            alias=aliases[0] if aliases else None, variant=STAGE, extra_params=extra,
                            version_tags={"dgnet.seed": seed})) as hooks:
                        curve = LossCurve(folders[seed] / LOSSES)
                        results[seed] = train_teacher(inputs.frame, model_cfg, configs[seed], folders[seed],
                                                      hooks=[hooks, curve], resume=True)
                    results[seed].config["mlflow.run_id"] = run_id
                    if hooks.model_version is not None:
                        for more in aliases[1:]:
                            hooks.set_alias(more)
                        results[seed].config["mlflow.model_version"] = hooks.model_version.version
            summary = _write_outputs(inputs.workspace / args.out, inputs.workspace / args.metrics, seeds,
                                     results)
            if nested:
                hooks = MlflowHooks(client, parent.info.run_id, extra_params=extra)
                hooks.log_params({"teacher.iterations": configs[seeds[0]].iterations})
                hooks.on_evaluation(configs[seeds[0]].iterations,
                                    {k: v for k, v in summary.items() if not isinstance(v, dict)})
        for seed in seeds:
            remove_work_dirs(inputs.workspace, f"teacher-seed{seed}")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if not isinstance(v, dict))
    print(f"teacher: {len(seeds)} model(s) in {inputs.workspace / args.out} after "
          f"{time.monotonic() - started:.0f} s; {shown}")
    print(f"metrics: {inputs.workspace / args.metrics}; MLflow run {parent.info.run_id} in experiment "
          f"{settings.experiment!r} at {inputs.uri} (view: {view_hint(inputs.uri)})")
    return 0


def _write_outputs(out: Path, metrics: Path, seeds: list[int], results: dict[int, Any]) -> dict[str, Any]:
    entries = []
    with atomic_dir(out) as tmp:
        for seed in seeds:
            result = results[seed]
            target = tmp / f"seed{seed}" / "model.pt"
            target.parent.mkdir(parents=True)
            shutil.copy2(result.model_path, target)
            if (result.model_path.parent / LOSSES).is_file():
                shutil.copy2(result.model_path.parent / LOSSES, target.parent / LOSSES)
            entries.append({"seed": seed, "path": str(target.relative_to(tmp)),
                            "iterations": result.iterations,
                            "metrics": metrics_summary(result.metrics),
                            "mlflow_run_id": result.config.get("mlflow.run_id"),
                            "model_version": result.config.get("mlflow.model_version")})
        write_json(tmp / INDEX, {"kind": "teacher", "teachers": entries})
    per_seed = {str(e["seed"]): e["metrics"] for e in entries}
    summary: dict[str, Any] = {}
    for name in ("rank1", "mAP", "mAP_finite", "mINP"):
        if values := [m[name] for m in per_seed.values() if name in m]:
            summary[name] = round(sum(values) / len(values), 6)
    if len(seeds) > 1:
        summary["seeds"] = per_seed
    write_json(metrics, summary)
    return summary

