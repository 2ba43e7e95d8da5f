"""`dgnet tune` (DVC entry: stages/tune.py): an Optuna study of DG-Net's loss weights, each trial a
short training run tracked in MLflow (a parent run per study, a child per trial attempt).

A trial trains params `tune.base` with `tune.train` and the sampled `tune.space` weights, and scores
`tune.metric` on a validation split of the training ids (never the test split), with a teacher trained
on the rest (cached in outputs/tuning/). Workers share the study's RDBStorage; a trial stopped by a dead
worker, Ctrl-C or a tracking outage is re-queued with its weights and resumes from its checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from dgnet.config import DGNetTrainConfig, TuneConfig, build_train_config
from dgnet.data.splits import SPLIT_ATTR, benchmark_rows, check_no_test_images, validation_split
from dgnet.errors import ConfigError, DgnetError
from dgnet.io import atomic_dir, atomic_path, write_json
from dgnet.losses import NonFiniteLossError
from dgnet.profiles import merge, read_params
from dgnet_pipeline import tracking
from dgnet_pipeline import workspace as ws
from dgnet_pipeline.common import TEACHER_INDEX, section, teacher_paths
from dgnet_pipeline.mlflow_hooks import MlflowHooks, flatten, metrics_summary
from dgnet_pipeline.mlflow_runs import link_previous_run, run_tags, tracked_run
from dgnet_pipeline.tracking import TrackingError, one_attempt, redact, short

STAGE = "tune"  # the params section; the runs' dgnet.stage and dgnet.variant
SCORE_SPLIT, VALIDATION_PREFIX = "validation", "val/"  # what tuning figures are scored on; their prefix
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTINGS_ATTR, PARENT_ATTR = "dgnet.settings", "dgnet.mlflow_parent_run_id"  # study user attributes
OUTCOME_ATTR = "dgnet.outcome"  # a trial's: why it was pruned or failed
MAX_FAILURES_IN_A_ROW, LOCK_TIMEOUT_S, ADVISORY_LOCK = 3, 300, 74121
retry = functools.partial(RetryHeartbeatStaleTrialCallback, inherit_intermediate_values=True)  # (max_retry)
WAITING = "tune: another worker is opening the study; waiting for it"


class StorageError(DgnetError):
    """The Optuna storage cannot be opened; the message names its URL (password hidden)."""


@contextlib.contextmanager
def startup_lock(url: str) -> Iterator[None]:
    """Held while a worker opens the storage, the study and its MLflow parent run: Optuna's table creation
    is not safe against a concurrent one, and MLflow cannot elect one parent among workers started
    together. PostgreSQL: an advisory lock (freed if the worker dies); SQLite: a filelock; others: none."""
    import sqlalchemy
    from filelock import FileLock, Timeout

    tracking.check_database(url, "Optuna storage", error=StorageError)  # unreachable: said at once
    parsed = sqlalchemy.engine.make_url(url)
    with contextlib.ExitStack() as held:
        try:
            if parsed.get_backend_name() == "postgresql":
                engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                  isolation_level="AUTOCOMMIT")
                sql = held.enter_context(engine.connect()).exec_driver_sql  # closing it frees the lock
                sql(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
                if not sql(f"SELECT pg_try_advisory_lock({ADVISORY_LOCK})").scalar():
                    print(WAITING, flush=True)
                    sql(f"SELECT pg_advisory_lock({ADVISORY_LOCK})")
            elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                lock = FileLock(f"{parsed.database}.lock", timeout=LOCK_TIMEOUT_S)
                try:
                    held.enter_context(lock.acquire(blocking=False))
                except Timeout:
                    print(WAITING, flush=True)
                    held.enter_context(lock.acquire())
        except Exception as exc:
            raise StorageError(f"Optuna storage {redact(url)}: no start-up lock within {LOCK_TIMEOUT_S} s "
                               f"(is another worker hanging?): {short(exc)}") from exc
        yield


class PerTrialSeedTPESampler(optuna.samplers.TPESampler):
    """TPESampler(seed) seeds once per process, so a resumed study would draw its start-up points again:
    each trial re-initialises it (its one public way to set a seed) with (seed, trial number), so trial k
    draws the same in any process."""

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed, self.n_startup_trials = seed, n_startup_trials
        super().__init__(seed=seed, n_startup_trials=n_startup_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        state = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        super().__init__(seed=state, n_startup_trials=self.n_startup_trials)
        super().before_trial(study, trial)


def open_study(url: str, cfg: TuneConfig, key: Mapping[str, Any]) -> tuple[optuna.Study, RDBStorage]:
    """The study (created or loaded; its settings must be `key`) and its storage; under `startup_lock`."""
    heartbeat = {"heartbeat_interval": cfg.heartbeat_interval, "grace_period": cfg.grace_period,
                 "heartbeat_stale_trial_callback": retry(cfg.max_retry)} if cfg.heartbeat_interval else {}
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    pruner = cfg.pruner
    steps = {"n_warmup_steps": pruner.n_warmup_steps, "interval_steps": pruner.interval_steps}
    try:
        storage = RDBStorage(url, engine_kwargs=engine, **heartbeat)
        study = optuna.create_study(
            storage=storage, study_name=cfg.study, direction="maximize", load_if_exists=True,
            sampler=PerTrialSeedTPESampler(cfg.seed, cfg.sampler.n_startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials, **steps)
            if pruner.kind == "median" else optuna.pruners.ThresholdPruner(lower=pruner.lower, **steps)
            if pruner.kind == "threshold" else optuna.pruners.NopPruner())
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)} cannot be opened (check the path, the server and "
                           f"the credentials): {short(exc)}") from exc
    text, stored = json.dumps(key, sort_keys=True, default=str), study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, text)
    elif stored != text:
        before, now = json.loads(stored), json.loads(text)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k)) or ["?"]
        raise ConfigError(f"study {cfg.study!r} in {redact(url)} was started with other settings (changed: "
                          f"{', '.join(changed)}); resume it with those, or give this search another name "
                          f"(--study NAME, params tune.study)")
    return study, storage


def trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states or None)


def running_trial(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in trials(study, TrialState.RUNNING) if t.number == number)


@contextlib.contextmanager
def mlflow_errors(client: Any, what: str) -> Iterator[None]:
    """An MLflow client error in the block becomes TrackingError naming the store."""
    try:
        yield
    except DgnetError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow at {redact(str(client.tracking_uri))}: could not {what}: "
                            f"{short(exc)}") from exc


@dataclasses.dataclass
class Tuning:
    """What the trials share; `fingerprint`: part of the checkpoint folders' key."""

    inputs: ws.StageInputs
    cfg: TuneConfig
    base_values: dict[str, Any]  # the base section with tune.train applied
    frame: Any  # the validation split
    split: dict[str, Any]  # frame.attrs[SPLIT_ATTR]
    model_cfg: Any
    teacher: tuple[Any, Path] | None  # its config and cache folder; None when no trial needs one
    extra_params: dict[str, Any]
    fingerprint: dict[str, Any]
    tags: dict[str, str]
    parent_id: str | None = None
    storage: RDBStorage | None = None
    teachers: list[Path] = dataclasses.field(default_factory=list)


