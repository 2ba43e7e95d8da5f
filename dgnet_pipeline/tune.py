"""`dgnet tune` (and `python -m dgnet_pipeline.tune`, the DVC entry tuning/dvc.yaml): an Optuna study of
DG-Net's loss weights, every trial a short training run tracked in MLflow.

A trial trains params `tune.base` changed by `tune.train` with the `tune.space` weights TPE samples and
scores `tune.metric` on a validation split of the training ids (never the test split), with a teacher
trained on the rest of them (cached in outputs/tuning/). Optuna: an RDBStorage with heartbeats whose
stale trials RetryHeartbeatStaleTrialCallback re-queues with the same weights (also a trial stopped by
Ctrl-C or a tracking outage), resumed from checkpoints/tune-<study>-*; create_study(load_if_exists=True),
study.optimize with MaxTrialsCallback until `n_trials` trials are finished (complete or pruned); a TPE
sampler seeded per trial number (one worker, one seed: the same trials, resumed or not). MLflow: a
parent run per study, a child per trial attempt.
Exit codes: 0 done; 1 a test image in a trial's data; 2 bad params, data, storage or tracking store, a
study resumed with other settings, too many failed trials; 130 interrupted (re-run to go on)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from dgnet.config import PrunerConfig, TuneConfig, section_config
from dgnet.data.splits import SPLIT_ATTR, benchmark_rows, check_no_test_images, validation_split
from dgnet.errors import ConfigError, DgnetError
from dgnet.io import atomic_dir, atomic_path, write_json
from dgnet.losses import NonFiniteLossError
from dgnet.profiles import STAGE_KEYS, apply_assignments, merge, resolve_params
from dgnet.training.hooks import TrainingResult
from dgnet_pipeline import tracking
from dgnet_pipeline import workspace as ws
from dgnet_pipeline.common import TEACHER_INDEX, load_params, parse_seeds, section, teacher_paths
from dgnet_pipeline.mlflow_hooks import MlflowHooks, flatten, metrics_summary, mlflow_settings
from dgnet_pipeline.mlflow_runs import ensure_experiment, link_previous_run, run_tags, tracked_run
from dgnet_pipeline.tracking import TrackingError, redact, short

STAGE = "tune"  # the params section; the runs' dgnet.stage and dgnet.variant
SCORE_SPLIT, VALIDATION_PREFIX = "validation", "val/"  # what tuning figures are scored on; their prefix
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTINGS_ATTR, PARENT_ATTR = "dgnet.settings", "dgnet.mlflow_parent_run_id"  # study user attributes
MAX_FAILURES_IN_A_ROW, LOCK_TIMEOUT_S = 3, 300
WAITING = "tune: another worker is opening the study; waiting for it"
DEFAULT_METRICS, TEACHER_ROOT = Path("reports/metrics/tune.json"), Path("outputs/tuning")


class StorageError(DgnetError):
    """The Optuna storage cannot be opened; the message names its URL (password hidden)."""


def check_storage(url: str) -> tuple[str, str | None]:
    """(backend, SQLite file or None), or StorageError: not a SQLAlchemy URL, a SQLite file in a
    missing folder, a database server that does not answer within seconds."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)}: not a SQLAlchemy URL (e.g. sqlite:///optuna.db, "
                           f"postgresql+psycopg://user:password@host/db)") from exc
    backend = parsed.get_backend_name()
    database = parsed.database if backend == "sqlite" and parsed.database not in ("", ":memory:") else None
    if database and not Path(database).parent.is_dir():
        raise StorageError(f"Optuna storage {url}: the folder {Path(database).parent} does not exist")
    if backend != "sqlite":
        tracking.check_database(url, "Optuna storage", error=StorageError)
    return backend, database


