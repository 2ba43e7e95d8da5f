"""The tuned weights: params/tuned.yaml (params.yaml's layout), and `dgnet tune --apply` copying them
into params.yaml with its comments and layout kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial

from dgnet.errors import ConfigError
from dgnet.io import atomic_path
from dgnet.profiles import STAGE_KEYS, resolve_params
from dgnet_pipeline.mlflow_hooks import flatten
from dgnet_pipeline.tune_data import (
    SCORE_SPLIT,
)
from dgnet_pipeline.tune_settings import Knob, TuneSettings
from dgnet_pipeline.tune_study import finished_trials
from dgnet_pipeline.tune_tracking import short
from dgnet_pipeline.workspace import (
    train_config,
)


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