class TrialHooks(MlflowHooks):
    """A trial's MlflowHooks: a line when it starts, the metric reported to Optuna at each evaluation
    (pruned when the pruner says so, never at the end), the model only with `tune.log_models`."""

    def __init__(self, *args: Any, trial: optuna.Trial, intro: str, cfg: TuneConfig, iterations: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial, self.intro, self.cfg, self.iterations = trial, intro, cfg, iterations

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        where = f"resuming at iteration {start_iteration}" if start_iteration else "from iteration 0"
        print(f"tune: trial {self.trial.number} {self.intro}, {where}", flush=True)
        super().on_start(kind, config, start_iteration)

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        super().on_evaluation(iteration, metrics)
        if (value := metrics.get(self.cfg.metric)) is None or not np.isfinite(value):
            return
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # a retry re-reports its steps
            self.trial.report(float(value), int(iteration))
        if iteration < self.iterations and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.cfg.metric} {value:.4f} at iteration {iteration}")

    def log_model(self, result: Any) -> Any:
        return super().log_model(result) if self.cfg.log_models else None


def retire_attempts(tuning: Tuning, history: list[int], number: int) -> None:
    """The runs of the attempts trial `number` re-runs: KILLED if left RUNNING, tagged FAIL, rerun_as."""
    client = tuning.inputs.client
    with mlflow_errors(client, f"retire the earlier attempts of trial {number}"):
        for old in history:
            query = (f"tags.`optuna.study` = '{tuning.cfg.study}' and tags.`optuna.trial_number` = '{old}' "
                     f"and tags.`mlflow.parentRunId` = '{tuning.parent_id}'")
            for run in client.search_runs([tuning.inputs.experiment_id], query):
                if run.info.status == "RUNNING":
                    client.set_terminated(run.info.run_id, "KILLED")
                client.set_tag(run.info.run_id, "optuna.state", "FAIL")
                client.set_tag(run.info.run_id, "optuna.rerun_as", str(number))