@contextlib.contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Held while a worker opens the storage, the study, its settings and its MLflow parent run: Optuna's
    table creation is not safe against a concurrent one, and neither Optuna's user attributes (upserts)
    nor MLflow (no create-if-absent) can elect one parent among workers started together. PostgreSQL:
    an advisory lock (the server releases it if the worker dies); SQLite: a filelock beside the file;
    other backends: none (start workers one by one)."""
    from filelock import FileLock, Timeout

    backend, database = check_storage(url)
    with contextlib.ExitStack() as held:
        try:
            if backend == "postgresql":
                import sqlalchemy
                from sqlalchemy.pool import NullPool

                engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                                  connect_args={"connect_timeout": 10})
                session = held.enter_context(engine.connect())
                session.execution_options(isolation_level="AUTOCOMMIT")
                session.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
                if not session.exec_driver_sql("SELECT pg_try_advisory_lock(74121)").scalar():
                    print(WAITING, flush=True)
                    session.exec_driver_sql("SELECT pg_advisory_lock(74121)")  # closing the session frees it
            elif database:
                lock = FileLock(f"{database}.lock", timeout=LOCK_TIMEOUT_S)
                try:
                    lock.acquire(blocking=False)
                except Timeout:
                    print(WAITING, flush=True)
                    lock.acquire()
                held.callback(lock.release)
        except Exception as exc:
            raise StorageError(f"Optuna storage {redact(url)}: no start-up lock within {LOCK_TIMEOUT_S} s "
                               f"(is another worker hanging?): {short(exc)}") from exc
        yield


class PerTrialSeedTPESampler(optuna.samplers.BaseSampler):
    """A TPESampler(seed=hash(seed, trial number)) for each trial. TPESampler(seed) seeds once per
    process, so a resumed study would draw its start-up points from the start of the same sequence
    again; here trial k draws from the same state whatever process runs it."""

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed, self.n_startup_trials, self.number, self.tpe = seed, n_startup_trials, None, None

    def sampler(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number != self.number:
            state = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
            self.number = trial.number
            self.tpe = optuna.samplers.TPESampler(seed=state, n_startup_trials=self.n_startup_trials)
        return self.tpe

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self.sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: dict) -> dict[str, Any]:
        return self.sampler(trial).sample_relative(study, trial, space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any) -> Any:
        return self.sampler(trial).sample_independent(study, trial, name, dist)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler(trial).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self.sampler(trial).after_trial(study, trial, state, values)


def make_pruner(pruner: PrunerConfig) -> optuna.pruners.BasePruner:
    steps = {"n_warmup_steps": pruner.n_warmup_steps, "interval_steps": pruner.interval_steps}
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials, **steps)
    if pruner.kind == "threshold":
        return optuna.pruners.ThresholdPruner(lower=pruner.lower, **steps)
    return optuna.pruners.NopPruner()


def retry(cfg: TuneConfig) -> RetryHeartbeatStaleTrialCallback:
    """Re-queues a trial with its weights and intermediate values, at most `max_retry` times."""
    return RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry, inherit_intermediate_values=True)


def open_study(url: str, cfg: TuneConfig, key: Mapping[str, Any]) -> tuple[optuna.Study, RDBStorage]:
    """The study (created or loaded; its settings must be `key`) and its storage; under `startup_lock`."""
    heartbeat = {"heartbeat_interval": cfg.heartbeat_interval, "grace_period": cfg.grace_period,
                 "heartbeat_stale_trial_callback": retry(cfg)} if cfg.heartbeat_interval else {}
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        storage = RDBStorage(url, engine_kwargs=engine, **heartbeat)
        study = optuna.create_study(storage=storage, study_name=cfg.study, direction="maximize",
                                    load_if_exists=True, pruner=make_pruner(cfg.pruner),
                                    sampler=PerTrialSeedTPESampler(cfg.seed, cfg.sampler.n_startup_trials))
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)} cannot be opened (check the path, the server and "
                           f"the credentials): {short(exc)}") from exc
    text, stored = json.dumps(key, sort_keys=True, default=str), study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, text)
    elif stored != text:
        before, now = json.loads(stored), json.loads(text)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)) or ["?"]
        raise ConfigError(f"study {cfg.study!r} in {redact(url)} was started with other settings (changed: "
                          f"{', '.join(changed)}); resume it with those, or give this search another name "
                          f"(--study NAME, params tune.study)")
    return study, storage


def trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states or None)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    return study.best_trial if trials(study, TrialState.COMPLETE) else None


@dataclasses.dataclass
class Context:
    """What every trial needs. `frame`: the validation split; `test`: the manifest's query and gallery
    rows, for the guard (check_no_test_images) only; `fingerprint`: data, split and teacher, part of
    the checkpoint folders' key; `teacher`: (its config, its cache folder), None when no trial needs one."""

    workspace: Path
    cfg: TuneConfig
    base_values: dict[str, Any]  # the base section with tune.train applied
    frame: Any
    test: Any
    model_cfg: Any
    teacher: tuple[Any, Path] | None
    extra_params: dict[str, Any]
    fingerprint: dict[str, Any]
    teachers: list[Path] = dataclasses.field(default_factory=list)

    @property
    def split(self) -> dict[str, Any]:
        return self.frame.attrs[SPLIT_ATTR]


