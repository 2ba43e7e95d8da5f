"""Training hooks: how a loop reports what it does, without knowing who listens.

The loops in dgnet/training call these methods on rank 0 only. The library ships a console hook;
the DVC stages add an MLflow hook (dgnet_pipeline/), which is why dgnet itself never imports mlflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dgnet.io import atomic_path


@dataclass
class TrainingResult:
    """What a finished training run leaves behind."""

    kind: str  # "teacher" or "dgnet"
    model_path: Path  # the final model file (see dgnet.models.persist)
    iterations: int
    metrics: dict[str, float] = field(default_factory=dict)  # last evaluation's re-ID metrics
    config: dict[str, Any] = field(default_factory=dict)  # flattened run configuration


class TrainingHooks:
    """Base class: every method is optional and does nothing by default."""

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        """Before the first iteration; `config` is flat (dotted keys) and JSON-serialisable."""

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        """Every `log_every` iterations: losses, loss weights, learning rates, iterations per second."""

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        """At evaluation points: re-ID metrics (rank1, mAP, ... as fractions)."""

    def on_image(self, iteration: int, name: str, image: Image.Image) -> None:
        """A picture worth keeping, e.g. the swap grid at intervals."""

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        """After a checkpoint has been written (atomically)."""

    def on_end(self, result: TrainingResult) -> None:
        """After the final model has been written."""


class HookList(TrainingHooks):
    """Calls several hooks in order: each `on_*` method calls that method of every hook."""

    def __init__(self, hooks: Sequence[TrainingHooks] = ()) -> None:
        self.hooks = list(hooks)


def _call_each(method: str) -> Callable[..., None]:
    def call(self: HookList, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, method)(*args)
    return call


for _method in [name for name in vars(TrainingHooks) if name.startswith("on_")]:
    setattr(HookList, _method, _call_each(_method))


class LossCurve(TrainingHooks):
    """The run's loss curves as a CSV: `iteration`, then one column per `loss/*` term (each the mean
    over its log window), what `dvc plots show` draws. Rewritten atomically at every log window, so a
    killed run leaves a whole file. A resumed run keeps the rows up to where it starts, from this
    file or else from `history` (the warm-up a forked run starts from, so its curve starts at 0)."""

    def __init__(self, path: str | Path, history: str | Path | None = None) -> None:
        self.path = Path(path)
        self.history = None if history is None else Path(history)
        self.rows: list[dict[str, float]] = []

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        source = self.path if self.path.is_file() or self.history is None else self.history
        if source.is_file() and start_iteration > 0:
            earlier = pd.read_csv(source)
            self.rows = earlier[earlier["iteration"] <= start_iteration].to_dict("records")

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        self.rows.append({"iteration": iteration, **{k: v for k, v in logs.items() if k.startswith("loss/")}})
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)


def mean_loss_curves(curves: dict[str, list[Path]]) -> pd.DataFrame:
    """LossCurve files of each model (its seeds) as one long table for one faceted chart: iteration,
    model, loss, value (the mean over the model's seeds at that iteration)."""
    long = pd.concat([pd.read_csv(path).melt("iteration", var_name="loss").assign(model=model)
                      for model, paths in curves.items() for path in paths]).dropna()
    means = long.groupby(["model", "loss", "iteration"], as_index=False, sort=False)["value"].mean()
    return means[["iteration", "model", "loss", "value"]]
