"""Where the MLflow store is, and reaching it: one quick check at start, MLflow's own retries mid-run.

Runs land in `MLFLOW_TRACKING_URI` when set, else in `sqlite:///<tracking root>/mlflow.db` (artifacts in
`<tracking root>/mlruns/<experiment>`). The tracking root is `DVC_ROOT` when DVC runs us (in a queued
`dvc exp run`: the parent repository, not its copy), else the folder holding params.yaml, so that every
run of the pipeline lands in one store. `connect` makes one attempt: an unreachable store is reported
within seconds. Mid-run MLflow retries a server itself (`HTTP_RETRIES`: about a minute); if it stays
away the stage stops (exit 2) with its checkpoints kept, to resume once the server is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dgnet.errors import ConfigError, DgnetError

DEFAULT_DB, DEFAULT_ARTIFACTS = "mlflow.db", "mlruns"
CHECK_TIMEOUT_S = 5  # how long the start-up check (and a run's last status) waits for a server
# MLflow's HTTP retries mid-run (its defaults, 7 retries of up to 120 s, take minutes), unless set.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# MLflow error codes of a store that is (momentarily) unavailable; others would fail the same way again.
TRANSIENT_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                             "DEADLINE_EXCEEDED", "ABORTED", "IO_ERROR"})


class TrackingError(DgnetError):
    """The tracking store cannot be reached or refused a write; the message names its URI."""


def quiet_mlflow() -> None:
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
                       "MLFLOW_LOGGING_LEVEL": "WARNING", **HTTP_RETRIES}.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    import mlflow  # noqa: F401 - configures its loggers on import; then quieten them

    for name in ("mlflow", "alembic", "urllib3"):
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    retries = logging.getLogger("urllib3.connectionpool")  # its "Retrying (...)" warnings: MLflow's retries
    if not retries.handlers:  # (urllib3's NullHandler would hide them)
        retries.addHandler(logging.StreamHandler())


def workspace_root() -> Path:
    """The folder holding params.yaml, from the working directory up (in a queued experiment, its copy)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    raise ConfigError(f"no params.yaml in {here} or its parents: run the stages from the repository")


def tracking_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else DVC_ROOT when DVC runs us (a queued experiment's parent repo), else the workspace."""
    if root is not None:
        return Path(root).resolve()
    return Path(os.environ["DVC_ROOT"]).resolve() if os.environ.get("DVC_ROOT") else workspace_root()


def tracking_uri(root: str | os.PathLike | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else `sqlite:///<root>/mlflow.db`, always absolute (a relative path
    taken from `root`): a DVC experiment's temporary copy never gets a store of its own."""
    root = tracking_root(root)
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not env:
        return f"sqlite:///{root / DEFAULT_DB}"
    if "://" not in env and not env.startswith("/"):  # a bare relative folder (file store)
        return str(root / env)
    return absolute_sqlite(env, root)


def absolute_sqlite(url: str, root: str | os.PathLike | None = None) -> str:
    """`url`, a relative `sqlite:///PATH` taken from `tracking_root(root)`."""
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite:///") and path and path != ":memory:" and not path.startswith("/"):
        return f"sqlite:///{tracking_root(root) / path}"
    return url


def artifact_location(uri: str, root: str | os.PathLike | None = None) -> str | None:
    """Beside a local SQLite database, `<its folder>/mlruns` as a file URI; else None (the server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if path and path != ":memory:":
        return (Path(path).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return (tracking_root(root) / DEFAULT_ARTIFACTS).as_uri()


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def redact(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


@contextlib.contextmanager
def one_attempt(uri: str, timeout_s: int = CHECK_TIMEOUT_S) -> Iterator[None]:
    """MLflow requests to server `uri` in the block: one attempt of at most `timeout_s` (MLflow reads
    these variables at each request)."""
    values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    old = {key: os.environ.get(key) for key in values} if is_http(uri) else {}
    os.environ.update({key: values[key] for key in old})
    try:
        yield
    finally:
        os.environ.update({key: value for key, value in old.items() if value is not None})
        for key in [key for key, value in old.items() if value is None]:
            os.environ.pop(key, None)


def check_database(url: str, what: str, timeout_s: int = CHECK_TIMEOUT_S,
                   error: type[DgnetError] = TrackingError) -> None:
    """One connection to the database at `url`, or `error` naming `what` and the URL (MLflow's engine
    set-up retries for about 100 s, and a host that drops packets would hang)."""
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
    """TrackingError naming a `sqlite:///PATH` store unless it can be written (MLflow's set-up would
    retry an unwritable one for about 100 s). Writes nothing."""
    import sqlite3

    path = uri.removeprefix("sqlite:///").split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return
    path = Path(path)
    hint = "check the path and its permissions, or point MLFLOW_TRACKING_URI at another store"
    if not path.parent.is_dir():
        raise TrackingError(f"MLflow tracking store {uri}: the folder {path.parent} does not exist; {hint}")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_s)) as db:
            db.execute("BEGIN IMMEDIATE")  # succeeds on a read-only file: a write, rolled back, proves it
            db.execute("CREATE TABLE _dgnet_write_check (x)")
            db.rollback()
    except sqlite3.Error as exc:
        raise TrackingError(f"MLflow tracking store {uri} cannot be written ({exc}); {hint}") from exc


def connect(uri: str, timeout_s: int = CHECK_TIMEOUT_S) -> Any:
    """An MlflowClient on `uri` once one cheap call proves the store answers; else TrackingError."""
    quiet_mlflow()
    from mlflow import MlflowClient

    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme in ("postgresql", "postgres", "mysql", "mssql"):
        check_database(uri, "MLflow tracking database", timeout_s)
    check_sqlite(uri, timeout_s)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        with one_attempt(uri, timeout_s):
            client.search_experiments(max_results=1)
    except Exception as exc:
        hint = ("is the server running? start one with `mlflow server`, or unset MLFLOW_TRACKING_URI "
                "to use the local SQLite store") if is_http(uri) else "check the path and its permissions"
        raise TrackingError(f"MLflow tracking store {redact(uri)} is unreachable ({hint}): "
                            f"{short(exc)}") from exc
    return client


def is_transient(exc: BaseException) -> bool:
    """Whether a failed tracking call failed because the store is unavailable (after MLflow's retries)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    # Not every OSError: a missing artifact file would fail the same way again.
    return isinstance(exc, ConnectionError | TimeoutError | requests.RequestException)


def view_hint(uri: str) -> str:
    return f"open {uri}" if is_http(uri) else f"mlflow ui --backend-store-uri {uri}"
