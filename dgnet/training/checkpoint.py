"""Checkpoints that let a resumed run equal an uninterrupted one: the iteration and every state dict
(models, optimisers, AMP scalers). No RNG state: every draw of an iteration is seeded from
(seed, iteration) (runtime.iteration_seed, the samplers). Written to a temporary name and renamed, so a crash
mid-write keeps the previous checkpoint whole.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dgnet.errors import DgnetError, OutputError
from dgnet.io import atomic_path

_NAME = re.compile(r"^iter_(\d+)\.pt$")


class CheckpointError(DgnetError):
    """A checkpoint that is missing, unreadable or from another configuration."""


def checkpoint_path(folder: str | os.PathLike, iteration: int) -> Path:
    return Path(folder) / f"iter_{iteration:08d}.pt"


def save_checkpoint(folder: str | os.PathLike, iteration: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` (+ the iteration) as folder/iter_XXXXXXXX.pt, atomically; keep the
    newest `keep` checkpoints."""
    path = checkpoint_path(folder, iteration)
    state = {**state, "iteration": iteration}
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
        if isinstance(exc, RuntimeError) and "PytorchStreamWriter" not in str(exc):
            raise
        raise _write_error(path, state, exc) from exc
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    return sum(_nbytes(v) for v in obj) if isinstance(obj, list | tuple) else 0


def _write_error(path: Path, state: dict[str, Any], exc: Exception) -> OutputError:
    """What a failed checkpoint write tells the user: the file, the space it needs and has, and which
    checkpoint is kept (the atomic write leaves the previous ones whole and no temporary file)."""
    full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc)
    why = "the disk is full" if full else (getattr(exc, "strerror", None) or str(exc).splitlines()[-1])
    try:
        free = f", {shutil.disk_usage(path.parent).free:,} bytes free there"
    except OSError:
        free = ""
    kept = list_checkpoints(path.parent)
    kept = (f"the last good checkpoint, {kept[-1]}, is kept: re-run the same command to resume from it"
            if kept else "no earlier checkpoint of this run exists")
    return OutputError(f"checkpoint {path}: cannot be written ({why}); it needs about "
                       f"{_nbytes(state):,} bytes{free}. Free space there; {kept}")


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    return next(reversed(list_checkpoints(folder)), None)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint; CheckpointError names the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Tensors and plain values only: a file planted in a shared run folder runs no code.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain values, "
                              "so it is not loaded (a file of another program, or of a dgnet before "
                              "checkpoints loaded with weights_only)") from exc
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "iteration" not in state:
        raise CheckpointError(f"checkpoint {path} is not a dgnet training checkpoint (no iteration)")
    return state


def newest_readable_checkpoint(folder: str | os.PathLike, map_location: str | torch.device = "cpu",
                               warn: Callable[[str], None] | None = None
                               ) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint in `folder` that loads, or None. An unreadable newer one
    (truncated by a full disk, corrupted) is renamed `<name>.unreadable` (neither resumed from nor
    counted among the kept ones) and `warn` is told which and why."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as exc:
            aside = path.with_name(path.name + ".unreadable")
            try:
                os.replace(path, aside)
                where = f"moved aside to {aside.name}"
            except OSError:
                where = "left in place"
            if warn is not None:
                warn(f"skipping checkpoint {path} ({where}): {exc}")
    return None
