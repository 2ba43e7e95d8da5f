"""Plumbing shared by the DVC stage scripts: the repo root and params.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from dgnet.errors import ConfigError


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
