"""Where the MLflow store is, and reaching it: quickly at start, with retries mid-run.

Where runs land:
- `MLFLOW_TRACKING_URI` when set (a server URL, or sqlite/postgresql/...); a relative SQLite path
  in it is taken relative to the tracking root, like the default.
- otherwise `sqlite:///<tracking root>/mlflow.db`, with artifacts in `<tracking root>/mlruns/<experiment>`
  (an absolute file URI fixed when the experiment is created, never relative to the working directory).
The tracking root is `DVC_ROOT` when DVC runs us (in a queued `dvc exp run` it names the parent
repository, not the temporary copy under .dvc/tmp/exps), else the folder holding params.yaml. So
every run of the pipeline, from any working directory or experiment copy, lands in one store.

At start, `connect` makes one quick check, so an unreachable server or database is reported within
seconds. Mid-run, every write of the training hook (dgnet_pipeline.mlflow_hooks) is retried with exponential
back-off (`RetryPolicy`: 5 retries over about a minute by default; `DGNET_MLFLOW_RETRIES`,
`DGNET_MLFLOW_RETRY_WAIT_S` change it); if the server is still away the hook raises TrackingError,
the stage stops (exit 2) and the training checkpoints already written stay in checkpoints/, so
re-running the stage once the server is back resumes from the newest one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgnet.errors import ConfigError, DgnetError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"


# How long the start-up check waits for a tracking server before giving up (seconds).
CHECK_TIMEOUT_S = 5


# Mid-run writes: retries after a failure, first wait (doubling each time, capped at the maximum) and
# the timeout of one attempt. 5 retries: 2 + 4 + 8 + 16 + 30 s, about a minute before a run gives up.
RETRIES_ENV, RETRY_WAIT_ENV = "DGNET_MLFLOW_RETRIES", "DGNET_MLFLOW_RETRY_WAIT_S"


DEFAULT_RETRIES, DEFAULT_RETRY_WAIT_S, MAX_RETRY_WAIT_S, ATTEMPT_TIMEOUT_S = 5, 2.0, 30.0, 30


# MLflow error codes worth retrying: the server or its database is (momentarily) unavailable. Others
# (a bad parameter, a name that exists) would fail the same way again.
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                             "DEADLINE_EXCEEDED", "ABORTED", "IO_ERROR"})


class TrackingError(DgnetError):
    """The tracking store cannot be reached or refused a write; the message names its URI."""


def quiet_mlflow() -> None:
    """No telemetry, no INFO chatter (alembic migrations, run links), synchronous logging."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    import mlflow  # noqa: F401 - configures its loggers on import; then quieten them

    for name in ("mlflow", "alembic", "urllib3"):
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)