def run_trial(tuning: Tuning, trial: optuna.Trial) -> float:
    """Optuna's objective: train one configuration in child run `trial-NNNN`, return its final metric. A
    trial stopped from outside keeps its checkpoints and is re-queued; its re-run retires the old runs."""
    from dgnet.training import trainer

    cfg, client, number, storage = tuning.cfg, tuning.inputs.client, trial.number, tuning.storage
    sampled = {k.name: trial.suggest_float(k.name, k.low, k.high, log=k.log) for k in cfg.space}
    history = RetryHeartbeatStaleTrialCallback.retry_history(running_trial(trial.study, number))
    schedule = {t: sampled[k.name] for k in cfg.space for t in k.targets}
    train_cfg, _ = build_train_config(DGNetTrainConfig, merge(tuning.base_values, {"schedule": schedule}),
                                      f"tune (from {cfg.base})")
    folder = ws.work_dir(tuning.inputs.workspace, f"tune-{cfg.study}",
                         {"model": tuning.model_cfg, "train": train_cfg, **tuning.fingerprint})
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(cfg.study),
                                                                number)
    tags = {**tuning.tags, "optuna.trial_number": str(number), "optuna.trial_id": str(trial_id),
            **({"optuna.retry_of": str(history[-1])} if history else {})}
    intro = f"re-runs trial {history[-1]} (same weights)" if history else "starts with " + ", ".join(
        f"{k} {v:.4g}" for k, v in sampled.items())
    started = time.monotonic()
    try:
        with (tracked_run(client, tuning.inputs.experiment_id, f"trial-{number:04d}", tags, tuning.parent_id,
                          killed_by=(optuna.TrialPruned, TrackingError)) as run,
              contextlib.closing(TrialHooks(client, run.info.run_id, variant=STAGE, trial=trial, intro=intro,
                                            extra_params=tuning.extra_params, eval_prefix=VALIDATION_PREFIX,
                                            cfg=cfg, iterations=train_cfg.iterations)) as hooks):
            trial.set_user_attr("mlflow_run_id", run.info.run_id)  # the `after_trial` callback tags it
            retire_attempts(tuning, history, number)
            hooks.log_params({f"tune.{k}": v for k, v in sampled.items()})
            result = trainer.train_dgnet(tuning.frame, tuning.model_cfg, train_cfg, tuning.teachers, folder,
                                         hooks=[hooks], resume=True)
            value = float(result.metrics[cfg.metric])
            hooks.on_iteration(train_cfg.iterations, {"optuna/value": value})
    except (optuna.TrialPruned, NonFiniteLossError) as exc:  # the trial's own outcome, said by `after_trial`
        trial.set_user_attr(OUTCOME_ATTR, short(exc, 120))
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except BaseException as exc:  # interrupted, or broken from outside: re-run from its checkpoint
        why = f"{type(exc).__name__}: {short(exc, 120)}" if str(exc) else type(exc).__name__
        print(f"tune: trial {number} stopped ({why}) after {time.monotonic() - started:.0f} s", flush=True)
        try:  # `retry` re-queues it with its weights and intermediate values, at most max_retry times
            retry(cfg.max_retry)(trial.study, running_trial(trial.study, number))
            print(f"tune: trial {number} " + ("re-queued with the same weights (a re-run resumes from its "
                  "last checkpoint)" if len(history) < cfg.max_retry else
                  "not re-queued: re-run tune.max_retry times already"), flush=True)
        except Exception as error:  # the storage may be what broke; why the trial stopped matters more
            print(f"tune: warning: could not re-queue trial {number}: {short(error, 160)}", file=sys.stderr)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    return value


