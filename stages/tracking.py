"""MLflow plumbing of the training stages: where the store is, one tracked run, and the training hook.

Where runs land:
- `MLFLOW_TRACKING_URI` when set (a server URL, or sqlite/postgresql/...); a relative SQLite path
  in it is taken relative to the tracking root, like the default.
- otherwise `sqlite:///<tracking root>/mlflow.db`, with artifacts in `<tracking root>/mlruns/<experiment>`
  (an absolute file URI fixed when the experiment is created, never relative to the working directory).
The tracking root is `DVC_ROOT` when DVC runs us (in a queued `dvc exp run` it names the parent
repository, not the temporary copy under .dvc/tmp/exps), else the folder holding params.yaml. So
every run of the pipeline, from any working directory or experiment copy, lands in one store.

`MlflowHooks` is a `dgnet.training.hooks.TrainingHooks`: the training loops in dgnet/ call it and
never import mlflow themselves. It logs the run's params and tags at the start, losses/weights/
learning rates every few iterations (batched), re-ID metrics at evaluations, swap grids as images,
and at the end the final model as an MLflow pyfunc model (stages.mlflow_model: images in, features
out, with its signature; the dgnet model file and the configuration JSON inside), registered as a new
version of a registered model whose alias (default `current`) then points at it. Load one back with
`mlflow.pyfunc.load_model("models:/dgnet@current")`, `dgnet.FeatureExtractor("models:/dgnet@current")`,
or `mlflow.artifacts.download_artifacts(...)` and `dgnet.models.persist.load_model` on its model.pt.

When the tracking server goes away mid-run, every write of `MlflowHooks` is retried with exponential
back-off (`RetryPolicy`: 5 retries over about a minute by default; `DGNET_MLFLOW_RETRIES`,
`DGNET_MLFLOW_RETRY_WAIT_S` change it); if the server is still away the hook raises TrackingError,
the stage stops (exit 2) and the training checkpoints already written stay in checkpoints/, so
re-running the stage once the server is back resumes from the newest one. At start, `connect` makes
one quick check instead, so an unreachable server or database is reported within seconds.

The second half of the module is the plumbing the training stages share (params -> config
dataclasses, the validated manifest, checkpoint work dirs keyed by configuration, metrics JSON).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from dgnet.errors import ConfigError, DgnetError
from dgnet.training.hooks import TrainingHooks, TrainingResult

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlruns"
DEFAULT_EXPERIMENT = "dgnet"
DEFAULT_ALIAS = "current"
EVAL_PREFIX = "eval/"
MODEL_ARTIFACT_DIR = "model"

# MLflow's limits (mlflow.utils.validation): values longer than these are rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

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

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


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


# --- where things are ---------------------------------------------------------------------------


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


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
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
        raise error(f"{what} {shown}: cannot open this database URL ({hint}): {_short(exc)}") from exc
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise error(f"{what} {shown} is unreachable (is the database server running on that host and "
                    f"port, and does the database exist?): {_short(exc)}") from exc
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
            db.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file or folder
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
        with _env(**check_env):
            client.search_experiments(max_results=1)
    except Exception as exc:
        hint = ("is the server running? start one with `mlflow server`, or unset MLFLOW_TRACKING_URI "
                "to use the local SQLite store") if _is_http(uri) else "check the path and its permissions"
        raise TrackingError(f"MLflow tracking store {redact(uri)} is unreachable ({hint}): "
                            f"{_short(exc)}") from exc
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


def _attempt_env(uri: str, timeout_s: int) -> dict[str, str]:
    """Environment for one attempt at a server: no MLflow-internal retries (ours wrap them) and a
    bounded timeout, unless the user set those variables."""
    if not _is_http(uri):
        return {}
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    return {key: value for key, value in wanted.items() if key not in os.environ}


# MLflow 3's UI opens an untagged experiment on its GenAI (traces) overview; this tag makes it open
# on the runs table, where variants and metrics are compared.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: Any, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created or restored when needed. A new experiment keeps its
    artifacts in `<artifact_root>/<name>` when `artifact_root` is given (see `artifact_location`)."""
    from mlflow.exceptions import MlflowException

    location = None
    if artifact_root:
        location = f"{artifact_root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_.-]', '_', name) or 'experiment'}"
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
            except MlflowException as exc:  # created concurrently by another stage
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if key not in experiment.tags:  # an experiment made before, or by hand: a user's choice stays
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    except MlflowException as exc:
        raise TrackingError(f"MLflow experiment {name!r} at {client.tracking_uri}: {_short(exc)}") from exc


