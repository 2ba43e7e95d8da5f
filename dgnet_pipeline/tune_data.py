"""What `dgnet tune` (dgnet_pipeline/tune.py) trains and scores its trials on: the validation split carved
from the training identities, and a teacher trained on that split's training side only.

Why a teacher of its own: the trials' E_a starts from the teacher and learns from its soft labels.
The pipeline's teacher (outputs/teacher) was trained on every training identity, the held-out
validation ids too, so using it would leak them into the tuning score (and its id head has C
classes, not the C' the trials train). The tuning teacher is the params `teacher` section (same
seeds, iterations, LR), deterministic, trained on the tuning-train split and evaluated on the
validation query/gallery. It is kept in outputs/tuning/teacher-<hash of model, teacher config,
manifest and split>/ (the teacher stage's layout: seed<S>/model.pt, teachers.json), so every
study and re-run with the same recipe reuses it; its checkpoints live in
checkpoints/tuning-teacher-seed<S>-<hash>/ while it trains (an interrupted run resumes there).
Workers of one workspace that start together train it once: the others wait on its lock.

No test image is read: the manifest's query/gallery rows are kept only to check (`check_no_test_images`)
that nothing handed to a training, an evaluation or the teacher holds one of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dgnet.data.splits import SPLIT_ATTR, benchmark_rows, check_no_test_images, validation_split
from dgnet.io import atomic_dir, write_json
from dgnet_pipeline.common import TEACHER_INDEX as INDEX
from dgnet_pipeline.common import parse_seeds, teacher_paths
from dgnet_pipeline.mlflow_hooks import MlflowHooks, metrics_summary
from dgnet_pipeline.mlflow_runs import link_previous_run, tracked_run
from dgnet_pipeline.workspace import remove_work_dirs, train_config, work_dir

SCORE_SPLIT = "validation"  # tag/param `dgnet.score_split` of every tuning run, key of tune.json
VALIDATION_PREFIX = "val/"  # MLflow metric prefix of evaluations on the validation split
TEACHER_ROOT = Path("outputs/tuning")
TEACHER_KIND = "tuning-teacher"  # checkpoints/tuning-teacher-seed<S>-<hash>: never a study's prefix


@dataclass(frozen=True)
class TuningData:
    """The trials' data: `frame` (the validation split: train, query, gallery) and `test` (the
    manifest's query/gallery rows, path and person_id only: what the guard refuses)."""

    frame: pd.DataFrame
    test: pd.DataFrame

    @property
    def summary(self) -> dict[str, Any]:
        return self.frame.attrs[SPLIT_ATTR]

    def check(self, frame: pd.DataFrame | None = None, what: str = "tuning") -> None:
        """Refuse `frame` (default: the split) if it holds a test image or identity."""
        check_no_test_images(self.frame if frame is None else frame, self.test, what)


def tuning_data(manifest: pd.DataFrame, fraction: float, seed: int) -> TuningData:
    """The validation split of `manifest` (see dgnet.data.splits), checked against its test rows."""
    data = TuningData(validation_split(manifest, fraction, seed),
                      benchmark_rows(manifest)[["path", "person_id"]].copy())
    data.check()
    return data


def digest(key: Any) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TeacherRecipe:
    """How the tuning teacher is trained: one TeacherTrainConfig per seed, and `key` (model, configs,
    manifest, split), whose hash names its folder and enters the study's settings."""

    configs: dict[int, Any]
    key: dict[str, Any]

    @property
    def folder(self) -> Path:
        """Relative to the workspace."""
        return TEACHER_ROOT / f"teacher-{digest(self.key)}"


def teacher_recipe(values: Mapping[str, Any], model_cfg: Any, manifest_md5: str,
                   split: Mapping[str, Any]) -> TeacherRecipe:
    """The params `teacher` section as the teacher stage reads it, made deterministic: a retrained
    tuning teacher (a fresh clone, a deleted cache) then has the same weights, and the study the
    same trial values."""
    from dgnet.training.teacher_trainer import TeacherTrainConfig

    values = {k: v for k, v in values.items() if k != "deterministic"}  # always on here, whatever it says
    configs = {seed: train_config(TeacherTrainConfig, values, "teacher", ("seeds",),
                                  fixed={"seed": seed, "deterministic": True})[0]
               for seed in parse_seeds(values)[:1]}  # trials train one seed: one teacher
    key = {"model": model_cfg, "teacher": configs, "manifest": manifest_md5, "split": dict(split)}
    return TeacherRecipe(configs, key)


