"""The Optuna study at work: one trial (the training run it is, its pruning and MLflow hooks), and the
study around the trials (one settings fingerprint per study, re-queued interrupted trials, the loop
until n_trials have finished, a TPE sampler seeded per trial so that workers draw alike)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
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
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from dgnet.errors import ConfigError, DgnetError
from dgnet.losses import NonFiniteLossError
from dgnet.profiles import STAGE_KEYS, merge
from dgnet.training.hooks import TrainingHooks, TrainingResult
from dgnet_pipeline.mlflow_hooks import MlflowHooks
from dgnet_pipeline.tracking import (
    redact,
)
from dgnet_pipeline.tune_data import (
    VALIDATION_PREFIX,
    TeacherRecipe,
    TuningData,
)
from dgnet_pipeline.tune_settings import STAGE, Knob, TuneSettings
from dgnet_pipeline.tune_storage import (
    retry_callback,
)
from dgnet_pipeline.tune_tracking import StudyTracker, quiet_optuna, retry_history, short
from dgnet_pipeline.workspace import (
    train_config,
    work_dir,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# Study user attributes: the settings fingerprint (its hash, its text).
SETTINGS_ATTR = "dgnet.settings_hash"
SETTINGS_TEXT_ATTR = "dgnet.settings"


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
