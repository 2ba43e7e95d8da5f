"""One run per run folder: a file lock (the `filelock` package, which DVC and torch depend on too).

A training run holds `<folder>/run.lock` from start to end; a second run on the same folder (the
same --out, or the same stage and configuration in one workspace) stops at once with an error
naming the holder (pid, host, start time, command), which the holder writes to `run.lock.json`.
The lock is an flock: the kernel releases it when its process dies, however it dies, so the lock
of a killed run is free and the next run takes it over (and says whose it was); only the holder
file stays behind, and it is overwritten.

Re-entrant within a process: a stage that locks a folder before it opens an MLflow run, and the
trainer that locks it again, share one hold.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dgnet.errors import DgnetError, OutputError

LOCK_NAME = "run.lock"
HOLDER_NAME = "run.lock.json"

_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


class RunLockedError(DgnetError):
    """Another live process is running in this run folder."""


def holder_record() -> dict[str, Any]:
    """Who this process is: pid, host, start time (local, ISO 8601) and command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def read_holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The holder record in `folder`, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((Path(folder) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that left no record"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')} "
            f"({record.get('command')})")


def pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this machine (a holder on another host counts as alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _canonical(folder: str | os.PathLike) -> Path:
    """One name per folder (symlinks resolved), so that re-entry is recognised whatever the spelling."""
    try:
        return Path(folder).resolve()
    except (OSError, RuntimeError):  # a symlink loop: the lock itself will fail and say so
        return Path(folder).absolute()


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run folder") -> Iterator[None]:
    """Hold `folder`'s run lock for the block; RunLockedError naming the holder when a live process
    holds it, OutputError when the folder cannot be created or written."""
    folder = _canonical(folder)
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / LOCK_NAME))
        lock.acquire(timeout=0)
    except Timeout as exc:
        raise RunLockedError(
            f"{what} {folder} is in use by another run: {describe_holder(read_holder(folder))}; wait for "
            "it to finish, stop it, or give this run another output folder") from exc
    except OSError as exc:
        raise OutputError(f"{what} {folder} cannot be created or written "
                          f"({exc.strerror or exc}: {exc.filename or folder}); choose a folder you can "
                          "write to") from exc
    try:
        previous = read_holder(folder)
        if previous is not None and previous.get("host") == socket.gethostname() \
                and previous.get("pid") != os.getpid():
            state = "which is no longer running" if not pid_alive(previous.get("pid")) else "which let go"
            print(f"{what} {folder}: taking over the lock of {describe_holder(previous)}, {state}",
                  file=sys.stderr)
        (folder / HOLDER_NAME).write_text(json.dumps(holder_record()) + "\n")
        _held[folder] = 1
        yield
    finally:
        _held.pop(folder, None)
        with contextlib.suppress(OSError):
            (folder / HOLDER_NAME).unlink()
        lock.release()


def locked_by_another(folder: str | os.PathLike) -> bool:
    """Whether a live process other than this one holds `folder`'s run lock (without waiting)."""
    folder = _canonical(folder)
    if folder in _held or not (folder / LOCK_NAME).exists():
        return False
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False