def git_commit(folder: str | os.PathLike) -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) of the git checkout at `folder`."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def run_tags(stage: str, kind: str, variant: str, source: str, folder: str | os.PathLike) -> dict[str, str]:
    """The tags every training run gets: git commit, DVC stage/experiment, dgnet kind and variant."""
    tags = {"dvc.stage": os.environ.get("DVC_STAGE") or stage, "dgnet.kind": kind, "dgnet.variant": variant,
            "mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    commit, dirty = git_commit(folder)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git.commit"] = commit
        tags["git.dirty"] = str(dirty).lower()
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextlib.contextmanager
def tracked_run(client: Any, experiment_id: str, run_name: str, tags: Mapping[str, str],
                parent_run_id: str | None = None,
                killed_by: tuple[type[BaseException], ...] = ()) -> Iterator[Any]:
    """Create a run; end it FINISHED when the block succeeds, KILLED on Ctrl-C (or one of `killed_by`,
    e.g. a pruned Optuna trial: stopped on purpose, not broken), FAILED otherwise."""
    tags = dict(tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    try:
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    except Exception as exc:
        raise TrackingError(
            f"could not create an MLflow run at {client.tracking_uri}: {_short(exc)}") from exc
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except (KeyboardInterrupt, *killed_by):
        status = "KILLED"
        raise
    finally:
        try:  # one quick attempt: when the server has gone, say so rather than retry for minutes
            with _env(**_attempt_env(client.tracking_uri, CHECK_TIMEOUT_S)):
                client.set_terminated(run.info.run_id, status)
        except Exception as exc:
            logging.getLogger(__name__).warning("could not mark MLflow run %s %s: %s",
                                                run.info.run_id, status, _short(exc))


# --- params and metrics -----------------------------------------------------------------------


def flatten(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and dataclasses to one level with dotted keys."""
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def safe_key(key: str) -> str:
    """A metric/param key MLflow accepts: odd characters become `_`, no `..` or leading `/`."""
    key = _BAD_KEY_CHARS.sub("_", str(key)).strip("/") or "_"
    if posixpath.normpath(key) != key:
        key = "/".join(part for part in key.split("/") if part not in ("", ".", "..")) or "_"
    return key[:MAX_KEY]


def param_value(value: Any) -> str:
    """A param's text: strings as they are, everything else as JSON; at most 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."


def _tag_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG_VALUE else text[: MAX_TAG_VALUE - 3] + "..."


def check_alias(alias: str) -> str:
    """A registry alias MLflow accepts: letters, digits, `_`, `-`; not `latest` nor `v<digits>`."""
    if not alias or not re.fullmatch(r"[\w\-]+", alias):
        raise ConfigError(f"mlflow.alias: {alias!r} must be letters, digits, `_` or `-`")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"mlflow.alias: {alias!r} is reserved by MLflow (`latest`, `v1`, ...); "
                          f"use e.g. `{DEFAULT_ALIAS}` or `champion`")
    return alias


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


class MlflowHooks(TrainingHooks):
    """Log one training loop into MLflow run `run_id` (created by the caller, e.g. `tracked_run`).

    Iteration logs are buffered and written with `log_batch`, every `flush_every_s` seconds and at
    evaluations and the end. `registered_model=None` skips the registry. A write that fails because
    the store is unavailable is retried under `retry` (default `RetryPolicy.from_env()`); when the
    retries are spent, TrackingError stops the training loop, whose checkpoints stay on disk.
    """

    def __init__(self, client: Any, run_id: str, *, registered_model: str | None = None,
                 alias: str | None = DEFAULT_ALIAS, variant: str | None = None,
                 extra_params: Mapping[str, Any] | None = None, version_tags: Mapping[str, Any] | None = None,
                 eval_prefix: str = EVAL_PREFIX, flush_every_s: float = 10.0,
                 retry: RetryPolicy | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.registered_model = registered_model
        self.alias = check_alias(alias) if alias else None
        self.variant = variant
        self.extra_params = dict(extra_params or {})
        self.version_tags = {k: str(v) for k, v in (version_tags or {}).items()}
        self.eval_prefix = eval_prefix
        self.flush_every_s = flush_every_s
        self.model_version: Any = None  # the registered ModelVersion, after on_end
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._evaluated_at: set[int] = set()
        self.retry = retry if retry is not None else RetryPolicy.from_env()
        self.checkpoint: tuple[int, Path] | None = None  # the newest checkpoint this run wrote
        self.gone = False  # set once retries were spent: close() then writes nothing more

    # -- internals
    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, retried with back-off while the failure is transient."""
        uri = redact(str(self.client.tracking_uri))
        waits = self.retry.waits()
        started, attempt = time.monotonic(), 0
        while True:
            try:
                with _env(**_attempt_env(uri, self.retry.attempt_timeout_s)):
                    return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise TrackingError(f"MLflow at {uri} refused to {what} (run {self.run_id}): "
                                        f"{_short(exc)}") from exc
                if attempt == len(waits):
                    self.gone = True
                    raise TrackingError(
                        f"MLflow at {uri} failed to {what} (run {self.run_id}) {attempt + 1} times over "
                        f"{time.monotonic() - started:.0f} s, the store is unavailable: {_short(exc)}. "
                        f"Training stopped; {self._kept()}") from exc
                print(f"warning: MLflow at {uri} failed to {what} ({_short(exc, 160)}); retry "
                      f"{attempt + 1}/{len(waits)} in {waits[attempt]:g} s", file=sys.stderr, flush=True)
                time.sleep(waits[attempt])
                attempt += 1

    def _kept(self) -> str:
        if self.checkpoint is None:
            return ("the checkpoints written so far are kept: re-run the same command once the store is "
                    "back to resume from the newest")
        iteration, path = self.checkpoint
        return (f"the last checkpoint, {path} (iteration {iteration}), is kept: re-run the same command "
                f"once the store is back to resume from it")

    def _metrics(self, values: Mapping[str, Any], step: int, prefix: str = "") -> list[Any]:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for key, value in values.items():
            number = _number(value)
            if number is not None:
                metrics.append(Metric(safe_key(f"{prefix}{key}"), number, now, int(step)))
        return metrics

    def flush(self) -> None:
        """Write the buffered iteration metrics."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), METRICS_PER_BATCH):
            self._call("log metrics", self.client.log_batch, self.run_id,
                       metrics=pending[start : start + METRICS_PER_BATCH], synchronous=True)
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(safe_key(k), param_value(v)) for k, v in flatten(params).items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self._call("log params", self.client.log_batch, self.run_id,
                       params=items[start : start + PARAMS_PER_BATCH], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _tag_value(v)) for k, v in tags.items()]
        if items:
            self._call("set tags", self.client.log_batch, self.run_id, tags=items, synchronous=True)

    # -- hooks
    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        self.kind = kind
        self.log_params({**self.extra_params, **config})
        tags = {"dgnet.kind": kind, "dgnet.start_iteration": start_iteration,
                "dgnet.resumed": str(start_iteration > 0).lower()}
        if self.variant:
            tags["dgnet.variant"] = self.variant
        self.set_tags(tags)

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        self._pending.extend(self._metrics(logs, iteration))
        due = time.monotonic() - self._last_flush >= self.flush_every_s
        if due or len(self._pending) >= METRICS_PER_BATCH:
            self.flush()

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        self._pending.extend(self._metrics(metrics, iteration, self.eval_prefix))
        self._evaluated_at.add(int(iteration))
        self.flush()

    def on_image(self, iteration: int, name: str, image: Any) -> None:
        key = re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", name) or "image"
        # Stored as images/<key>+step+<iteration>+timestamp+...png (+ a small .webp the UI shows).
        self._call(f"log image {key!r}", self.client.log_image, self.run_id, image, key=key,
                   step=int(iteration), synchronous=True)

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        self.checkpoint = (int(iteration), Path(path))  # written before this hook is called
        self.set_tags({"dgnet.checkpoint": str(path), "dgnet.checkpoint_iteration": int(iteration)})

    def on_end(self, result: TrainingResult) -> None:
        final = {k: v for k, v in result.metrics.items() if _number(v) is not None}
        if final and int(result.iterations) not in self._evaluated_at:
            self._pending.extend(self._metrics(final, result.iterations, self.eval_prefix))
        self.flush()
        self.set_tags({"dgnet.iterations": int(result.iterations)})
        self.log_model(result)  # the model file itself goes to the run's artifacts, model/

    def close(self) -> None:
        """Write what is still buffered (call it in a `finally`); nothing once the store has gone."""
        if self._pending and not self.gone:
            self.flush()

    # -- the final model
    def log_model(self, result: TrainingResult) -> Any:
        """Log the model under `model/` as an MLflow pyfunc model (the model file inside) with its
        configuration; register it if configured."""
        from stages.mlflow_model import save_pyfunc_model

        path = Path(result.model_path)
        if not path.exists():
            raise DgnetError(f"the {result.kind} model {path} does not exist after training")
        if path.is_dir():
            self._call("log the model", self.client.log_artifacts, self.run_id, str(path), MODEL_ARTIFACT_DIR)
        else:
            with tempfile.TemporaryDirectory(prefix="dgnet-mlflow-model-") as tmp:
                folder = Path(tmp) / MODEL_ARTIFACT_DIR
                save_pyfunc_model(path, folder)
                self._call("log the model", self.client.log_artifacts, self.run_id, str(folder),
                           MODEL_ARTIFACT_DIR)
        card = {"kind": result.kind, "iterations": int(result.iterations), "model_file": path.name,
                "metrics": result.metrics, "config": result.config}
        self._call("log the model config", self.client.log_dict, self.run_id, json.loads(
            json.dumps(card, default=str)), f"{MODEL_ARTIFACT_DIR}/config.json")
        if self.registered_model:
            self.model_version = self.register(result)
        return self.model_version

    def register(self, result: TrainingResult) -> Any:
        """A new version of the registered model from this run's `model/`; the alias moves to it."""
        from mlflow.exceptions import MlflowException

        name = self.registered_model
        try:
            self.client.create_registered_model(
                name, description=f"dgnet {result.kind} models, one version per training run: MLflow "
                                  "pyfunc models (images in, features out; `mlflow models serve`) holding "
                                  "model.pt (dgnet.models.persist) and config.json")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise TrackingError(f"MLflow at {self.client.tracking_uri}: cannot create registered "
                                    f"model {name!r}: {_short(exc)}") from exc
        run = self._call("read the run", self.client.get_run, self.run_id)
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_DIR}"
        tags = {"dgnet.kind": result.kind, "dgnet.iterations": str(result.iterations),
                **{f"metric.{k}": f"{v:.6g}" for k, v in finite(result.metrics).items()},
                **self.version_tags}
        if self.variant:
            tags["dgnet.variant"] = self.variant
        version = self._call(f"register a version of {name!r}", self.client.create_model_version,
                             name, source, run_id=self.run_id, tags=tags,
                             description=f"{result.kind} after {result.iterations} iterations")
        self.model_version = version
        if self.alias:
            self.set_alias(self.alias)
        self.set_tags({"dgnet.registered_model": name, "dgnet.model_version": version.version})
        return version

    def set_alias(self, alias: str) -> None:
        """Point `alias` of the registered model at the version this run registered."""
        alias = check_alias(alias)
        self._call(f"set alias {alias!r} of {self.registered_model!r}",
                   self.client.set_registered_model_alias, self.registered_model, alias,
                   self.model_version.version)