def workspace_root() -> Path:
    """The folder holding params.yaml, from the working directory upwards.

    DVC runs a stage's command in the folder of its dvc.yaml, which in a queued experiment is the
    temporary copy: its params.yaml (with the `-S` overrides) and its outputs are the ones to use.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml in {here} or its parents: run the stages from the repository")


def tracking_root() -> Path:
    """Where the default store lives: DVC_ROOT when DVC runs us (the parent repository in a queued
    `dvc exp run`), else the workspace root."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    return workspace_root()


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else `sqlite:///<root>/mlflow.db`, always absolute.

    `root` defaults to `tracking_root()`. A relative SQLite path (`sqlite:///mlflow.db`) or plain
    relative path in the environment variable is resolved against `root` too, so that a DVC
    experiment's temporary working directory never gets a store of its own.
    """
    root = Path(root).resolve() if root is not None else tracking_root()
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not env:
        return f"sqlite:///{root / DEFAULT_DB}"
    if env.startswith("sqlite:///"):
        path = env[len("sqlite:///"):]
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{root / path}"
        return env
    if "://" not in env and not env.startswith("/"):  # a bare relative folder (file store)
        return str(root / env)
    return env


def artifact_location(uri: str, root: str | os.PathLike | None = None) -> str | None:
    """The artifact root for new experiments: beside a local SQLite database, `<its folder>/mlruns`
    as a file URI (never relative to the working directory); None (the server decides) otherwise."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            return (Path(path).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
        root = Path(root).resolve() if root is not None else tracking_root()
        return (root / DEFAULT_ARTIFACTS).as_uri()
    return None


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def redact(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return url


def _is_database(uri: str) -> bool:
    """A SQLAlchemy URL of a database server (postgresql, mysql, mssql), not SQLite nor a file path."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    return scheme.split("+", 1)[0] in ("postgresql", "postgres", "mysql", "mssql")


def check_database(url: str, what: str, timeout_s: int = CHECK_TIMEOUT_S,
                   error: type[DgnetError] = TrackingError) -> None:
    """One connection to the database at `url` (a SQLAlchemy URL), or `error` naming `what` and the URL.

    Used before MLflow or Optuna open a database: MLflow's own engine set-up retries ten times over
    about 100 s, and a host that drops packets would otherwise hang for the TCP timeout.
    """
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    from sqlalchemy.pool import NullPool

    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
        connect_args = ({"connect_timeout": int(timeout_s)}
                        if parsed.get_backend_name() in ("postgresql", "mysql") else {})
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        hint = ("the PostgreSQL driver is `psycopg` (pip install -e '.[scale]'): write the URL as "
                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") if "postgres" in url else (
                "write it as a SQLAlchemy URL, dialect+driver://user:password@host:port/database")
        raise error(f"{what} {shown}: cannot open this database URL ({hint}): {short(exc)}") from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise error(f"{what} {shown} is unreachable (is the database server running on that host and "
                    f"port, and does the database exist?): {short(exc)}") from exc
    finally:
        engine.dispose()


def check_sqlite(uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """For a `sqlite:///PATH` store: TrackingError naming the file and the reason unless it can be
    written (its folder exists and a write transaction can start within `timeout_s`). MLflow's own
    set-up retries an unwritable database for about 100 s; this says so at once. Writes nothing."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return
    path = Path(path)
    hint = "check the path and its permissions, or point MLFLOW_TRACKING_URI at another store"
    if not path.parent.is_dir():
        raise TrackingError(f"MLflow tracking store {uri}: the folder {path.parent} does not exist; {hint}")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as db:
            # BEGIN IMMEDIATE alone succeeds on a read-only file: a write, rolled back, proves it.
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE _dgnet_write_check (x)")
            db.rollback()
    except sqlite3.Error as exc:
        raise TrackingError(f"MLflow tracking store {uri} cannot be written ({exc}); {hint}") from exc


def connect(uri: str, timeout_s: int = CHECK_TIMEOUT_S) -> Any:
    """An MlflowClient on `uri` after one cheap call proves the store answers; TrackingError else.

    For a server, the check makes a single attempt with a `timeout_s` timeout (MLflow's defaults,
    7 retries with exponential back-off, would take minutes to report a dead server); for a database
    URL, one connection with a `timeout_s` connect timeout (MLflow's engine set-up retries for about
    100 s). Mid-run writes are retried by `MlflowHooks` (see `RetryPolicy`).
    """
    quiet_mlflow()
    from mlflow import MlflowClient

    if _is_database(uri):
        check_database(uri, "MLflow tracking database", timeout_s)
    check_sqlite(uri, timeout_s)
    check_env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"} if _is_http(uri) else {}
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        with scoped_env(**check_env):
            client.search_experiments(max_results=1)
    except Exception as exc:
        hint = ("is the server running? start one with `mlflow server`, or unset MLFLOW_TRACKING_URI "
                "to use the local SQLite store") if _is_http(uri) else "check the path and its permissions"
        raise TrackingError(f"MLflow tracking store {redact(uri)} is unreachable ({hint}): "
                            f"{short(exc)}") from exc
    return client


@dataclass(frozen=True)
class RetryPolicy:
    """How a mid-run MLflow write is retried: `retries` more attempts after a transient failure,
    waiting `first_wait_s`, then twice as long each time up to `max_wait_s`; each attempt of a
    server call bounded by `attempt_timeout_s` (MLflow's own HTTP retries are turned off during our
    attempts, unless MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT are set, so the bound holds)."""

    retries: int = DEFAULT_RETRIES
    first_wait_s: float = DEFAULT_RETRY_WAIT_S
    max_wait_s: float = MAX_RETRY_WAIT_S
    attempt_timeout_s: int = ATTEMPT_TIMEOUT_S

    def waits(self) -> list[float]:
        return [min(self.first_wait_s * 2**i, self.max_wait_s) for i in range(self.retries)]

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The default policy, with DGNET_MLFLOW_RETRIES / DGNET_MLFLOW_RETRY_WAIT_S when set."""
        values: dict[str, Any] = {}
        for name, field, kind in ((RETRIES_ENV, "retries", int), (RETRY_WAIT_ENV, "first_wait_s", float)):
            text = os.environ.get(name, "").strip()
            if not text:
                continue
            try:
                value = kind(text)
            except ValueError:
                value = -1
            if value < 0 or not math.isfinite(value):
                raise ConfigError(f"{name}={text!r}: must be a number >= 0")
            values[field] = value
        return cls(**values)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed tracking call may succeed if tried again (server or database unavailable)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    import requests

    # Not every OSError: a missing artifact file would fail the same way again.
    return isinstance(exc, ConnectionError | TimeoutError | requests.RequestException)


def attempt_env(uri: str, timeout_s: int) -> dict[str, str]:
    """Environment for one attempt at a server: no MLflow-internal retries (ours wrap them) and a
    bounded timeout, unless the user set those variables."""
    if not _is_http(uri):
        return {}
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    return {key: value for key, value in wanted.items() if key not in os.environ}


def view_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri}" if _is_http(uri) else f"mlflow ui --backend-store-uri {uri}"