def run_trials(study: optuna.Study, tuning: Tuning) -> None:
    """study.optimize until `n_trials` trials are finished and none waits (MaxTrialsCallback: up to
    workers - 1 more may finish); then wait for trials running elsewhere, re-running those that die."""
    cfg, client, failures, waited = tuning.cfg, tuning.inputs.client, [], 0
    heartbeat = cfg.heartbeat_interval
    limit = (cfg.grace_period or 2 * heartbeat) + heartbeat if heartbeat else 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        why = trial.user_attrs.get(OUTCOME_ATTR)  # why it was pruned or failed
        outcome = (f", {cfg.metric} {trial.value:.4f}" if trial.state == TrialState.COMPLETE
                   else f" ({why})" * bool(why))  # (a pruned trial's value is its last reported one)
        print(f"tune: trial {trial.number} {trial.state.name}{outcome} after "
              f"{trial.duration.total_seconds():.0f} s", flush=True)
        with contextlib.suppress(Exception), one_attempt(client.tracking_uri):  # the store may be away
            client.set_tag(trial.user_attrs["mlflow_run_id"], "optuna.state", trial.state.name)
        failures[:] = [*failures, trial.number] if trial.state == TrialState.FAIL else []
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            study.stop()

    while True:
        if heartbeat:
            optuna.storages.fail_stale_trials(study)  # dead workers' trials: failed and re-queued
        if len(trials(study, *FINISHED)) < cfg.n_trials or trials(study, TrialState.WAITING):
            study.optimize(functools.partial(run_trial, tuning), catch=(NonFiniteLossError,),
                           callbacks=[MaxTrialsCallback(cfg.n_trials, states=FINISHED), after_trial])
            if len(failures) >= MAX_FAILURES_IN_A_ROW:
                raise DgnetError(f"study {cfg.study!r}: {len(failures)} trials in a row failed (non-finite "
                                 f"losses); narrow tune.space, e.g. lower the `high` of the largest weights")
            waited = 0
        elif heartbeat and trials(study, TrialState.RUNNING) and waited < limit:
            if not waited:
                print(f"tune: waiting up to {limit} s for trials running elsewhere", file=sys.stderr)
            time.sleep(heartbeat)
            waited += heartbeat
        else:
            return