class TrialHooks(MlflowHooks):
    """A trial's MlflowHooks: the worker's line when it starts, the metric reported to Optuna at each
    evaluation (TrialPruned when the pruner says so, never at the end), the model only with
    `tune.log_models`."""

    def __init__(self, *args: Any, trial: optuna.Trial, history: Sequence[int], sampled: Mapping[str, float],
                 cfg: TuneConfig, iterations: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial, self.history, self.sampled, self.cfg = trial, history, sampled, cfg
        self.iterations = iterations

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        where = f"resuming at iteration {start_iteration}" if start_iteration else "from iteration 0"
        weights = ", ".join(f"{k} {v:.4g}" for k, v in self.sampled.items())
        what = f"re-runs trial {self.history[-1]} (same weights), {where}" if self.history else (
            f"starts {where} with {weights}")
        print(f"tune: trial {self.trial.number} {what}", flush=True)
        super().on_start(kind, config, start_iteration)

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        super().on_evaluation(iteration, metrics)
        if (value := metrics.get(self.cfg.metric)) is None or not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a resumed retry re-reports inherited steps: ignored, fine
            warnings.simplefilter("ignore", UserWarning)
            self.trial.report(float(value), int(iteration))
        if iteration < self.iterations and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.cfg.metric} {value:.4f} at iteration {iteration}")

    def log_model(self, result: TrainingResult) -> Any:
        return super().log_model(result) if self.cfg.log_models else None


def requeue(study: optuna.Study, number: int, cfg: TuneConfig) -> None:
    """Re-queue running trial `number`, which this process stopped (not its weights), with `retry`."""
    try:
        trial = next(t for t in trials(study, TrialState.RUNNING) if t.number == number)
        if len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) >= cfg.max_retry:
            print(f"tune: trial {number} not re-queued: its weights were re-run tune.max_retry "
                  f"({cfg.max_retry}) times already", flush=True)
            return
        retry(cfg)(study, trial)
    except Exception as exc:  # the storage may be what broke; why the trial stopped matters more
        print(f"tune: warning: could not re-queue trial {number}: {short(exc, 160)}", file=sys.stderr)
        return
    print(f"tune: trial {number} re-queued with the same weights (a re-run resumes from its last "
          f"checkpoint)", flush=True)


def objective(ctx: Context, tracker: StudyTracker) -> Any:
    """Optuna's objective: train one configuration, return its final metric (pruned on the way)."""
    from dgnet.config import DGNetTrainConfig
    from dgnet.training import trainer

    cfg = ctx.cfg

    def run(trial: optuna.Trial) -> float:
        check_no_test_images(ctx.frame, ctx.test, "tuning")  # a refused trial fails, not re-queued
        started, outcome, stopped = time.monotonic(), "FAIL", False
        sampled = {k.name: trial.suggest_float(k.name, k.low, k.high, log=k.log) for k in cfg.space}
        history = next(RetryHeartbeatStaleTrialCallback.retry_history(t)
                       for t in trials(trial.study, TrialState.RUNNING) if t.number == trial.number)
        schedule = {t: sampled[k.name] for k in cfg.space for t in k.targets}
        train_cfg = ws.train_config(DGNetTrainConfig, merge(ctx.base_values, {"schedule": schedule}),
                                    f"tune (from {cfg.base})", STAGE_KEYS["train"])[0]
        folder = ws.work_dir(ctx.workspace, f"tune-{cfg.study}",
                             {"model": ctx.model_cfg, "train": train_cfg, **ctx.fingerprint})
        try:
            with tracker.trial_run(trial, sampled, history) as run_id:
                hooks = TrialHooks(tracker.client, run_id, variant=STAGE, extra_params=ctx.extra_params,
                                   eval_prefix=VALIDATION_PREFIX, trial=trial, history=history,
                                   sampled=sampled, cfg=cfg, iterations=train_cfg.iterations)
                try:
                    result = trainer.train_dgnet(ctx.frame, ctx.model_cfg, train_cfg, ctx.teachers, folder,
                                                 hooks=[hooks], resume=True)
                    value = float(result.metrics[cfg.metric])
                    hooks.on_iteration(train_cfg.iterations, {"optuna/value": value})
                finally:
                    hooks.close()
            outcome = f"COMPLETE, {cfg.metric} {value:.4f}"
            return value
        except (optuna.TrialPruned, NonFiniteLossError) as exc:  # the trial's own outcome
            outcome = f"{'PRUNED' if isinstance(exc, optuna.TrialPruned) else 'FAIL'} ({short(exc, 120)})"
            raise
        except BaseException as exc:  # interrupted, or broken from outside: re-run from its checkpoint
            stopped = True
            outcome = f"stopped ({type(exc).__name__}{': ' + short(exc, 120) if str(exc) else ''})"
            raise
        finally:
            if not stopped:
                shutil.rmtree(folder, ignore_errors=True)
            print(f"tune: trial {trial.number} {outcome} after {time.monotonic() - started:.0f} s",
                  flush=True)
            if stopped:
                requeue(trial.study, trial.number, cfg)

    return run


