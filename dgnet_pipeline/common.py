"""Plumbing of the stage scripts (stages/*.py): the repo root, params.yaml, dvc.yaml's paths, the teachers."""

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
    """The nearest folder upwards holding params.yaml: not DVC_ROOT, since a queued `dvc exp run` runs
    in a temporary copy with params of its own (only the MLflow store lives at DVC_ROOT)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml in {here} or its parents: run stages from the repository")


def load_params(root: Path | None = None) -> dict[str, Any]:
    """params.yaml as a dict (unresolved; dgnet.profiles.read_params builds it)."""
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
    """dvc.yaml's `vars: paths` (where the stages write), from the dvc.yaml above the script's folder:
    a stage's defaults when run by hand."""
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
