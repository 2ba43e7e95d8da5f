"""What the training stages share besides MLflow: the validated manifest, the configuration built
from params, run folders under checkpoints/ keyed by configuration and data (locked while a run
uses them, removed once the stage has succeeded), fingerprints, and SIGTERM as an interrupt."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHECKPOINT_ROOT = "checkpoints"


def manifest_path(params: Mapping[str, Any], workspace: Path) -> Path:
    """The validated manifest: params `validate.manifest` (default data/manifest.csv)."""
    name = (params.get("validate") or {}).get("manifest", "data/manifest.csv")
    path = Path(name).expanduser()
    return path if path.is_absolute() else workspace / path


def report_path(params: Mapping[str, Any], workspace: Path) -> Path:
    """The validation report that holds the manifest's record: params `validate.report`."""
    name = (params.get("validate") or {}).get("report", "reports/validation.json")
    path = Path(name).expanduser()
    return path if path.is_absolute() else workspace / path


def read_manifest(path: Path, report: Path) -> Any:
    """The manifest the validate stage wrote (only for data that passed every rule), checked against
    the record in its validation report `report` (a manifest changed since is refused, naming what
    changed) and its cheap invariants re-checked; label kept int."""
    from dgnet.data.validated import read_validated_manifest
    from dgnet.errors import DatasetError

    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist; the validate stage writes it only when the "
                           "dataset passes validation; run `dvc repro validate` and fix what it reports")
    frame = read_validated_manifest(path, report)
    if not (frame["split"] == "train").any():
        raise DatasetError(f"manifest {path} has no training images (split 'train')")
    return frame


def model_config(params: Mapping[str, Any], frame: Any) -> Any:
    """The ModelConfig of (resolved) params, with the manifest's training identities as classes."""
    from dgnet.profiles import model_config as profile_model

    return profile_model(params, int(frame.loc[frame["split"] == "train", "person_id"].nunique()))


def train_config(cls: type, values: Mapping[str, Any], section: str, stage_keys: tuple[str, ...] = (),
                 fixed: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """dgnet.config.build_train_config: a params section as a config dataclass + its stage keys."""
    from dgnet.config import build_train_config

    return build_train_config(cls, values, section, stage_keys, fixed)


def file_md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(path: Path) -> str:
    """A hash of a dgnet model file's content (kind, config, weights), not of its bytes: files that
    other tools (or older dgnet versions) saved may differ in bytes for the same weights."""
    import hashlib

    import torch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256(json.dumps({k: payload.get(k) for k in ("kind", "model_config")},
                                       sort_keys=True, default=str).encode())
    for name, tensor in sorted(payload.get("state_dict", {}).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def work_dir(workspace: Path, kind: str, key: Mapping[str, Any]) -> Path:
    """`checkpoints/<kind>-<hash of key>`: where a training run keeps its checkpoints.

    Not a DVC output (DVC deletes outputs before a stage runs, which would make resuming impossible)
    and keyed by everything the run depends on, so an interrupted `dvc repro` resumes only a run of
    the very same configuration and data. The stage deletes it once the run has succeeded.
    """
    import hashlib

    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return workspace / CHECKPOINT_ROOT / f"{_slug(kind)}-{digest}"


def hold_run_locks(folders: Any, what: str) -> contextlib.ExitStack:
    """The run locks of `folders` (dgnet.training.runlock), all held, in an ExitStack that releases
    them; RunLockedError naming the holder (and none held) when another live run has one."""
    from dgnet.training.runlock import run_lock

    stack = contextlib.ExitStack()
    try:
        for folder in folders:
            stack.enter_context(run_lock(folder, what))
    except BaseException:
        stack.close()
        raise
    return stack


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "run"


def remove_work_dirs(workspace: Path, prefix: str) -> None:
    """Delete `checkpoints/<prefix>-*`: the finished run's folder and those of earlier, abandoned
    configurations of the same run (they could only resume with those exact settings again), but
    not one that a live run holds (see dgnet.training.runlock)."""
    from dgnet.training.runlock import locked_by_another

    root, prefix = workspace / CHECKPOINT_ROOT, _slug(prefix)
    for folder in root.glob(f"{prefix}-*") if root.is_dir() else ():
        if folder.is_dir() and re.fullmatch(rf"{re.escape(prefix)}-[0-9a-f]{{12}}", folder.name):
            if locked_by_another(folder):  # another configuration's run, live in this workspace
                continue
            shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # only when empty


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (a killed `dvc repro`, a CI timeout) into KeyboardInterrupt, so that `tracked_run`
    ends the MLflow run as KILLED instead of leaving it RUNNING for ever."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, handler)