def run_trials(study: optuna.Study, func: Any, cfg: TuneConfig) -> None:
    """study.optimize until `n_trials` trials are finished and none waits to be re-run (with several
    workers each stops there, so up to workers - 1 more may finish: MaxTrialsCallback's way); then wait
    for trials running elsewhere (a grace period and a heartbeat at most), re-running those that die."""
    failures: list[int] = []

    def failed_in_a_row(study: optuna.Study, trial: FrozenTrial) -> None:
        failures[:] = [*failures, trial.number] if trial.state == TrialState.FAIL else []
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            study.stop()

    deadline = None
    while True:
        if cfg.heartbeat_interval:
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed and re-queued
        if len(trials(study, *FINISHED)) < cfg.n_trials or trials(study, TrialState.WAITING):
            study.optimize(func, catch=(NonFiniteLossError,),
                           callbacks=[MaxTrialsCallback(cfg.n_trials, states=FINISHED), failed_in_a_row])
            if len(failures) >= MAX_FAILURES_IN_A_ROW:
                raise DgnetError(f"study {cfg.study!r}: {len(failures)} trials in a row failed (non-finite "
                                 f"losses); narrow tune.space, e.g. lower the `high` of the largest weights")
            deadline = None
        elif not cfg.heartbeat_interval or not trials(study, TrialState.RUNNING) or (
                deadline is not None and time.monotonic() >= deadline):
            return
        elif deadline is None:
            wait = (cfg.grace_period or 2 * cfg.heartbeat_interval) + cfg.heartbeat_interval
            deadline = time.monotonic() + wait
            print(f"tune: waiting up to {wait} s for trials running elsewhere", file=sys.stderr)
        else:
            time.sleep(cfg.heartbeat_interval)


