"""Plumbing shared by the stage scripts (stages/*.py): the repo root, params.yaml, dvc.yaml's output
paths, seeds and the teachers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from dgnet.config import read_params_file
from dgnet.errors import ConfigError, ModelFileError

TEACHER_INDEX = "teachers.json"  # the teacher stage's list of its model files, one per seed
LOSS_CURVE = "losses.csv"  # a training run's loss curves (LossCurve), kept beside its model


def repo_root() -> Path:
    """The workspace: the nearest folder upwards holding params.yaml. DVC runs stages from the
    workspace root, which for a queued `dvc exp run` is its temporary copy (whose params differ
    from the parent's), so DVC_ROOT is not used here; only the MLflow store lives at DVC_ROOT."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml in {here} or its parents: run stages from the repository")


def load_params(root: Path | None = None) -> dict[str, Any]:
    """params.yaml as a dict (the single source of truth for every knob)."""
    return read_params_file((root or repo_root()) / "params.yaml")


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """One section of params.yaml, with a clear error when it is missing."""
    if not isinstance(params.get(name), dict):
        raise ConfigError(f"params.yaml has no `{name}:` section")
    return params[name]


def resolve(root: Path, path: str | os.PathLike) -> Path:
    """A params path, relative to the repo root unless absolute (DVC temp dirs move the cwd)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else root / path


def parse_seeds(values: dict[str, Any], section: str = "teacher") -> list[int]:
    """`<section>.seeds` as the schema checks it (dgnet.config.TeacherStage / TrainStage)."""
    from dgnet.config import stage_config

    return list(stage_config(section, values).seeds)


def stage_paths(script: str | os.PathLike) -> dict[str, Path]:
    """dvc.yaml's `vars: paths` (where the stages write; dvc.yaml passes them to each stage), read from
    the dvc.yaml beside the stage script's folder: the defaults when a stage is run by hand."""
    dvc = Path(script).resolve().parents[1] / "dvc.yaml"
    entries = [entry for entry in yaml.safe_load(dvc.read_text())["vars"] if isinstance(entry, dict)]
    return {k: Path(v) for entry in entries for k, v in entry.get("paths", {}).items()}


def teacher_paths(workspace: Path, out: Path) -> list[Path]:
    """The teacher model files listed in `out`/teachers.json; DgnetError when missing."""
    index = workspace / out / TEACHER_INDEX
    if not index.is_file():
        raise ModelFileError(f"missing teacher: {index} does not exist; run the teacher stage first "
                             f"(`dvc repro teacher`)")
    try:
        entries = json.loads(index.read_text())["teachers"]
        paths = [workspace / out / entry["path"] for entry in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(
            f"teacher index {index} is not valid ({exc}); re-run `dvc repro teacher`") from exc
    for path in paths:
        if not path.is_file():
            raise ModelFileError(f"missing teacher: {path} (listed in {index}) does not exist; "
                                 f"re-run `dvc repro teacher`")
    if not paths:
        raise ModelFileError(f"teacher index {index} lists no teacher; re-run `dvc repro teacher`")
    return paths
