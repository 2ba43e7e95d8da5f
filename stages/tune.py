"""`dgnet tune` (and `python -m stages.tune`, the DVC entry tuning/dvc.yaml): an Optuna study of
DG-Net's loss weights, every trial a short training run tracked in MLflow.

What is searched (params `tune.space`): lambda_prim (`primary_max`), the fine-grained alpha
(`fine_alpha`), the image reconstruction weight (`recon_image`, which also sets
`recon_image_positive`: the paper weights both reconstructions alike), the code reconstruction
maximum (`code_max`) and the cross-identity id weight (`id_generated`). Each trial trains the
`tune.base` section (default `train`) changed by `tune.train` (fewer iterations, evaluations to
prune on, deterministic) with the sampled weights, and scores the final `tune.metric` (mAP).

What trials train and score on (stages/tune_data.py): never the benchmark's query/gallery split.
`tune.validation_fraction` of the training identities (seeded by `tune.validation_seed`) are held
out and split into query and gallery by camera as the test protocol does (dgnet.data.splits); the
trials train on the other training ids and score on those. A guard refuses any frame handed to a
trial or to the teacher that holds a test image or identity. The trials' teacher is trained on the
tuning-train split too (params `teacher`, deterministic, cached in outputs/tuning/), since the
pipeline's teacher has seen the held-out ids. The tuned weights are benchmarked once on the test
split, by `dvc repro` after `dgnet tune --apply`.

How it repeats and resumes:
- TPESampler seeded per trial from (seed, trial number), one worker, deterministic CPU training:
  the same seed gives the same trials, params and values. Seeding per trial (instead of once per
  process) also means a resumed study never redraws the random start-up points it already tried.
- Storage: SQLite at the repository root by default (`optuna.db`), or any SQLAlchemy URL (e.g.
  postgresql+psycopg://...) for many workers. Re-running the same command continues the study until
  it has `n_trials` finished (complete or pruned) trials. Workers may all start at the same moment on
  a new database: they open the storage, the study and its MLflow parent run one at a time, under a
  start-up lock (`startup_lock`), and the creation of Optuna's tables is retried when it loses a race.
- A trial stopped by Ctrl-C / SIGTERM, or by the tracking store going away, is failed and re-queued
  with the same weights at once; one left RUNNING by a killed worker is failed once its heartbeat is
  older than `grace_period` and re-queued by RetryHeartbeatStaleTrialCallback (the successor of
  RetryFailedTrialCallback, deprecated since Optuna 4.9). Checkpoints live in
  checkpoints/tune-<study>-<hash of the configuration>/, so the re-queued trial resumes where the
  first attempt stopped; they are deleted when a trial ends. A worker that has nothing left to run
  waits (one grace period at most) for trials running elsewhere and re-runs those whose worker died,
  so no trial is left RUNNING, even in a study that already has its `n_trials`.
- A study remembers a hash of its settings (space, training config, data, validation split, teacher
  recipe, seed): resuming it with other settings is refused (use another study name).
- Each worker prints a line when a trial starts (`tune: trial 2 re-runs trial 0 (same weights),
  resuming at iteration 14` for a re-run) and when it ends (state, value, seconds).

MLflow (stages/tune_tracking.py): one parent run per study (found again on resume; tag and param
`score_split` = validation, params `tune.validation.*`: fraction, seed, ids and images), one child
run per trial attempt with the sampled weights, losses and evaluations (`val/mAP`, ...: validation
figures), and one per tuning-teacher seed when it is trained; a re-run's run and the runs of
the attempts it replaces point at each other (`optuna.retry_of`, `optuna.rerun_as`). The parent gets
the best weights and value, the optimisation history, intermediate values and parameter importances
as PNG images, and trials.csv.

The best weights go to params/tuned.yaml (params.yaml's layout); `dgnet tune --apply
params/tuned.yaml` copies them into params.yaml's `train.schedule`, after which `dvc repro` retrains.

Exit codes: 0 done; 1 a test image in the data handed to a trial; 2 bad params (a validation
fraction out of (0, 1) or leaving too few ids), missing manifest, unreachable Optuna storage or MLflow
store (at start, or mid-trial after the retries: the trial is re-queued), a study resumed with other
settings, too many failed trials; 130 interrupted (re-run to go on).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import re
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dgnet.data.splits import check_fraction
from dgnet.errors import ConfigError, DgnetError
from dgnet.io import atomic_path, write_json
from dgnet.losses import NonFiniteLossError
from dgnet.profiles import STAGE_KEYS, apply_assignments, merge, resolve_params
from dgnet.training.hooks import TrainingHooks, TrainingResult
from stages.common import load_params, section
from stages.mlflow_hooks import MlflowHooks, flatten, mlflow_settings
from stages.mlflow_runs import ensure_experiment, run_tags
from stages.tracking import (
    TrackingError,
    artifact_location,
    connect,
    quiet_mlflow,
    redact,
    tracking_uri,
    view_hint,
    workspace_root,
)
from stages.tune_data import (
    SCORE_SPLIT,
    VALIDATION_PREFIX,
    TeacherRecipe,
    TeacherRun,
    TuningData,
    ensure_teacher,
    teacher_recipe,
    tuning_data,
)
from stages.tune_storage import (
    StorageError,
    check_storage,
    open_storage,
    retry_callback,
    retry_schema_race,
    startup_lock,
    storage_url,
)
from stages.tune_tracking import StudyTracker, best_trial, quiet_optuna, retry_history, short
from stages.workspace import (
    file_md5,
    interrupt_on_sigterm,
    manifest_path,
    model_config,
    read_manifest,
    remove_work_dirs,
    report_path,
    train_config,
    work_dir,
)

STAGE = "tune"
DEFAULT_STORAGE = "sqlite:///optuna.db"  # relative: against the repository root (DVC_ROOT in dvc exp)
DEFAULT_OUT = Path("params/tuned.yaml")
DEFAULT_METRICS = Path("reports/metrics/tune.json")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
METRICS = ("mAP", "rank1", "mINP")
PRUNERS = ("median", "threshold", "none")
PRUNER_KEYS = {"kind", "n_warmup_steps", "interval_steps", "n_startup_trials", "lower"}  # lower: threshold
# Study user attributes: the settings fingerprint (its hash, its text).
SETTINGS_ATTR = "dgnet.settings_hash"
SETTINGS_TEXT_ATTR = "dgnet.settings"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One searched weight: a float in [low, high] (log scale when `log`), written to the
    ScheduleConfig field `name` and to every field of `also`."""

    name: str
    low: float
    high: float
    log: bool = False
    also: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.name, *self.also)