def open_parent(client: Any, experiment_id: str, study: optuna.Study, tags: Mapping[str, str],
                params: Mapping[str, Any]) -> str:
    """The parent run the study remembers, set RUNNING; else a new one, recorded in the study."""
    with mlflow_errors(client, "open the study's parent run"):
        run_id = study.user_attrs.get(PARENT_ATTR)
        with contextlib.suppress(Exception):  # another store, or deleted: a new parent
            if run_id and client.get_run(run_id).info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                return run_id
        run_id = client.create_run(experiment_id, run_name=f"tune-{study.study_name}",
                                   tags={**tags, "dgnet.kind": "study"}).info.run_id
        MlflowHooks(client, run_id).log_params(params)
        study.set_user_attr(PARENT_ATTR, run_id)
        return run_id


def summarize(tuning: Tuning, study: optuna.Study) -> None:
    """On the parent: best weights and value (step: finished trials), trial counts, trials.csv, plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    client, parent = tuning.inputs.client, tuning.parent_id
    counts = {s.name.lower(): len(trials(study, s)) for s in TrialState}
    metrics = {f"trials/{name}": n for name, n in counts.items() if name != "waiting"}
    tags = {"optuna.n_trials": tuning.cfg.n_trials}
    if counts["complete"]:
        best = study.best_trial
        metrics.update({"best/value": best.value, "best/trial_number": best.number,
                        **{f"best/{k}": v for k, v in best.params.items()}})
        tags["optuna.best_trial"] = best.number
    hooks = MlflowHooks(client, parent, eval_prefix="")
    hooks.on_evaluation(counts["complete"] + counts["pruned"], metrics)  # logged at once
    hooks.set_tags(tags)
    if study.trials:
        client.log_text(parent, study.trials_dataframe().to_csv(index=False), "trials.csv")
    for name, needed in [("optimization_history", 1), ("intermediate_values", 1), ("param_importances", 2)]:
        if counts["complete"] >= needed:  # importances need two complete trials
            with warnings.catch_warnings(action="ignore", category=UserWarning):
                figure = getattr(plots, f"plot_{name}")(study).figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            client.log_figure(parent, figure, f"plots/{name}.png")
            plt.close(figure)


def ensure_teacher(tuning: Tuning) -> list[Path]:
    """The tuning teacher: cached, or trained now on the tuning-train split (one worker at a time: a
    filelock) in a child run of the parent, published atomically."""
    from filelock import FileLock

    from dgnet.training.teacher_trainer import train_teacher

    (cfg, relative), inputs, split = tuning.teacher, tuning.inputs, tuning.split
    folder, seed = inputs.workspace / relative, f"seed{cfg.seed}"
    name, variant = f"tuning-teacher-{seed}", f"tune-teacher-{seed}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):
        if (folder / TEACHER_INDEX).is_file():
            print(f"tune: teacher of the tuning split: {relative} (cached)", flush=True)
            return teacher_paths(inputs.workspace, relative)
        print(f"tune: training the teacher of the tuning split ({split['train_ids']} ids, "
              f"{split['train_images']} images) into {relative}", flush=True)
        run_dir = ws.work_dir(inputs.workspace, name, {"teacher": relative.name})
        tags = {**tuning.tags, "dgnet.kind": "teacher", "dgnet.variant": variant}
        extra = {**tuning.extra_params, "teacher.seeds": [cfg.seed]}
        with (tracked_run(inputs.client, inputs.experiment_id, name, tags, tuning.parent_id) as run,
              contextlib.closing(MlflowHooks(inputs.client, run.info.run_id, variant=variant,
                                             extra_params=extra, eval_prefix=VALIDATION_PREFIX)) as hooks):
            link_previous_run(inputs.client, run_dir, run.info.run_id)
            result = train_teacher(tuning.frame, tuning.model_cfg, cfg, run_dir, hooks=[hooks], resume=True)
        metrics = metrics_summary(result.metrics)
        with atomic_dir(folder) as tmp:
            (tmp / seed).mkdir()
            shutil.copy2(result.model_path, tmp / seed / "model.pt")
            entry = {"seed": cfg.seed, "path": f"{seed}/model.pt", "iterations": result.iterations,
                     "metrics": metrics, "score_split": SCORE_SPLIT, "mlflow_run_id": run.info.run_id}
            write_json(tmp / TEACHER_INDEX, {"kind": "teacher", "trained_on": "tuning split", "split": split,
                                             "teachers": [entry]})
        ws.remove_work_dirs(inputs.workspace, name)
        print(f"tune: tuning teacher trained ({', '.join(f'val {k} {v:.4f}' for k, v in metrics.items())})",
              flush=True)
    return teacher_paths(inputs.workspace, relative)


def prepare(args: argparse.Namespace) -> tuple[Tuning, dict[str, Any]]:
    """Params, data, split and teacher recipe, checked before a study is opened or anything trained: what
    the trials share, and the study's settings key."""
    workspace = tracking.workspace_root()
    params = read_params(workspace / "params.yaml", assignments=[f"{STAGE}.{a}" for a in args.assignments])
    if params.tune is None:
        raise ConfigError(f"params.yaml has no `{STAGE}:` section")
    options = ("study", "n_trials", "seed", "storage", "heartbeat_interval", "grace_period", "out")
    cfg = dataclasses.replace(params.tune, **{k: v for k in options if (v := getattr(args, k)) is not None})
    base_values = merge(section(params.values, cfg.base), cfg.train)
    base_cfg, _ = build_train_config(DGNetTrainConfig, base_values, f"tune (from {cfg.base})")
    inputs = ws.open_inputs(workspace, params)
    frame = validation_split(inputs.frame, cfg.validation_fraction, cfg.validation_seed)
    check_no_test_images(frame, benchmark_rows(inputs.frame)[["path", "person_id"]], "tuning")  # never opened
    split, md5 = frame.attrs[SPLIT_ATTR], inputs.manifest_md5
    model_cfg = ws.model_config(params.values, frame)
    teacher = None  # it enters the settings by its recipe, so they are checked before it trains
    if base_cfg.needs_teacher() or any("primary_max" in k.targets for k in cfg.space):
        teacher_cfg = dataclasses.replace(params.teacher, deterministic=True)  # its first seed: one teacher
        recipe = {"model": model_cfg, "manifest": md5, "split": dict(split),
                  "teacher": {teacher_cfg.seed: teacher_cfg}}
        # named `teacher-<hash of the recipe>` as work dirs are named
        teacher = teacher_cfg, Path("outputs/tuning") / ws.work_dir(workspace, "teacher", recipe).name
    teacher_key = teacher[1].name if teacher is not None else None
    extra = {**inputs.data_params(), "stage.section": cfg.base, "data.score_split": SCORE_SPLIT,
             "optuna.study": cfg.study, "data.validation_fraction": split["fraction"],
             "data.validation_seed": split["seed"], **{f"data.{k}": split[k] for k in (
                 "validation_ids", "query_images", "gallery_images", "train_images", "train_ids")}}
    tags = {**run_tags(STAGE, "dgnet", STAGE, "dgnet_pipeline/tune.py", workspace),
            "dgnet.score_split": SCORE_SPLIT, "optuna.study": cfg.study}
    tuning = Tuning(inputs, cfg, base_values, frame, split, model_cfg, teacher, extra,
                    {"manifest": md5, "validation": split["query_sha256"], "teachers": teacher_key}, tags)
    # Not the searched schedule fields (applying tuned weights keeps the study), nor n_trials (it grows).
    searched = {t for k in cfg.space for t in k.targets}
    schedule = {k: v for k, v in (base_values.get("schedule") or {}).items() if k not in searched}
    key = {"space": [dataclasses.asdict(k) for k in cfg.space], "metric": cfg.metric, "seed": cfg.seed,
           "base": cfg.base, "train": {**base_values, "schedule": schedule}, "manifest": md5,
           "validation": split, "teachers": teacher_key, "model": model_cfg}
    return tuning, key


