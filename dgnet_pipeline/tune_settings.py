"""params `tune`: the study's settings, its search space and its pruner, parsed once and checked
(ConfigError names the key)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from dgnet.checks import check_int, check_number
from dgnet.data.splits import check_fraction
from dgnet.errors import ConfigError

STAGE = "tune"  # the params section, and the MLflow runs' dgnet.stage

DEFAULT_STORAGE = "sqlite:///optuna.db"  # relative: against the repository root (DVC_ROOT in dvc exp)
DEFAULT_OUT = Path("params/tuned.yaml")
METRICS = ("mAP", "rank1", "mINP")
PRUNERS = ("median", "threshold", "none")
PRUNER_KEYS = {"kind", "n_warmup_steps", "interval_steps", "n_startup_trials", "lower"}  # lower: threshold
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


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


def _number(value: Any, where: str) -> float:
    return float(check_number(value, where, low=-math.inf))


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
    heartbeat = None if heartbeat in (None, 0) else check_int(heartbeat, "tune.heartbeat_interval", 1)
    grace = values.get("grace_period")
    grace = None if grace is None or heartbeat is None else check_int(grace, "tune.grace_period", 1)
    if grace is not None and grace <= heartbeat:
        raise ConfigError(f"tune.grace_period: {grace} s must exceed heartbeat_interval {heartbeat} s")
    sampler = values.get("sampler") or {}
    if not isinstance(sampler, Mapping) or set(sampler) - {"n_startup_trials"}:
        raise ConfigError("tune.sampler: only `n_startup_trials` is configurable")
    log_models = values.get("log_models", False)
    if not isinstance(log_models, bool):
        raise ConfigError(f"tune.log_models: must be true or false, got {log_models!r}")
    return TuneSettings(
        study=study, n_trials=check_int(values.get("n_trials", 10), "tune.n_trials", 1),
        seed=check_int(values.get("seed", 0), "tune.seed", 0),
        storage=str(values.get("storage") or DEFAULT_STORAGE), metric=metric,
        base=str(values.get("base", "train")), train=dict(train), space=parse_space(values.get("space")),
        startup_trials=check_int(sampler.get("n_startup_trials", 10), "tune.sampler.n_startup_trials", 0),
        pruner=parse_pruner(values.get("pruner") or {}), heartbeat_interval=heartbeat, grace_period=grace,
        max_retry=check_int(values.get("max_retry", 2), "tune.max_retry", 0), log_models=log_models,
        out=Path(values.get("out") or DEFAULT_OUT),
        validation_fraction=check_fraction(values.get("validation_fraction", 0.25)),
        validation_seed=check_int(values.get("validation_seed", 0), "tune.validation_seed", 0),
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
    pruner = {"kind": kind, "n_warmup_steps": check_int(values.get("n_warmup_steps", 0),
                                                       "tune.pruner.n_warmup_steps", 0),
              "interval_steps": check_int(values.get("interval_steps", 1), "tune.pruner.interval_steps", 1)}
    if kind == "median":
        pruner["n_startup_trials"] = check_int(values.get("n_startup_trials", 3),
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