@dataclasses.dataclass
class StudyTracker:
    """The study's MLflow runs: the parent (recorded in the study, found again on resume), one child per
    trial attempt and the tuning teacher's. Client errors become TrackingError naming the store."""

    client: Any
    experiment_id: str
    study: str
    tags: dict[str, str]
    parent_id: str | None = None
    storage: RDBStorage | None = None

    @contextlib.contextmanager
    def store(self, what: str) -> Iterator[None]:
        try:
            yield
        except DgnetError:
            raise
        except Exception as exc:
            raise TrackingError(f"MLflow at {redact(str(self.client.tracking_uri))}: could not {what}: "
                                f"{short(exc)}") from exc

    def open_parent(self, study: optuna.Study, params: Mapping[str, Any], storage: str) -> None:
        """The run the study remembers, set RUNNING; else a new one, recorded (under the start-up lock)."""
        with self.store("open the study's parent run"):
            run_id = study.user_attrs.get(PARENT_ATTR)
            with contextlib.suppress(Exception):  # another store, or deleted: a new parent
                if run_id and self.client.get_run(run_id).info.lifecycle_stage == "active":
                    self.client.update_run(run_id, status="RUNNING")
                    self.parent_id = run_id
                    return
            tags = {**self.tags, "dgnet.kind": "study", "dgnet.variant": STAGE, "optuna.study": self.study,
                    "optuna.storage": storage}
            self.parent_id = self.client.create_run(self.experiment_id, run_name=f"tune-{self.study}",
                                                    tags=tags).info.run_id
            MlflowHooks(self.client, self.parent_id).log_params(params)
            study.set_user_attr(PARENT_ATTR, self.parent_id)

    @contextlib.contextmanager
    def trial_run(self, trial: optuna.Trial, sampled: Mapping[str, float], history: Sequence[int]
                  ) -> Iterator[str]:
        """A child run `trial-NNNN`, ended FINISHED (complete), KILLED (pruned, interrupted, a tracking
        outage) or FAILED, tagged `optuna.state`; the runs of the attempts it re-runs (`history`) are
        ended KILLED if left RUNNING and point at it (`optuna.rerun_as`; its `optuna.retry_of`)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(self.study), trial.number)
        tags = {**self.tags, "dgnet.kind": "dgnet", "dgnet.variant": STAGE, "optuna.study": self.study,
                "optuna.trial_number": str(trial.number), "optuna.trial_id": str(trial_id),
                **({"optuna.retry_of": str(history[-1])} if history else {})}
        with tracked_run(self.client, self.experiment_id, f"trial-{trial.number:04d}", tags,
                         parent_run_id=self.parent_id, killed_by=(optuna.TrialPruned, TrackingError)) as run:
            run_id, state = run.info.run_id, "FAIL"
            trial.set_user_attr("mlflow_run_id", run_id)
            with self.store(f"retire the earlier attempts of trial {trial.number}"):
                for number in history:
                    query = (f"tags.`optuna.study` = '{self.study}' and tags.`optuna.trial_number` = "
                             f"'{number}' and tags.`mlflow.parentRunId` = '{self.parent_id}'")
                    for old in self.client.search_runs([self.experiment_id], query):
                        if old.info.status == "RUNNING":
                            self.client.set_terminated(old.info.run_id, "KILLED")
                        self.client.set_tag(old.info.run_id, "optuna.state", "FAIL")
                        self.client.set_tag(old.info.run_id, "optuna.rerun_as", str(trial.number))
            hooks = MlflowHooks(self.client, run_id)
            hooks.log_params({f"tune.{k}": v for k, v in sampled.items()})
            try:
                yield run_id
                state = "COMPLETE"
                hooks.set_tags({"optuna.state": state})  # a failure re-queues the trial
            except optuna.TrialPruned:
                state = "PRUNED"
                raise
            finally:
                if state != "COMPLETE":  # one attempt: the store may be why the trial stopped
                    try:
                        self.client.set_tag(run_id, "optuna.state", state)
                    except Exception as exc:
                        print(f"tune: warning: could not tag MLflow run {run_id} {state}: {short(exc, 160)}",
                              file=sys.stderr)

    def summarize(self, study: optuna.Study, n_trials: int) -> None:
        """On the parent: best weights and value (`best/...`, step = finished trials), trial counts,
        Optuna's plots (PNG) and trials.csv."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots

        counts = {s.name.lower(): len(trials(study, s)) for s in TrialState}
        metrics = {f"trials/{name}": n for name, n in counts.items() if name != "waiting"}
        if (best := best_trial(study)) is not None:
            metrics.update({"best/value": best.value, "best/trial_number": best.number,
                            **{f"best/{k}": v for k, v in best.params.items()}})
            self.client.set_tag(self.parent_id, "optuna.best_trial", str(best.number))
        hooks = MlflowHooks(self.client, self.parent_id)
        hooks.on_iteration(counts["complete"] + counts["pruned"], metrics)
        hooks.flush()
        self.client.set_tag(self.parent_id, "optuna.n_trials", str(n_trials))
        if study.trials:
            self.client.log_text(self.parent_id, study.trials_dataframe().to_csv(index=False), "trials.csv")
        for name, needed in [("optimization_history", 1), ("intermediate_values", 1),
                             ("param_importances", 2)]:
            if counts["complete"] < needed:  # importances need two complete trials
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    axes = getattr(plots, f"plot_{name}")(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as exc:
                print(f"tune: plot {name} skipped: {short(exc)}", file=sys.stderr)
                continue
            figure = np.ravel(axes)[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            try:
                self.client.log_figure(self.parent_id, figure, f"plots/{name}.png")
            finally:
                plt.close(figure)

    def end_parent(self, study: optuna.Study, status: str) -> None:
        """End the parent run, unless another worker still runs a trial of the study."""
        if status == "FINISHED" or not trials(study, TrialState.RUNNING):
            self.client.set_terminated(self.parent_id, status)


def teacher_recipe(values: Mapping[str, Any], key: dict[str, Any]) -> tuple[Any, Path]:
    """params `teacher`, deterministic, with its first seed (a trial learns from one teacher), and its
    cache folder, named by the hash of it, the model, the manifest and the split (`key`)."""
    from dgnet.config import TeacherTrainConfig

    values = {k: v for k, v in values.items() if k != "deterministic"}
    seed = parse_seeds(values)[0]
    cfg = ws.train_config(TeacherTrainConfig, values, "teacher", ("seeds",),
                          fixed={"seed": seed, "deterministic": True})[0]
    digest = hashlib.sha256(json.dumps({**key, "teacher": {seed: cfg}}, sort_keys=True, default=str).encode())
    return cfg, TEACHER_ROOT / f"teacher-{digest.hexdigest()[:12]}"


def ensure_teacher(ctx: Context, tracker: StudyTracker) -> list[Path]:
    """The tuning teacher: cached, or trained now on the tuning-train split (by one worker of the
    workspace at a time: a filelock) in a child run of the study's parent, published atomically."""
    from filelock import FileLock

    from dgnet.training.teacher_trainer import train_teacher

    cfg, relative = ctx.teacher
    folder, name, split = ctx.workspace / relative, f"tuning-teacher-seed{cfg.seed}", ctx.split
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / TEACHER_INDEX).is_file():
            print(f"tune: teacher of the tuning split: {relative} (cached)", flush=True)
            return teacher_paths(ctx.workspace, relative)
        check_no_test_images(ctx.frame, ctx.test, "the tuning teacher")
        print(f"tune: training the teacher of the tuning split ({split['train_ids']} ids, "
              f"{split['train_images']} images) into {relative}", flush=True)
        run_dir = ws.work_dir(ctx.workspace, name, {"teacher": relative.name})
        variant = f"tune-teacher-seed{cfg.seed}"
        tags = {**tracker.tags, "dgnet.kind": "teacher", "dgnet.variant": variant,
                "optuna.study": tracker.study}
        with tracked_run(tracker.client, tracker.experiment_id, name, tags,
                         parent_run_id=tracker.parent_id) as run:
            link_previous_run(tracker.client, run_dir, run.info.run_id)
            hooks = MlflowHooks(tracker.client, run.info.run_id, variant=variant,
                                eval_prefix=VALIDATION_PREFIX,
                                extra_params={**ctx.extra_params, "teacher.seeds": [cfg.seed]})
            try:
                result = train_teacher(ctx.frame, ctx.model_cfg, cfg, run_dir, hooks=[hooks], resume=True)
            finally:
                hooks.close()
        metrics = metrics_summary(result.metrics)
        with atomic_dir(folder) as tmp:
            (tmp / f"seed{cfg.seed}").mkdir()
            shutil.copy2(result.model_path, tmp / f"seed{cfg.seed}" / "model.pt")
            entry = {"seed": cfg.seed, "path": f"seed{cfg.seed}/model.pt", "iterations": result.iterations,
                     "metrics": metrics, "score_split": SCORE_SPLIT, "mlflow_run_id": run.info.run_id}
            write_json(tmp / TEACHER_INDEX, {"kind": "teacher", "trained_on": "tuning split", "split": split,
                                             "teachers": [entry]})
        ws.remove_work_dirs(ctx.workspace, name)
        print(f"tune: tuning teacher trained ({', '.join(f'val {k} {v:.4f}' for k, v in metrics.items())})",
              flush=True)
    return teacher_paths(ctx.workspace, relative)


def prepare(args: argparse.Namespace) -> tuple[Context, dict[str, Any]]:
    """Params (`tune` after --set and the options), data, split and teacher recipe, checked before
    anything is opened or trained: the trials' context and the study's settings key."""
    from dgnet.config import DGNetTrainConfig

    workspace = tracking.workspace_root()
    params = resolve_params(load_params(workspace))
    values = apply_assignments(section(params, STAGE), args.assignments, STAGE)
    options = {"study": args.study, "n_trials": args.n_trials, "seed": args.seed, "storage": args.storage,
               "heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period,
               "out": args.out}
    values.update({k: v for k, v in options.items() if v is not None})
    cfg = section_config(TuneConfig, {STAGE: values}, STAGE)
    mlflow_settings(params)  # checked here; read again when tracking starts
    base_values = merge(section(params, cfg.base), cfg.train)
    base_cfg = ws.train_config(DGNetTrainConfig, base_values, f"tune (from {cfg.base})",
                               STAGE_KEYS["train"])[0]
    manifest_file = ws.manifest_path(params, workspace)
    manifest = ws.read_manifest(manifest_file, ws.report_path(params, workspace))
    frame = validation_split(manifest, cfg.validation_fraction, cfg.validation_seed)
    test = benchmark_rows(manifest)[["path", "person_id"]]  # for the guard only: never opened
    check_no_test_images(frame, test, "tuning")
    split, md5 = frame.attrs[SPLIT_ATTR], ws.file_md5(manifest_file)
    model_cfg = ws.model_config(params, frame)
    teacher = None  # it enters the settings by its recipe, so they are checked before it trains
    if base_cfg.needs_teacher() or any("primary_max" in k.targets for k in cfg.space):
        teacher = teacher_recipe(section(params, "teacher"), {"model": model_cfg, "manifest": md5,
                                                              "split": dict(split)})
    teacher_key = teacher[1].name if teacher is not None else None
    extra = {"profile": params["profile"], "stage.section": cfg.base, "data.manifest": str(manifest_file),
             "data.manifest_md5": md5, "data.score_split": SCORE_SPLIT, "optuna.study": cfg.study,
             "data.validation_fraction": split["fraction"], "data.validation_seed": split["seed"],
             **{f"data.{k}": split[k] for k in ("validation_ids", "query_images", "gallery_images",
                                                "train_images", "train_ids")}}
    ctx = Context(workspace, cfg, base_values, frame, test, model_cfg, teacher, extra,
                  {"manifest": md5, "validation": split["query_sha256"], "teachers": teacher_key})
    # Not the searched schedule fields (applying tuned weights keeps the study), nor n_trials (it grows).
    searched = {t for k in cfg.space for t in k.targets}
    schedule = {k: v for k, v in (base_values.get("schedule") or {}).items() if k not in searched}
    key = {"space": [dataclasses.asdict(k) for k in cfg.space], "metric": cfg.metric, "seed": cfg.seed,
           "base": cfg.base, "train": {**base_values, "schedule": schedule}, "manifest": md5,
           "validation": split, "teachers": teacher_key, "model": model_cfg}
    return ctx, key


def tune(args: argparse.Namespace) -> int:
    started = time.monotonic()
    ctx, key = prepare(args)
    cfg, url = ctx.cfg, tracking.absolute_sqlite(ctx.cfg.storage)
    check_storage(url)  # an unreachable storage or tracking store is said at once
    client = tracking.connect(uri := tracking.tracking_uri())
    experiment_id = ensure_experiment(client, mlflow_settings(load_params(ctx.workspace)).experiment,
                                      tracking.artifact_location(uri))
    tags = {**run_tags(STAGE, "dgnet", STAGE, "dgnet_pipeline/tune.py", ctx.workspace),
            "dgnet.score_split": SCORE_SPLIT}
    tracker = StudyTracker(client, experiment_id, cfg.study, tags)
    space = {k.name: {"low": k.low, "high": k.high, "log": k.log, "also": list(k.also)} for k in cfg.space}
    params = {"seed": cfg.seed, "metric": cfg.metric, "base": cfg.base, "train": dict(cfg.train),
              "space": space, "sampler.n_startup_trials": cfg.sampler.n_startup_trials,
              "pruner": dataclasses.asdict(cfg.pruner), "score_split": SCORE_SPLIT,
              "validation": dict(ctx.split)}
    with startup_lock(url):
        study, tracker.storage = open_study(url, cfg, key)
        tracker.open_parent(study, {STAGE: params}, redact(url))
    print(f"tune: study {cfg.study!r} in {redact(url)}: {len(trials(study, *FINISHED))} of {cfg.n_trials} "
          f"trials finished", flush=True)
    status, summarize = "FAILED", True
    try:
        if ctx.teacher is not None:
            ctx.teachers = ensure_teacher(ctx, tracker)
        run_trials(study, objective(ctx, tracker), cfg)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except TrackingError:
        summarize = False  # the store is away: the next run summarizes the study and ends the parent
        raise
    finally:
        for what, step, arg in (("summarize the study in MLflow", tracker.summarize, cfg.n_trials),
                                ("end the MLflow parent run", tracker.end_parent, status)):
            try:  # a warning only: it must not hide why the study stopped
                if summarize:
                    step(study, arg)
            except Exception as exc:
                print(f"dgnet tune: warning: could not {what}: {short(exc)}", file=sys.stderr)
    return report(study, ctx, args, tracker, time.monotonic() - started)


def report(study: optuna.Study, ctx: Context, args: argparse.Namespace, tracker: StudyTracker,
           seconds: float) -> int:
    """params/tuned.yaml (params.yaml's layout), the metrics JSON and a summary on stdout: every
    figure comes from the validation split (`score_split`)."""
    cfg, split, workspace = ctx.cfg, ctx.split, ctx.workspace
    counts = {s.name.lower(): len(trials(study, s)) for s in (*FINISHED, TrialState.FAIL)}
    summary: dict[str, Any] = {"metric": cfg.metric, "score_split": SCORE_SPLIT, **counts, "validation": {
        k: v for k, v in split.items() if k not in ("held_out_ids", "query_sha256")}}
    if not trials(study, TrialState.RUNNING):
        ws.remove_work_dirs(workspace, f"tune-{cfg.study}")
    if (best := best_trial(study)) is None:
        write_json(workspace / args.metrics, summary)
        print(f"tune: no complete trial in study {cfg.study!r} ({counts}); no tuned weights written")
        return 0
    summary.update({"best_value": round(float(best.value), 6), "best_trial": best.number,
                    **{f"best_{k}": v for k, v in best.params.items()}})
    schedule = {t: float(best.params[k.name]) for k in cfg.space for t in k.targets}
    exp_line = "dvc exp run " + " ".join(f"-S {cfg.base}.schedule.{k}={v!r}" for k, v in schedule.items())
    finished = len(trials(study, *FINISHED))
    header = (f"# The best loss weights of Optuna study {cfg.study!r}: trial {best.number} of {finished} "
              f"finished, final {cfg.metric} {best.value:.6f} on the validation split\n"
              f"# (tune.validation_fraction of the training ids held out; never the test split).\n"
              f"# Written by `dgnet tune`; make the pipeline use them (then `dvc repro` retrains):\n"
              f"#   dgnet tune --apply {Path(cfg.out).as_posix()}\n"
              f"# or try them as a DVC experiment without touching params.yaml:\n#   {exp_line}\n")
    tuned = {"tuned": {"study": cfg.study, "trial": best.number, "metric": cfg.metric,
                       "value": float(best.value), "score_split": SCORE_SPLIT, "finished_trials": finished},
             cfg.base: {"schedule": schedule}}
    with atomic_path(out := workspace / cfg.out) as tmp:  # an absolute `out` stays itself
        tmp.write_text(header + yaml.safe_dump(tuned, sort_keys=False))
    write_json(workspace / args.metrics, summary)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in best.params.items())
    print(f"tune: {counts} after {seconds:.0f} s; best trial {best.number}: {SCORE_SPLIT} {cfg.metric} "
          f"{best.value:.4f} with {shown} ({split['validation_ids']} held-out training ids, "
          f"{split['query_images']} queries, {split['gallery_images']} gallery images; the test split's "
          f"figures come from `dvc repro` after --apply)")
    print(f"tuned weights: {out}; use them with `dgnet tune --apply {cfg.out}` (or: {exp_line}); MLflow "
          f"parent run {tracker.parent_id} (view: {tracking.view_hint(tracker.client.tracking_uri)})")
    return 0