def warn_if_fails(what: str, step: Any, *args: Any) -> None:
    """`step(*args)`; a failure only warns: it must not hide why the study stopped."""
    try:
        step(*args)
    except Exception as exc:
        print(f"dgnet tune: warning: could not {what}: {short(exc)}", file=sys.stderr)


def tune(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tuning, key = prepare(args)
    cfg, client, url = tuning.cfg, tuning.inputs.client, tracking.absolute_sqlite(tuning.cfg.storage)
    params = {"seed": cfg.seed, "metric": cfg.metric, "base": cfg.base, "train": dict(cfg.train),
              "space": {k.name: {"low": k.low, "high": k.high, "log": k.log, "also": list(k.also)}
                        for k in cfg.space}, "sampler": cfg.sampler, "pruner": cfg.pruner,  # flattened
              "score_split": SCORE_SPLIT, "validation": dict(tuning.split)}
    with startup_lock(url):
        study, tuning.storage = open_study(url, cfg, key)
        tuning.parent_id = open_parent(client, tuning.inputs.experiment_id, study,
                                       {**tuning.tags, "optuna.storage": redact(url)}, {STAGE: params})
    print(f"tune: study {cfg.study!r} in {redact(url)}: {len(trials(study, *FINISHED))} of {cfg.n_trials} "
          f"trials finished", flush=True)
    status = "FAILED"
    try:
        if tuning.teacher is not None:
            tuning.teachers = ensure_teacher(tuning)
        run_trials(study, tuning)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except TrackingError:
        status = None  # the store is away: the next run summarizes the study and ends the parent
        raise
    finally:
        if status is not None:
            warn_if_fails("summarize the study in MLflow", summarize, tuning, study)
            if status == "FINISHED" or not trials(study, TrialState.RUNNING):  # else a trial runs elsewhere
                warn_if_fails("end the MLflow parent run", client.set_terminated, tuning.parent_id, status)
    return report(study, tuning, args, time.monotonic() - started)


def report(study: optuna.Study, tuning: Tuning, args: argparse.Namespace, seconds: float) -> int:
    """params/tuned.yaml (params.yaml's layout), the metrics JSON and a summary on stdout."""
    cfg, split, workspace = tuning.cfg, tuning.split, tuning.inputs.workspace
    counts = {s.name.lower(): len(trials(study, s)) for s in (*FINISHED, TrialState.FAIL)}
    summary: dict[str, Any] = {"metric": cfg.metric, "score_split": SCORE_SPLIT, **counts, "validation": {
        k: v for k, v in split.items() if k not in ("held_out_ids", "query_sha256")}}
    if not trials(study, TrialState.RUNNING):
        ws.remove_work_dirs(workspace, f"tune-{cfg.study}")
    if not counts["complete"]:
        write_json(workspace / args.metrics, summary)
        print(f"tune: no complete trial in study {cfg.study!r} ({counts}); no tuned weights written")
        return 0
    best, finished = study.best_trial, counts["complete"] + counts["pruned"]
    summary.update({"best_value": round(float(best.value), 6), "best_trial": best.number,
                    **{f"best_{k}": v for k, v in best.params.items()}})
    schedule = {t: float(best.params[k.name]) for k in cfg.space for t in k.targets}
    exp_line = "dvc exp run " + " ".join(f"-S {cfg.base}.schedule.{k}={v!r}" for k, v in schedule.items())
    lines = [f"The best loss weights of Optuna study {cfg.study!r}: trial {best.number} of {finished} "
             f"finished, {SCORE_SPLIT} {cfg.metric} {best.value:.6f} ({split['validation_ids']} held-out "
             f"training ids; never the test split, which `dvc repro` benchmarks them on after --apply).",
             f"Use them: `dgnet tune --apply {Path(cfg.out).as_posix()}`, or as a DVC experiment: {exp_line}"]
    tuned = {"tuned": {"study": cfg.study, "trial": best.number, "metric": cfg.metric,
                       "value": float(best.value), "score_split": SCORE_SPLIT, "finished_trials": finished},
             cfg.base: {"schedule": schedule}}
    with atomic_path(workspace / cfg.out) as tmp:  # an absolute `out` stays itself
        tmp.write_text("".join(f"# {line}\n" for line in lines) + yaml.safe_dump(tuned, sort_keys=False))
    write_json(workspace / args.metrics, summary)
    print(f"tune: {counts} after {seconds:.0f} s. " + "\n".join(lines) + f"\nMLflow parent run "
          f"{tuning.parent_id} (view: {tracking.view_hint(tuning.inputs.uri)})")
    return 0


def apply_tuned(tuned: Path, params_file: Path) -> list[str]:
    """Copy a tuned file's weights into params.yaml (comments and layout kept), which must still build
    the training configuration; the changes as `key: old -> new`."""
    from ruamel.yaml import YAML

    editor = YAML()  # round-trip: comments, order and quoting of params.yaml survive
    editor.indent(mapping=2, sequence=4, offset=2)
    editor.width, editor.preserve_quotes = 4096, True  # `amp: "off"` must not become the boolean off
    editor.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null",
                                                                                   "null"))
    try:
        values, document = yaml.safe_load(tuned.read_text()), editor.load(params_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--apply {tuned}: cannot read it or {params_file} ({short(exc)})") from exc
    sections = {k: v for k, v in values.items() if k != "tuned"} if isinstance(values, dict) else {}
    if not sections or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"--apply {tuned}: expected params sections such as `train: schedule: ...`")
    changes = []
    for dotted, value in flatten(sections).items():
        *parents, leaf = dotted.split(".")
        node = document
        for depth, key in enumerate(parents, 1):  # a section holds what differs from the profile
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                where = ".".join(parents[:depth])
                raise ConfigError(f"--apply {tuned}: {params_file} has a value at `{where}`, where "
                                  f"`{dotted}` needs a section (a mapping); nothing was changed")
        changes.append(f"{dotted}: {node.get(leaf, '(default)')} -> {value}")
        node[leaf] = value
    with atomic_path(params_file) as tmp:
        with open(tmp, "w") as handle:
            editor.dump(document, handle)
        read_params(tmp)  # every section must still build its configuration
    return changes


