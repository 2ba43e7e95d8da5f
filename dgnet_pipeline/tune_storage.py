"""Where a `dgnet tune` study lives, and how several workers share it: the Optuna storage.

- `storage_url`: a relative SQLite path is taken from the repository root (DVC_ROOT in `dvc exp`).
- `check_storage`: the URL is checked, and a database server must answer within seconds; else a
  StorageError naming the URL with its password hidden (the command exits 2).
- `startup_lock`: workers started at the same moment open the storage, the study, its settings
  record and its MLflow parent run one at a time (PostgreSQL advisory lock, or a lock file beside
  a SQLite database).
- `open_storage`: an RDBStorage with heartbeats whose stale trials are re-queued with the same
  weights (RetryHeartbeatStaleTrialCallback); creating Optuna's tables is retried when another
  worker creates them at the same moment (`retry_schema_race`), for backends without the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from dgnet.errors import DgnetError
from dgnet_pipeline.tracking import check_database, redact, tracking_root
from dgnet_pipeline.tune_tracking import quiet_optuna, short


class StorageError(DgnetError):
    """The Optuna storage cannot be opened; the message names its URL (password hidden)."""


def storage_url(url: str) -> str:
    """A relative SQLite path is taken relative to the repository root (DVC_ROOT under `dvc exp`),
    so that every run and experiment copy shares one study database."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix):].startswith("/") and url[len(prefix):] != ":memory:":
        return f"{prefix}{tracking_root() / url[len(prefix):]}"
    return url


def check_storage(url: str) -> None:
    """A StorageError naming the URL (password hidden) unless `url` is a SQLAlchemy URL and, for a
    database server, the database answers (one connection, a 5 s connect timeout)."""
    from sqlalchemy.engine import make_url

    try:
        backend = make_url(url).get_backend_name()
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)}: not a SQLAlchemy URL "
                           f"(e.g. sqlite:///optuna.db, postgresql+psycopg://user:password@host/db)") from exc
    if backend != "sqlite":
        check_database(url, "Optuna storage", error=StorageError)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 2) -> optuna.storages.RDBStorage:
    """An RDBStorage with heartbeats (every `heartbeat_interval` s, when set) whose trials silent for
    `grace_period` s are failed and re-queued (at most `max_retry` times); or a
    StorageError naming the URL. Any SQLAlchemy URL works: SQLite for one machine, PostgreSQL
    (postgresql+psycopg://user:password@host/db) for many workers. Check the URL first
    (`check_storage`): that is where an unreachable server is reported, within seconds."""
    from sqlalchemy.engine import make_url

    sqlite = make_url(url).get_backend_name() == "sqlite"
    engine = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    heartbeat = {}
    if heartbeat_interval:
        heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                     "heartbeat_stale_trial_callback": retry_callback(max_retry)}
    try:
        with quiet_optuna():
            return retry_schema_race(optuna.storages.RDBStorage, url, engine_kwargs=engine, **heartbeat)
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)} cannot be opened "
                           f"(check the path, the server and the credentials): {short(exc)}") from exc


SCHEMA_ATTEMPTS = 6  # waits of 0.1-0.4 s, doubling: at most about 12 s in all


def schema_race(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says another worker created the same table or type a moment
    earlier: PostgreSQL's duplicate key on pg_type or `type "studydirection" already exists`, SQLite's
    `table ... already exists`, a duplicate row of Optuna's version tables. Connection, permission
    and other errors are not: they are reported at once."""
    from sqlalchemy.exc import DBAPIError, IntegrityError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, IntegrityError):
            return True
        if isinstance(exc, DBAPIError) and "already exists" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_schema_race(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, tried again after a short random wait while it loses a race to create
    Optuna's tables. N workers started at the same moment on a new database all run CREATE TYPE /
    CREATE TABLE, and all but one fail; each retry finds more of the schema in place (creation is
    idempotent: it skips what exists). The jitter keeps the losers from colliding again."""
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt + 1 == SCHEMA_ATTEMPTS or not schema_race(exc):
                raise
            time.sleep(random.uniform(0.1, 0.4) * 2**attempt)
    raise AssertionError("unreachable")


LOCK_TIMEOUT_S = 300.0


@contextlib.contextmanager
def startup_lock(url: str, study: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Held while a worker opens the storage, the study, its settings record and its MLflow parent
    run, so that workers started at the same moment do that one at a time: the first creates them,
    the others find them. (Optuna's user attributes are upserts and MLflow has no create-if-absent,
    so without a lock two workers may each create a parent run, or record different settings.)

    PostgreSQL: a session advisory lock, which the server releases if the worker dies. SQLite: a lock
    file beside the database (`<db>.lock`), released by the OS likewise. Other backends have none:
    creating the tables is retried there (`retry_schema_race`), and `StudyTracker.open_parent` keeps
    the parent another worker recorded first.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend, database = parsed.get_backend_name(), parsed.database or ""
    if backend == "postgresql":
        release = _advisory_lock(url, study, timeout_s)
    elif backend == "sqlite" and database not in ("", ":memory:"):
        release = _file_lock(Path(f"{database}.lock"), url, study, timeout_s)
    else:
        release = None
    try:
        yield
    finally:
        if release is not None:
            release()


def _wait_for_lock(try_lock: Any, url: str, study: str, timeout_s: float) -> None:
    """Call `try_lock()` until it returns True; a StorageError after `timeout_s` seconds."""
    deadline, told = time.monotonic() + timeout_s, False
    while not try_lock():
        if time.monotonic() > deadline:
            raise StorageError(f"Optuna storage {redact(url)}: another worker has been opening study "
                               f"{study!r} for {timeout_s:.0f} s (start-up lock held); is it hanging?")
        if not told:
            print(f"tune: another worker is opening study {study!r}; waiting for it", flush=True)
            told = True
        time.sleep(random.uniform(0.05, 0.25))


def _advisory_lock(url: str, study: str, timeout_s: float) -> Any:
    """Take PostgreSQL advisory lock hash("dgnet tune", study) on a connection of its own; returns
    the function that releases it (by closing that connection)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(f"dgnet tune {study}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except Exception as exc:
        engine.dispose()
        raise StorageError(f"Optuna storage {redact(url)} is unreachable: {short(exc)}") from exc

    def release() -> None:
        with contextlib.suppress(Exception):  # closing the session releases its advisory locks
            connection.close()
        engine.dispose()

    query = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
    try:
        _wait_for_lock(lambda: bool(connection.execute(query, {"key": key}).scalar()), url, study, timeout_s)
    except BaseException:
        release()
        raise
    return release


def _file_lock(path: Path, url: str, study: str, timeout_s: float) -> Any:
    """An exclusive flock on `path` (created if missing); returns the function that releases it.
    No lock where there is no fcntl (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"Optuna storage {redact(url)} cannot be opened (check the path and its "
                           f"permissions): cannot create its lock file {path}: {short(exc)}") from exc

    def try_lock() -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        _wait_for_lock(try_lock, url, study, timeout_s)
    except BaseException:
        os.close(handle)
        raise
    return lambda: os.close(handle)  # closing the file releases the lock


def retry_callback(max_retry: int) -> RetryHeartbeatStaleTrialCallback:
    """Re-queues a failed trial with the same weights (and its intermediate values, since the retry
    resumes from the checkpoint the first attempt left), at most `max_retry` times."""
    with quiet_optuna():
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retry,
                                                inherit_intermediate_values=True)