@dataclass
class TeacherRun:
    """Where the tuning teacher's MLflow runs go: children of the study's parent run."""

    client: Any
    experiment_id: str
    parent_id: str | None
    tags: dict[str, str]
    extra_params: dict[str, Any]


def ensure_teacher(recipe: TeacherRecipe, data: TuningData, model_cfg: Any, workspace: Path,
                   tracking: TeacherRun) -> list[Path]:
    """The tuning teacher's model files: the cached ones, or trained now (waiting while another
    worker of this workspace trains them)."""
    from filelock import FileLock, Timeout

    folder = workspace / recipe.folder
    if (folder / INDEX).is_file():
        print(f"tune: teacher of the tuning split: {recipe.folder} (cached)", flush=True)
        return teacher_paths(workspace, recipe.folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder.parent / f"{folder.name}.lock"))
    with contextlib.ExitStack() as stack:
        try:
            lock.acquire(blocking=False)
        except Timeout:
            print(f"tune: another worker is training the tuning teacher {recipe.folder}; waiting", flush=True)
            lock.acquire()
        stack.callback(lock.release)
        if not (folder / INDEX).is_file():
            train_tuning_teacher(recipe, data, model_cfg, workspace, tracking)
    return teacher_paths(workspace, recipe.folder)


def train_tuning_teacher(recipe: TeacherRecipe, data: TuningData, model_cfg: Any, workspace: Path,
                         tracking: TeacherRun) -> None:
    """Train every seed's teacher on the split (checked free of test images), log each to a child
    run `tuning-teacher-seed<S>` of the study's parent, publish the folder in one atomic step."""
    from dgnet.training.teacher_trainer import train_teacher

    data.check(what="the tuning teacher")
    started, results, entries = time.monotonic(), {}, []
    print(f"tune: training the teacher of the tuning split ({data.summary['train_ids']} ids, "
          f"{data.summary['train_images']} images) into {recipe.folder}", flush=True)
    for seed, cfg in recipe.configs.items():
        run_dir = work_dir(workspace, f"{TEACHER_KIND}-seed{seed}", {**recipe.key, "seed": seed})
        tags = {**tracking.tags, "dgnet.kind": "teacher", "dgnet.variant": f"tune-teacher-seed{seed}"}
        with tracked_run(tracking.client, tracking.experiment_id, f"tuning-teacher-seed{seed}", tags,
                         parent_run_id=tracking.parent_id) as run:
            link_previous_run(tracking.client, run_dir, run.info.run_id)
            hooks = MlflowHooks(tracking.client, run.info.run_id, registered_model=None,
                                variant=f"tune-teacher-seed{seed}", extra_params=tracking.extra_params,
                                eval_prefix=VALIDATION_PREFIX)
            try:
                results[seed] = train_teacher(data.frame, model_cfg, cfg, run_dir, hooks=[hooks], resume=True)
            finally:
                hooks.close()
        entries.append({"seed": seed, "path": f"seed{seed}/model.pt", "iterations": results[seed].iterations,
                        "metrics": metrics_summary(results[seed].metrics), "score_split": SCORE_SPLIT,
                        "mlflow_run_id": run.info.run_id})
    with atomic_dir(workspace / recipe.folder) as tmp:
        for seed, result in results.items():
            (tmp / f"seed{seed}").mkdir()
            shutil.copy2(result.model_path, tmp / f"seed{seed}" / "model.pt")
        write_json(tmp / INDEX, {"kind": "teacher", "trained_on": "tuning split", "split": data.summary,
                                 "teachers": entries})
    for seed in recipe.configs:
        remove_work_dirs(workspace, f"{TEACHER_KIND}-seed{seed}")
    shown = "; ".join(f"seed {e['seed']}: " + ", ".join(f"val {k} {v:.4f}" for k, v in e["metrics"].items())
                      for e in entries)
    print(f"tune: tuning teacher trained in {time.monotonic() - started:.0f} s ({shown})", flush=True)
