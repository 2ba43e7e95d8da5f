"""One run per run folder: `<folder>/run.lock`, a `filelock` lock held from start to end.

A second run on the same folder stops at once with an error naming the holder (pid, host, start
time, command), which the holder writes to `run.lock.json`. The kernel releases the lock when its
process dies, however it dies, so the next run takes a killed run's lock over (and says whose it
was). Re-entrant within a process (one singleton lock per folder): a stage that locks a folder
before it opens an MLflow run, and the trainer that locks it again, share one hold.
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


class RunLockedError(DgnetError):
    """Another live process is running in this run folder."""


def _lock(folder: Path) -> FileLock:
    return FileLock(folder / LOCK_NAME, is_singleton=True)


def read_holder(folder: Path) -> dict[str, Any] | None:
    """The holder record in `folder`, or None when there is none (or it cannot be read)."""
    try:
        record = json.loads((folder / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that left no record"
    return (f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')} "
            f"({record.get('command')})")


def pid_alive(pid: Any) -> bool:
    """Whether process `pid` exists on this machine."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run folder") -> Iterator[None]:
    """Hold `folder`'s run lock for the block; RunLockedError naming the holder when a live process
    holds it, OutputError when the folder cannot be created or written."""
    folder = Path(folder).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = _lock(folder)
        outermost = not lock.is_locked
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
        if outermost:
            previous = read_holder(folder)
            if previous is not None and previous.get("host") == socket.gethostname() \
                    and previous.get("pid") != os.getpid():
                state = "which is no longer running" if not pid_alive(previous.get("pid")) else "which let go"
                print(f"{what} {folder}: taking over the lock of {describe_holder(previous)}, {state}",
                      file=sys.stderr)
            (folder / HOLDER_NAME).write_text(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}) + "\n")
        yield
    finally:
        if outermost:
            with contextlib.suppress(OSError):
                (folder / HOLDER_NAME).unlink()
        lock.release()


def locked_by_another(folder: str | os.PathLike) -> bool:
    """Whether a live process other than this one holds `folder`'s run lock (without waiting)."""
    folder = Path(folder).resolve()
    if not (folder / LOCK_NAME).exists() or _lock(folder).is_locked:
        return False
    try:
        with _lock(folder).acquire(timeout=0):
            return False
    except Timeout:
        return True
    except OSError:
        return False