def apply_tuned(tuned: Path, params_file: Path) -> list[str]:
    """Copy a tuned file's weights into params.yaml (comments and layout kept, atomic); the result must
    still build the training configuration. Returns the changes as `key: old -> new`."""
    from ruamel.yaml import YAML

    from dgnet.config import DGNetTrainConfig

    editor = YAML()  # round-trip: comments, order and quoting of params.yaml survive
    editor.indent(mapping=2, sequence=4, offset=2)
    editor.width, editor.preserve_quotes = 4096, True  # `amp: "off"` must not become the boolean off
    editor.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null",
                                                                                   "null"))
    try:
        values, document = yaml.safe_load(tuned.read_text()), editor.load(params_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--apply {tuned}: cannot read it or {params_file} ({short(exc)})") from exc
    sections = {k: v for k, v in (values or {}).items() if k != "tuned"} if isinstance(values, dict) else {}
    if not sections or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"--apply {tuned}: expected params sections such as `train: schedule: ...`")
    changes = []
    for dotted, value in flatten(sections).items():
        *parents, leaf = dotted.split(".")
        node = document
        for key in parents:  # a section holds only what differs from the profile: add what is missing
            if isinstance(node, Mapping) and node.get(key) is None:
                node[key] = {}
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise ConfigError(f"--apply {tuned}: {params_file} has no `{'.'.join(parents)}` to put {leaf} in")
        changes.append(f"{dotted}: {node.get(leaf, '(default)')} -> {value}")
        node[leaf] = value
    with atomic_path(params_file) as tmp:
        with open(tmp, "w") as handle:
            editor.dump(document, handle)
        updated = resolve_params(yaml.safe_load(tmp.read_text()))
        for name in sections:  # a training section must still build a training configuration
            if name == "train" or {"iterations", "schedule"} <= set(updated.get(name) or {}):
                ws.train_config(DGNetTrainConfig, updated[name], name, STAGE_KEYS["train"])
    return changes