def finite(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of `values`, as floats (NaN/inf and non-numbers dropped)."""
    out = {}
    for key, value in values.items():
        number = _number(value)
        if number is not None and math.isfinite(number):
            out[key] = number
    return out


# --- the training stages (stages/teacher.py, stages/train.py): shared plumbing -------------------

CHECKPOINT_ROOT = "checkpoints"


class LastImage(TrainingHooks):
    """Keeps the newest picture of each name (the stage writes the last swap grid next to the model)."""

    def __init__(self) -> None:
        self.images: dict[str, Any] = {}

    def on_image(self, iteration: int, name: str, image: Any) -> None:
        self.images[name] = image.copy()


def mlflow_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml `mlflow:` with its defaults; the alias is checked against MLflow's reserved names."""
    section = params.get("mlflow") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("params.yaml `mlflow:` must be a mapping")
    known = {"experiment", "teacher_model", "model", "alias"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ConfigError(f"mlflow: unknown key(s) {unknown}; known keys are {sorted(known)}")
    settings = {"experiment": DEFAULT_EXPERIMENT, "teacher_model": "dgnet-teacher", "model": "dgnet",
                "alias": DEFAULT_ALIAS, **section}
    if settings["alias"]:
        check_alias(str(settings["alias"]))
    return settings


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
    """`get_profile(model.profile, **model.overrides, num_classes=<train ids in the manifest>)`."""
    from dgnet.models.config import get_profile

    section = params.get("model") or {}
    if not isinstance(section, Mapping):
        raise ConfigError("params.yaml `model:` must be a mapping (profile, overrides)")
    unknown = sorted(set(section) - {"profile", "overrides"})
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown}; known keys are ['overrides', 'profile']")
    overrides = dict(section.get("overrides") or {})
    num_classes = int(frame.loc[frame["split"] == "train", "person_id"].nunique())
    if "num_classes" in overrides and overrides["num_classes"] != num_classes:
        raise ConfigError(f"model.overrides.num_classes: {overrides['num_classes']} differs from the "
                          f"{num_classes} training identities of the manifest; leave it out "
                          f"(it is set from there)")
    overrides["num_classes"] = num_classes
    return get_profile(str(section.get("profile", "cpu")), **overrides)


def train_config(cls: type, values: Mapping[str, Any], section: str, stage_keys: tuple[str, ...] = (),
                 fixed: Mapping[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """(the `cls` dataclass built from a params section, the section's stage-level keys).

    Keys in `stage_keys` belong to the stage (e.g. `seeds`), the rest map onto `cls`'s fields
    (nested dataclasses take a mapping); an unknown key is a ConfigError naming `section.key`.
    `scale_schedule_from: N` means the section's schedule numbers (LR milestones, warm-up) are
    written for a run of N iterations and are compressed to `iterations` (`cls.scaled_to`).
    """
    from dgnet.training.loop import config_from_mapping

    if not isinstance(values, Mapping):
        raise ConfigError(f"params.yaml `{section}:` must be a mapping")
    stage = {k: values[k] for k in (*stage_keys, "scale_schedule_from") if k in values}
    fields = {k: v for k, v in values.items() if k not in stage}
    for key in fixed or {}:
        if key in fields:
            raise ConfigError(f"{section}.{key}: set by the stage here, not in params.yaml")
    fields.update(fixed or {})
    reference = stage.get("scale_schedule_from")
    if reference is None:
        return config_from_mapping(cls, fields, section), stage
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 1:
        raise ConfigError(
            f"{section}.scale_schedule_from: must be a positive integer (or null), got {reference!r}")
    iterations = fields.get("iterations")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"{section}.iterations: must be a positive integer, got {iterations!r}")
    cfg = config_from_mapping(cls, {**fields, "iterations": reference}, section)
    return cfg.scaled_to(iterations), stage


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


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    """rank1, mAP, mINP (fractions) of a run's last evaluation, for `dvc metrics`."""
    clean = finite(metrics)
    return {name: round(clean[name], 6) for name in ("rank1", "mAP", "mINP") if name in clean}


def view_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri}" if _is_http(uri) else f"mlflow ui --backend-store-uri {uri}"


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (a killed `dvc repro`, a CI timeout) into KeyboardInterrupt, so that `tracked_run`
    ends the MLflow run as KILLED instead of leaving it RUNNING for ever."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, handler)


RUN_ID_FILE = "mlflow_run_id"


def link_previous_run(client: Any, folder: Path, run_id: str) -> str | None:
    """Remember `run_id` in a training work dir; return the run that worked there before, if any.

    When a run is resumed from that folder's checkpoints, the earlier (interrupted) run is tagged as
    resumed by the new one, and ended KILLED if a hard kill left it RUNNING.
    """
    marker = folder / RUN_ID_FILE
    previous = marker.read_text().strip() if marker.is_file() else None
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_id + "\n")
    if not previous or previous == run_id:
        return None
    with contextlib.suppress(Exception):  # the old run may live in another store: nothing to fix there
        if client.get_run(previous).info.status == "RUNNING":
            client.set_terminated(previous, "KILLED")
        client.set_tag(previous, "dgnet.resumed_by_run", run_id)
    client.set_tag(run_id, "dgnet.resumed_from_run", previous)
    return previous