@dataclass(frozen=True)
class TuneSettings:
    """params.yaml `tune:` after the command-line options (see params.yaml for each key)."""

    study: str
    n_trials: int
    seed: int
    storage: str
    metric: str
    base: str
    train: dict[str, Any]
    space: tuple[Knob, ...]
    startup_trials: int
    pruner: dict[str, Any]
    heartbeat_interval: int | None
    grace_period: int | None
    max_retry: int
    log_models: bool
    out: Path
    validation_fraction: float
    validation_seed: int


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    return float(value)


def parse_space(values: Any) -> tuple[Knob, ...]:
    """`tune.space`: {field: {low, high, log, also}} over the numeric ScheduleConfig fields."""
    from dgnet.training.schedule import ScheduleConfig

    numeric = {f.name for f in dataclasses.fields(ScheduleConfig) if f.type in ("float", float)}
    if not isinstance(values, Mapping) or not values:
        raise ConfigError("tune.space: must map loss weights to {low, high, log} ranges")
    knobs, seen = [], set()
    for name, spec in values.items():
        where = f"tune.space.{name}"
        if not isinstance(spec, Mapping) or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: must be a mapping with `low` and `high` (and `log`, `also`)")
        unknown = sorted(set(spec) - {"low", "high", "log", "also"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are also, high, log, low")
        also = tuple(spec.get("also") or ())
        for field in (name, *also):
            if field not in numeric:
                raise ConfigError(f"{where}: {field!r} is not a loss weight of train.schedule; "
                                  f"searchable: {sorted(numeric)}")
            if field in seen:
                raise ConfigError(f"{where}: {field!r} is set by two entries of tune.space")
            seen.add(field)
        low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: must be true or false, got {log!r}")
        if not 0 <= low < high or (log and low == 0):
            raise ConfigError(f"{where}: needs 0 <= low < high (low > 0 on a log scale), got "
                              f"low {low}, high {high}")
        knobs.append(Knob(str(name), low, high, log, also))
    return tuple(knobs)


def tune_settings(values: Mapping[str, Any], args: argparse.Namespace) -> TuneSettings:
    """The `tune:` section checked, with the command line's --study, --n-trials, ... on top."""
    known = {"study", "n_trials", "seed", "storage", "metric", "base", "train", "space", "sampler",
             "pruner", "heartbeat_interval", "grace_period", "max_retry", "log_models", "out",
             "validation_fraction", "validation_seed"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"tune: unknown key(s) {unknown}; known keys are {sorted(known)}")
    cli = {"study": args.study, "n_trials": args.n_trials, "seed": args.seed, "storage": args.storage,
           "heartbeat_interval": args.heartbeat_interval, "grace_period": args.grace_period,
           "out": args.out}
    values = {**values, **{k: v for k, v in cli.items() if v is not None}}
    study = str(values.get("study", "dgnet-weights"))
    if not STUDY_NAME.fullmatch(study):
        raise ConfigError(f"tune.study: {study!r} must be letters, digits, `_`, `.`, `-` (at most 100)")
    metric = values.get("metric", "mAP")
    if metric not in METRICS:
        raise ConfigError(f"tune.metric: {metric!r} is not one of {list(METRICS)}")
    train = values.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError("tune.train: must be a mapping of training keys changed for every trial")
    heartbeat = values.get("heartbeat_interval", 30)
    heartbeat = None if heartbeat in (None, 0) else _integer(heartbeat, "tune.heartbeat_interval", 1)
    grace = values.get("grace_period")
    grace = None if grace is None or heartbeat is None else _integer(grace, "tune.grace_period", 1)
    if grace is not None and grace <= heartbeat:
        raise ConfigError(f"tune.grace_period: {grace} s must exceed heartbeat_interval {heartbeat} s")
    sampler = values.get("sampler") or {}
    if not isinstance(sampler, Mapping) or set(sampler) - {"n_startup_trials"}:
        raise ConfigError("tune.sampler: only `n_startup_trials` is configurable")
    log_models = values.get("log_models", False)
    if not isinstance(log_models, bool):
        raise ConfigError(f"tune.log_models: must be true or false, got {log_models!r}")
    return TuneSettings(
        study=study, n_trials=_integer(values.get("n_trials", 10), "tune.n_trials", 1),
        seed=_integer(values.get("seed", 0), "tune.seed", 0),
        storage=str(values.get("storage") or DEFAULT_STORAGE), metric=metric,
        base=str(values.get("base", "train")), train=dict(train), space=parse_space(values.get("space")),
        startup_trials=_integer(sampler.get("n_startup_trials", 10), "tune.sampler.n_startup_trials", 0),
        pruner=parse_pruner(values.get("pruner") or {}), heartbeat_interval=heartbeat, grace_period=grace,
        max_retry=_integer(values.get("max_retry", 2), "tune.max_retry", 0), log_models=log_models,
        out=Path(values.get("out") or DEFAULT_OUT),
        validation_fraction=check_fraction(values.get("validation_fraction", 0.25)),
        validation_seed=_integer(values.get("validation_seed", 0), "tune.validation_seed", 0),
    )


def parse_pruner(values: Any) -> dict[str, Any]:
    """`tune.pruner`: kind median (default), threshold (prune below `lower`) or none, with the
    evaluation steps to wait (`n_warmup_steps`, in iterations) and `interval_steps`. Keys of the
    other kinds (`n_startup_trials` of median, `lower` of threshold) are ignored."""
    if not isinstance(values, Mapping):
        raise ConfigError("tune.pruner: must be a mapping (kind, n_startup_trials, n_warmup_steps, ...)")
    kind = values.get("kind", "median")
    if kind not in PRUNERS:
        raise ConfigError(f"tune.pruner.kind: {kind!r} is not one of {list(PRUNERS)}")
    # Keys of another kind are left aside, so that `--set pruner.kind=none` works over params that
    # hold the median pruner's settings; a key of no kind is a typo.
    unknown = sorted(set(values) - PRUNER_KEYS)
    if unknown:
        raise ConfigError(f"tune.pruner: unknown key(s) {unknown}; known keys are {sorted(PRUNER_KEYS)}")
    pruner = {"kind": kind, "n_warmup_steps": _integer(values.get("n_warmup_steps", 0),
                                                       "tune.pruner.n_warmup_steps", 0),
              "interval_steps": _integer(values.get("interval_steps", 1), "tune.pruner.interval_steps", 1)}
    if kind == "median":
        pruner["n_startup_trials"] = _integer(values.get("n_startup_trials", 3),
                                              "tune.pruner.n_startup_trials", 0)
    if kind == "threshold":
        pruner["lower"] = _number(values.get("lower"), "tune.pruner.lower")
    return pruner


def make_pruner(pruner: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    steps = {"n_warmup_steps": pruner["n_warmup_steps"], "interval_steps": pruner["interval_steps"]}
    if pruner["kind"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner["n_startup_trials"], **steps)
    if pruner["kind"] == "threshold":
        return optuna.pruners.ThresholdPruner(lower=pruner["lower"], **steps)
    return optuna.pruners.NopPruner()


# --- sampler -----------------------------------------------------------------------------------


class PerTrialSeedTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is reseeded from (seed, trial number) before every trial.

    Plain TPESampler(seed) seeds once per process, so a resumed study would draw its random start-up
    points from the beginning of the same sequence again; here trial k always draws from the same
    state, whatever process runs it, and two workers never share one (trial numbers are unique).
    """

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self.base_seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        state = int(np.random.SeedSequence([self.base_seed, trial.number]).generate_state(1)[0])
        self._rng.rng.seed(state)  # TPE's own draws (optuna 5: a LazyRandomState)
        self._random_sampler._rng.rng.seed(state)  # the start-up trials' draws
        super().before_trial(study, trial)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


# --- one trial -------------------------------------------------------------------------------------


class PruningHook(TrainingHooks):
    """Reports the metric at every evaluation to the trial and stops the training (TrialPruned) when
    the pruner says so; never at the final evaluation, whose value is the trial's result."""

    def __init__(self, trial: optuna.Trial, metric: str, iterations: int) -> None:
        self.trial, self.metric, self.iterations = trial, metric, iterations

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        with warnings.catch_warnings():  # a resumed retry re-reports inherited steps: ignored, fine
            warnings.simplefilter("ignore", UserWarning)
            self.trial.report(float(value), int(iteration))
        if iteration < self.iterations and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at iteration {iteration}")


class TrialHooks(MlflowHooks):
    """MlflowHooks for a trial: the model file is logged only with `tune.log_models` (a trial's
    model is a by-product; the tuned weights are retrained by the pipeline)."""

    def __init__(self, *args: Any, log_models: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log_models = log_models

    def log_model(self, result: TrainingResult) -> Any:
        return super().log_model(result) if self.log_models else None


@dataclass
class TrialContext:
    """Everything a trial needs that does not change from trial to trial."""

    workspace: Path
    settings: TuneSettings
    base_values: dict[str, Any]  # the base section with tune.train applied
    data: TuningData  # the validation split the trials train and score on (never the test split)
    model_cfg: Any  # num_classes: the tuning-train split's ids
    teacher: TeacherRecipe | None  # None: no trial needs a teacher
    extra_params: dict[str, Any]
    fingerprint_key: dict[str, Any]  # data, split and teacher recipe, for the checkpoint folder's key
    teachers: list[Path] = dataclasses.field(default_factory=list)  # set once the teacher is there


def trial_values(base_values: Mapping[str, Any], space: Sequence[Knob], sampled: Mapping[str, float]
                 ) -> dict[str, Any]:
    """The training section of one trial: the base values with the sampled weights in `schedule`."""
    schedule = {target: sampled[knob.name] for knob in space for target in knob.targets}
    return merge(dict(base_values), {"schedule": schedule})


def suggest(trial: optuna.Trial, space: Sequence[Knob]) -> dict[str, float]:
    return {k.name: trial.suggest_float(k.name, k.low, k.high, log=k.log) for k in space}


class TrialLog(TrainingHooks):
    """The worker's line when a trial's training starts: a new trial and its weights, or a re-run
    of an earlier attempt and the iteration it resumes at (known once the checkpoint is loaded)."""

    def __init__(self, number: int, history: Sequence[int], sampled: Mapping[str, float]) -> None:
        self.number, self.history, self.sampled = number, list(history), dict(sampled)

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        where = f"resuming at iteration {start_iteration}" if start_iteration else "from iteration 0"
        if self.history:
            print(f"tune: trial {self.number} re-runs trial {self.history[-1]} (same weights), {where}",
                  flush=True)
        else:
            weights = ", ".join(f"{k} {v:.4g}" for k, v in self.sampled.items())
            print(f"tune: trial {self.number} starts {where} with {weights}", flush=True)


class Objective:
    """Optuna's objective: train one configuration, return its final metric (pruned on the way)."""

    def __init__(self, context: TrialContext, tracker: StudyTracker) -> None:
        self.context, self.tracker = context, tracker
        self.current: int | None = None  # the trial this process is running (for Ctrl-C)

    def __call__(self, trial: optuna.Trial) -> float:
        from dgnet.training import trainer
        from dgnet.training.trainer import DGNetTrainConfig

        ctx, settings = self.context, self.context.settings
        # Again, on what is handed to the training: never a test image. Before `current` is set, so
        # a refused trial fails without being re-queued (its data, not its worker, is at fault).
        ctx.data.check()
        self.current, started, outcome = trial.number, time.monotonic(), "FAIL"
        sampled = suggest(trial, settings.space)
        history = retry_history(trial)
        cfg, _ = train_config(DGNetTrainConfig, trial_values(ctx.base_values, settings.space, sampled),
                              f"tune (from {settings.base})", STAGE_KEYS["train"])
        folder = work_dir(ctx.workspace, f"tune-{settings.study}",
                          {"model": ctx.model_cfg, "train": cfg, **ctx.fingerprint_key})
        keep = False
        try:
            with self.tracker.trial_run(trial, sampled, history) as run_id:
                hooks = TrialHooks(self.tracker.client, run_id, registered_model=None, variant=STAGE,
                                   extra_params=ctx.extra_params, log_models=settings.log_models,
                                   eval_prefix=VALIDATION_PREFIX)
                pruning = PruningHook(trial, settings.metric, cfg.iterations)
                log = TrialLog(trial.number, history, sampled)
                try:  # MLflow first: the evaluation that prunes a trial is logged too
                    result = trainer.train_dgnet(ctx.data.frame, ctx.model_cfg, cfg, ctx.teachers, folder,
                                                 hooks=[log, hooks, pruning], resume=True)
                    value = float(result.metrics[settings.metric])
                    hooks.on_iteration(cfg.iterations, {"optuna/value": value})
                finally:
                    hooks.close()  # writes what is buffered (the value too), retried
            outcome = f"COMPLETE, {settings.metric} {value:.4f}"
            return value
        except (optuna.TrialPruned, NonFiniteLossError) as exc:
            outcome = f"{'PRUNED' if isinstance(exc, optuna.TrialPruned) else 'FAIL'} ({short(exc, 120)})"
            raise  # the trial's own outcome
        except BaseException as exc:
            keep = True  # interrupted or broken from outside: the re-queued attempt resumes from here
            outcome = f"stopped ({type(exc).__name__}{': ' + short(exc, 120) if str(exc) else ''})"
            raise
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
            seconds = time.monotonic() - started
            print(f"tune: trial {trial.number} {outcome} after {seconds:.0f} s", flush=True)


# --- the study -------------------------------------------------------------------------------------


def settings_key(settings: TuneSettings, base_values: Mapping[str, Any], context_key: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """What a study's trials depend on. The searched schedule fields are left out (trials set them),
    so applying tuned weights to params.yaml does not make the study a different one; so is n_trials
    (raising it extends a study)."""
    searched = {target for knob in settings.space for target in knob.targets}
    schedule = {k: v for k, v in (base_values.get("schedule") or {}).items() if k not in searched}
    return {"space": [dataclasses.asdict(k) for k in settings.space], "metric": settings.metric,
            "seed": settings.seed, "base": settings.base, "train": {**base_values, "schedule": schedule},
            **context_key}


def check_same_settings(study: optuna.Study, key: Mapping[str, Any], url: str) -> None:
    """Remember the settings of a new study; refuse to resume one that was started with others."""
    text = json.dumps(key, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, digest)
        study.set_user_attr(SETTINGS_TEXT_ATTR, text)
        return
    if stored != digest:
        before = json.loads(study.user_attrs.get(SETTINGS_TEXT_ATTR, "{}"))
        now = json.loads(text)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)) or ["?"]
        raise ConfigError(f"study {study.study_name!r} in {redact(url)} was started with other settings "
                          f"(changed: {', '.join(changed)}); resume it with those, or give this search "
                          f"another name (--study NAME, params tune.study)")


def requeue(study: optuna.Study, number: int | None, settings: TuneSettings) -> None:
    """Re-queue trial `number` if it failed because this process was stopped (not because of its
    weights), unless a retry of it is already queued; says so on stdout."""
    if number is None:
        return

    def retried(trials: Sequence[FrozenTrial]) -> bool:
        with quiet_optuna():
            return any(number in RetryHeartbeatStaleTrialCallback.retry_history(t) for t in trials)

    try:
        trials = study.get_trials(deepcopy=False)
        trial = next((t for t in trials if t.number == number), None)
        if trial is None or trial.state != TrialState.FAIL or retried(trials):
            return  # still RUNNING (the storage failed too): the heartbeat check re-queues it
        retry_callback(settings.max_retry)(study, copy.deepcopy(trial))
        queued = retried(study.get_trials(deepcopy=False))
    except Exception as exc:  # the storage may be what broke; the reason the trial stopped matters more
        print(f"tune: warning: could not re-queue trial {number}: {short(exc, 160)}", file=sys.stderr)
        return
    if queued:
        print(f"tune: trial {number} re-queued with the same weights (a re-run resumes from its last "
              f"checkpoint)", flush=True)
    else:
        print(f"tune: trial {number} not re-queued: its weights were re-run tune.max_retry "
              f"({settings.max_retry}) times already", flush=True)


MAX_FAILURES_IN_A_ROW = 3


def trials_in(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def run_trials(study: optuna.Study, objective: Objective, settings: TuneSettings) -> None:
    """Run trials (re-queued ones first) until the study has `n_trials` finished ones and no trial
    waits to be re-run.

    A trial whose loss became NaN fails and the study goes on; three such failures in a row stop it.
    With several workers on one storage each stops at `n_trials` finished, so up to (workers - 1)
    trials more may finish, as with Optuna's MaxTrialsCallback. Trials RUNNING elsewhere at the end
    are waited for until they finish or their heartbeat goes stale (a dead worker's trial is then
    re-queued and re-run here), so that no trial is left behind.
    """
    failures = 0
    while True:
        optuna.storages.fail_stale_trials(study)  # dead workers' trials -> failed, re-queued
        more = len(finished_trials(study)) < settings.n_trials or trials_in(study, TrialState.WAITING)
        if not more and not wait_for_running(study, settings):
            return
        if not more:
            continue
        objective.current = None
        try:
            study.optimize(objective, n_trials=1, catch=(NonFiniteLossError,))
        except BaseException:
            requeue(study, objective.current, settings)
            raise
        last = next((t for t in study.get_trials(deepcopy=False) if t.number == objective.current), None)
        failures = failures + 1 if last is not None and last.state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise DgnetError(f"study {settings.study!r}: {failures} trials in a row failed (non-finite "
                             f"losses); narrow tune.space, e.g. lower the `high` of the largest weights")


def wait_for_running(study: optuna.Study, settings: TuneSettings) -> bool:
    """Wait while other workers' trials run, at most one grace period and one heartbeat: True as soon
    as one of them turns out dead (its re-run is queued), False when none runs any more or those
    still running are alive (they keep their heartbeat; their workers finish them)."""
    if not settings.heartbeat_interval or not trials_in(study, TrialState.RUNNING):
        return False
    interval = settings.heartbeat_interval
    deadline = time.monotonic() + (settings.grace_period or 2 * interval) + interval
    print(f"tune: waiting up to {deadline - time.monotonic():.0f} s for trials running elsewhere",
          file=sys.stderr)
    while time.monotonic() < deadline:
        time.sleep(interval)
        optuna.storages.fail_stale_trials(study)
        if trials_in(study, TrialState.WAITING):
            return True
        if not trials_in(study, TrialState.RUNNING):
            return False
    return False


# --- the tuned weights: params/tuned.yaml, and back into params.yaml -------------------------------


def tuned_schedule(best: FrozenTrial, space: Sequence[Knob]) -> dict[str, float]:
    return {target: float(best.params[knob.name]) for knob in space for target in knob.targets}


def write_tuned(path: Path, study: optuna.Study, settings: TuneSettings, best: FrozenTrial) -> str:
    """params/tuned.yaml: the best trial's weights in params.yaml's layout (`train: schedule: ...`),
    with where they come from; returns the equivalent `dvc exp run -S ...` line."""
    schedule = tuned_schedule(best, settings.space)
    exp_line = "dvc exp run " + " ".join(f"-S {settings.base}.schedule.{k}={v!r}"
                                         for k, v in schedule.items())
    finished = len(finished_trials(study))
    header = (f"# The best loss weights of Optuna study {settings.study!r}: trial {best.number} of "
              f"{finished} finished, final {settings.metric} {best.value:.6f} on the validation split\n"
              f"# (tune.validation_fraction of the training ids held out; never the test split).\n"
              f"# Written by `dgnet tune`; make the pipeline use them (then `dvc repro` retrains):\n"
              f"#   dgnet tune --apply {settings.out.as_posix()}\n"
              f"# or try them as a DVC experiment without touching params.yaml:\n#   {exp_line}\n")
    content = {"tuned": {"study": settings.study, "trial": best.number, "metric": settings.metric,
                         "value": float(best.value), "score_split": SCORE_SPLIT, "finished_trials": finished},
               settings.base: {"schedule": schedule}}
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(content, sort_keys=False))
    return exp_line


def apply_tuned(tuned: Path, params_file: Path) -> list[str]:
    """Copy the weights of a tuned file into params.yaml (comments and layout kept, atomic write);
    the result must still build the training configuration (so a misspelt key is refused and
    params.yaml left as it was). Returns the changes as `key: old -> new` lines."""
    from ruamel.yaml import YAML

    from dgnet.training.trainer import DGNetTrainConfig

    try:
        values = yaml.safe_load(tuned.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--apply {tuned}: cannot read it ({short(exc)})") from exc
    sections = {k: v for k, v in (values or {}).items() if k != "tuned"} if isinstance(values, dict) else {}
    if not sections or not all(isinstance(v, dict) for v in sections.values()):
        raise ConfigError(f"--apply {tuned}: expected params sections such as `train: schedule: ...`")
    editor = YAML()  # round-trip: comments, order and quoting of params.yaml survive
    editor.indent(mapping=2, sequence=4, offset=2)
    editor.width, editor.preserve_quotes = 4096, True  # `amp: "off"` must not become the boolean off
    editor.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    try:
        document = editor.load(params_file.read_text())
    except OSError as exc:
        raise ConfigError(f"{params_file}: cannot read it ({short(exc)})") from exc
    changes = []
    for name, changed in sections.items():
        for dotted, value in flatten(changed).items():
            *parents, leaf = [name, *dotted.split(".")]
            node = document
            for key in parents:  # a section holds only what differs from the profile: add what is missing
                if isinstance(node, Mapping) and node.get(key) is None:
                    node[key] = {}
                node = node.get(key) if isinstance(node, Mapping) else None
            if not isinstance(node, Mapping):
                raise ConfigError(f"--apply {tuned}: {params_file} has no `{'.'.join(parents)}` to put "
                                  f"{leaf} in")
            changes.append(f"{name}.{dotted}: {node.get(leaf, '(default)')} -> {value}")
            node[leaf] = value
    with atomic_path(params_file) as tmp:
        with open(tmp, "w") as handle:
            editor.dump(document, handle)
        updated = resolve_params(yaml.safe_load(tmp.read_text()))
        for name in sections:  # a training section must still build a training configuration
            if name == "train" or {"iterations", "schedule"} <= set(updated.get(name) or {}):
                train_config(DGNetTrainConfig, updated[name], name, STAGE_KEYS["train"])
    return changes


# --- the command -----------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> tuple[TrialContext, dict[str, Any]]:
    """Read and check params and data, carve the validation split, and work out the tuning
    teacher's recipe, before anything is opened or trained. Returns the trials' context and the
    study's settings key (see `settings_key`)."""
    from dgnet.training.trainer import DGNetTrainConfig

    workspace = workspace_root()
    params = resolve_params(load_params(workspace))
    settings = tune_settings(apply_assignments(section(params, STAGE), args.assignments, STAGE), args)
    mlflow_settings(params)  # checked here; read again when tracking starts
    base_values = merge(section(params, settings.base), settings.train)
    base_cfg, _ = train_config(DGNetTrainConfig, base_values, f"tune (from {settings.base})",
                               STAGE_KEYS["train"])
    manifest = manifest_path(params, workspace)
    # The test split's rows are kept for the guard only; its images are never opened.
    data = tuning_data(read_manifest(manifest, report_path(params, workspace)), settings.validation_fraction,
                       settings.validation_seed)
    model_cfg = model_config(params, data.frame)
    manifest_md5 = file_md5(manifest)
    may_need_teacher = base_cfg.needs_teacher() or any("primary_max" in k.targets for k in settings.space)
    recipe = teacher_recipe(section(params, "teacher"), model_cfg, manifest_md5, data.summary) \
        if may_need_teacher else None
    # The teacher enters the study's settings by its recipe (deterministic: the same recipe trains
    # the same weights), so a study is checked before the teacher is trained.
    teacher_key = recipe.folder.name if recipe is not None else None
    data_key = {"manifest": manifest_md5, "validation": data.summary, "teachers": teacher_key,
                "model": model_cfg}
    split = data.summary
    extra = {"profile": params["profile"],
             "stage.section": settings.base,
             "data.manifest": str(manifest), "data.manifest_md5": manifest_md5,
             "data.score_split": SCORE_SPLIT, "data.validation_fraction": split["fraction"],
             "data.validation_seed": split["seed"], "data.validation_ids": split["validation_ids"],
             "data.query_images": split["query_images"], "data.gallery_images": split["gallery_images"],
             "data.train_images": split["train_images"], "data.train_ids": split["train_ids"],
             "optuna.study": settings.study}
    context = TrialContext(workspace, settings, base_values, data, model_cfg, recipe, extra,
                           {"manifest": manifest_md5, "validation": split["query_sha256"],
                            "teachers": teacher_key})
    return context, settings_key(settings, base_values, data_key)


def open_study(url: str, settings: TuneSettings, key: Mapping[str, Any]) -> optuna.Study:
    """The study, created or loaded, whose settings match `key` (see `startup_lock` for workers
    opening it at the same moment)."""
    storage = open_storage(url, settings.heartbeat_interval, settings.grace_period, settings.max_retry)
    try:
        with quiet_optuna():
            study = retry_schema_race(
                optuna.create_study, storage=storage, study_name=settings.study, direction="maximize",
                load_if_exists=True, pruner=make_pruner(settings.pruner),
                sampler=PerTrialSeedTPESampler(settings.seed, n_startup_trials=settings.startup_trials))
    except Exception as exc:
        raise StorageError(f"Optuna storage {redact(url)}: cannot create or load study "
                           f"{settings.study!r}: {short(exc)}") from exc
    check_same_settings(study, key, url)
    return study


def connect_tracker(settings: TuneSettings, workspace: Path) -> StudyTracker:
    """The MLflow side: the store (MLFLOW_TRACKING_URI or mlflow.db) and the experiment; the parent
    run comes once the study is open (`StudyTracker.open_parent`)."""
    uri = tracking_uri()
    client = connect(uri)
    experiment = mlflow_settings(load_params(workspace))["experiment"]
    experiment_id = ensure_experiment(client, experiment, artifact_location(uri))
    tags = {**run_tags(STAGE, "dgnet", STAGE, "stages/tune.py", workspace), "dgnet.score_split": SCORE_SPLIT}
    return StudyTracker(client, experiment_id, settings.study, tags)


def study_params(settings: TuneSettings, split: Mapping[str, Any]) -> dict[str, Any]:
    """The parent run's params: what fixes a study (MLflow params cannot change; n_trials can),
    the validation split its trials score on included."""
    space = {k.name: {"low": k.low, "high": k.high, "log": k.log, "also": list(k.also)}
             for k in settings.space}
    return {"seed": settings.seed, "metric": settings.metric, "base": settings.base, "train": settings.train,
            "space": space, "sampler.n_startup_trials": settings.startup_trials, "pruner": settings.pruner,
            "score_split": SCORE_SPLIT, "validation": dict(split)}


def run_tune(args: argparse.Namespace) -> int:
    """`dgnet tune`: run (or resume) the study, then write the tuned weights and the metrics."""
    quiet_mlflow()
    interrupt_on_sigterm()
    started = time.monotonic()
    try:
        context, key = prepare(args)
        settings = context.settings
        url = storage_url(settings.storage)
        check_storage(url)  # unreachable storage or tracking store: said at once, before any lock
        tracker = connect_tracker(settings, context.workspace)
        with startup_lock(url, settings.study):
            study = open_study(url, settings, key)
            tracker.open_parent(study, {"tune": study_params(settings, context.data.summary)}, redact(url))
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    done = len(finished_trials(study))
    print(f"tune: study {settings.study!r} in {redact(url)}: {done} of {settings.n_trials} trials finished",
          flush=True)
    status, summarize = "FAILED", True  # summarize: the study in MLflow, at the end
    try:
        if context.teacher is not None:
            context.teachers = ensure_teacher(
                context.teacher, context.data, context.model_cfg, context.workspace,
                TeacherRun(tracker.client, tracker.experiment_id, tracker.parent_id,
                           {**tracker.tags, "optuna.study": settings.study},
                           {**context.extra_params, "teacher.seeds": list(context.teacher.configs)}))
        with quiet_optuna():
            run_trials(study, Objective(context, tracker), settings)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"dgnet tune: interrupted; re-run the same command to continue study {settings.study!r}",
              file=sys.stderr)
        return 130
    except TrackingError as exc:
        summarize = False  # the store is away: the next run summarizes the study (and ends the parent)
        print(f"dgnet tune: error: {exc}\ndgnet tune: study {settings.study!r} stopped; re-run the same "
              f"command once the tracking store is back to continue it", file=sys.stderr)
        return 2
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if summarize:
            best_effort("summarize the study in MLflow", tracker.summarize, study, settings.n_trials)
            best_effort("end the MLflow parent run", tracker.end_parent, study, status)
    return report(study, settings, context.workspace, args, tracker, time.monotonic() - started,
                  context.data.summary)


def best_effort(what: str, step: Any, *args: Any) -> None:
    """A reporting step whose failure is only a warning: it must not hide why the study stopped."""
    try:
        step(*args)
    except Exception as exc:
        print(f"dgnet tune: warning: could not {what}: {short(exc)}", file=sys.stderr)


def report(study: optuna.Study, settings: TuneSettings, workspace: Path, args: argparse.Namespace,
           tracker: StudyTracker, seconds: float, split: Mapping[str, Any]) -> int:
    """The finished study's outputs: params/tuned.yaml, the metrics JSON (which split its values
    come from: `score_split`, `validation`), a summary on stdout."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (*FINISHED, TrialState.FAIL)}
    best = best_trial(study)
    # Every value here is a validation-split figure; the test split's come from `dvc repro` after --apply.
    shown_split = {k: v for k, v in split.items() if k not in ("held_out_ids", "query_sha256")}  # numbers
    summary: dict[str, Any] = {"metric": settings.metric, "score_split": SCORE_SPLIT,
                               "validation": shown_split, **counts}
    if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        remove_work_dirs(workspace, f"tune-{settings.study}")
    if best is None:
        write_json(workspace / args.metrics, summary)
        print(f"tune: no complete trial in study {settings.study!r} ({counts}); no tuned weights written")
        return 0
    summary.update({"best_value": round(float(best.value), 6), "best_trial": best.number,
                    **{f"best_{k}": v for k, v in best.params.items()}})
    out = settings.out if settings.out.is_absolute() else workspace / settings.out
    exp_line = write_tuned(out, study, settings, best)
    write_json(workspace / args.metrics, summary)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in best.params.items())
    print(f"tune: {counts} after {seconds:.0f} s; best trial {best.number}: {SCORE_SPLIT} {settings.metric} "
          f"{best.value:.4f} with {shown} ({split['validation_ids']} held-out training ids, "
          f"{split['query_images']} queries, {split['gallery_images']} gallery images; the test split's "
          f"figures come from `dvc repro` after --apply)")
    print(f"tuned weights: {out}; use them with `dgnet tune --apply {settings.out}` "
          f"(or: {exp_line}); MLflow parent run {tracker.parent_id} "
          f"(view: {view_hint(tracker.client.tracking_uri)})")
    return 0


def apply_command(args: argparse.Namespace) -> int:
    try:
        params_file = args.params if args.params is not None else workspace_root() / "params.yaml"
        changes = apply_tuned(args.apply, params_file)
    except DgnetError as exc:
        print(f"dgnet tune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"{params_file}: " + ("; ".join(changes) if changes else "no change"))
    print("now `dvc repro` retrains with these weights")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `dgnet tune` and `python -m stages.tune`; unset ones come from params `tune`."""
    parser.add_argument("--study", default=None, help="study name (params tune.study)")
    parser.add_argument("--n-trials", type=int, default=None,
                        help="run until the study has N finished (complete or pruned) trials")
    parser.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the Optuna storage (default sqlite:///optuna.db at the "
                             "repository root; postgresql+psycopg://user:password@host/db for many workers)")
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (params tune.seed)")
    parser.add_argument("--heartbeat-interval", type=int, default=None,
                        help="seconds between a running trial's heartbeats (0: none)")
    parser.add_argument("--grace-period", type=int, default=None,
                        help="seconds without a heartbeat after which a trial is dead and re-queued")
    parser.add_argument("--out", type=Path, default=None, help="tuned weights file (params tune.out)")
    parser.add_argument("--metrics", type=Path, default=DEFAULT_METRICS, help="summary JSON (dvc metrics)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of params `tune` (dotted, YAML value), e.g. train.iterations=50")
    parser.add_argument("--apply", type=Path, default=None, metavar="TUNED_YAML",
                        help="instead of tuning: copy the weights of a tuned file into params.yaml")
    parser.add_argument("--params", type=Path, default=None, help="with --apply: the params file to change")
    parser.set_defaults(func=command)
    return parser


def command(args: argparse.Namespace) -> int:
    return apply_command(args) if args.apply is not None else run_tune(args)


def add_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `dgnet tune` on the CLI's sub-parsers (entry point group `dgnet.commands`)."""
    parser = subparsers.add_parser(
        "tune", help="tune DG-Net's loss weights with a resumable Optuna study tracked in MLflow",
        description=__doc__.split("\n\n")[0].replace("\n", " "))
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.tune", description=__doc__.splitlines()[0])
    return command(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