def command(args: argparse.Namespace) -> int:
    """`dgnet tune`: run (or resume) the study, then write the tuned weights and the metrics; or --apply."""
    try:
        if args.apply is None:
            tracking.quiet_mlflow()
            ws.interrupt_on_sigterm()
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
            return tune(args)
        params_file = args.params if args.params is not None else tracking.workspace_root() / "params.yaml"
        changes = apply_tuned(args.apply, params_file)
    except KeyboardInterrupt:
        print("dgnet tune: interrupted; re-run the same command to continue the study", file=sys.stderr)
        return 130
    except TrackingError as exc:
        print(f"dgnet tune: error: {exc}\ndgnet tune: the study stopped; re-run the same command once the "
              f"tracking store is back to continue it", file=sys.stderr)
        return 2
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{params_file}: " + ("; ".join(changes) if changes else "no change"))
    print("now `dvc repro` retrains with these weights")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `dgnet tune` and `python -m dgnet_pipeline.tune`; unset: from params `tune`."""
    add = parser.add_argument
    add("--study", help="study name (params tune.study)")
    add("--n-trials", type=int, help="run until the study has N finished (complete or pruned) trials")
    add("--storage", help="SQLAlchemy URL of the Optuna storage (default sqlite:///optuna.db at the "
                          "repository root; postgresql+psycopg://user:password@host/db for many workers)")
    add("--seed", type=int, help="sampler seed (params tune.seed)")
    add("--heartbeat-interval", type=int, help="seconds between a running trial's heartbeats (0: none)")
    add("--grace-period", type=int, help="seconds without a heartbeat after which a trial is re-queued")
    add("--out", type=Path, help="tuned weights file (params tune.out)")
    add("--metrics", type=Path, default=DEFAULT_METRICS, help="summary JSON (dvc metrics)")
    add("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of params `tune` (dotted, YAML value), e.g. train.iterations=50")
    add("--apply", type=Path, metavar="TUNED_YAML", help="instead of tuning: copy a tuned file's weights "
                                                         "into params.yaml")
    add("--params", type=Path, help="with --apply: the params file to change")
    parser.set_defaults(func=command)
    return parser


def add_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `dgnet tune` on the CLI's sub-parsers (entry point group `dgnet.commands`)."""
    return add_arguments(subparsers.add_parser(
        "tune", help="tune DG-Net's loss weights with a resumable Optuna study tracked in MLflow",
        description=__doc__.split("\n\n")[0].replace("\n", " ")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgnet_pipeline.tune",
                                     description=__doc__.splitlines()[0])
    return command(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
