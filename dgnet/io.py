"""Atomic writes: an output either appears whole or not at all, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dgnet.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files: the permissions a plain open() gives
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_replaceable(path: str | os.PathLike, marker: str, command: str) -> None:
    """OutputError unless `command` may replace the folder `path`: absent, empty or its own earlier output
    (it holds `marker`), and neither the current folder nor one above it."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    if path == here or here.is_relative_to(path):
        raise OutputError(f"{command} --out {path}: the current folder or one above it is never replaced; "
                          "give a new folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{command} --out {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise OutputError(f"{command} --out {path}: the folder holds files that {command} did not write "
                          f"(no {marker}), and its output replaces the whole folder; give a new or "
                          "empty folder")


def check_writable(path: str | os.PathLike, command: str, need_bytes: int = 0) -> None:
    """OutputError unless a file of `need_bytes` can be created where `path` goes: checked before the
    work, so a command never computes what it then cannot write."""
    path = Path(path)
    folder = path.parent.resolve()
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputError(f"{command}: cannot write {path} ({exc.filename or folder}: "
                          f"{exc.strerror or exc}); choose a folder you can write to") from exc
    if need_bytes > free:
        raise OutputError(f"{command}: {path} needs {need_bytes:,} bytes, {folder} has {free:,} free")


@contextlib.contextmanager
def output_errors(command: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError while writing (a full disk, a folder gone read-only) into an OutputError naming
    the file, so the command stops with exit 2 and its message instead of a traceback."""
    try:
        yield
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(f"{command}: cannot write {exc.filename or path}: {why}; nothing half-written "
                          "was kept") from exc


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; it replaces `path` (all of it: a user's folder
    is checked first by `check_replaceable`) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")  # os.replace cannot replace a non-empty folder
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def replace_marked_section(path: str | os.PathLike, name: str, section: str, header: str = "") -> Path:
    """Put `section` (with its own `<!-- BEGIN name -->` ... `<!-- END name -->` lines) in place of the old
    one in `path`, or append it (a new file starts with `header`), atomically: scripts share the file."""
    path = Path(path)
    text = path.read_text() if path.exists() else header
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n?", re.S)
    text, found = pattern.subn(lambda _: section, text)
    if not found:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
