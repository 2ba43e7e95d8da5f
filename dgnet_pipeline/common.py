"""Plumbing shared by the DVC stage scripts: the repo root, params.yaml, seeds and the teachers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from dgnet.errors import ConfigError, ModelFileError

TEACHER_OUT = Path("outputs/teacher")
TEACHER_INDEX = "teachers.json"  # the teacher stage's list of its model files, one per seed


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
    path = (root or repo_root()) / "params.yaml"
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return params


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
    """`<section>.seeds`: a non-empty list of distinct integers >= 0 (one run each)."""
    seeds = values.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{section}.seeds: must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{section}.seeds: {seeds} repeats a seed")
    return seeds


def teacher_paths(workspace: Path, out: Path = TEACHER_OUT) -> list[Path]:
    """The teacher model files listed in outputs/teacher/teachers.json; DgnetError when missing."""
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