def command(args: argparse.Namespace) -> int:
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
    """The options of `dgnet tune` and stages/tune.py; unset: from params `tune`."""
    add = parser.add_argument
    add("--study", help="study name (params tune.study)")
    add("--n-trials", type=int, help="run until the study has N finished (complete or pruned) trials")
    add("--storage", help="SQLAlchemy URL of the Optuna storage (default sqlite:///optuna.db at the "
                          "repository root; postgresql+psycopg://user:password@host/db for many workers)")
    add("--seed", type=int, help="sampler seed (params tune.seed)")
    add("--heartbeat-interval", type=int, help="seconds between a running trial's heartbeats (0: none)")
    add("--grace-period", type=int, help="seconds without a heartbeat after which a trial is re-queued")
    add("--out", type=Path, help="tuned weights file (params tune.out)")
    add("--metrics", type=Path, default=Path("reports/metrics/tune.json"), help="summary JSON (dvc metrics)")
    add("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of params `tune` (dotted, YAML value), e.g. train.iterations=50")
    add("--apply", type=Path, metavar="TUNED_YAML", help="instead of tuning: copy a tuned file's weights "
                                                         "into params.yaml")
    add("--params", type=Path, help="with --apply: the params file to change")
    parser.set_defaults(func=command)
    return parser


def add_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    # the entry point of group `dgnet.commands` (pyproject.toml)
    return add_arguments(subparsers.add_parser(
        "tune", help="tune DG-Net's loss weights with a resumable Optuna study tracked in MLflow",
        description=__doc__.split("\n\n")[0].replace("\n", " ")))
