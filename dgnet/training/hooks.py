"""Training hooks: how a loop reports what it does, without knowing who listens.

The loops in dgnet/training call these methods on rank 0 only. The library ships a console hook;
the DVC stages add an MLflow hook (dgnet_pipeline/), which is why dgnet itself never imports mlflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


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
    """Calls several hooks in order."""

    def __init__(self, hooks: Sequence[TrainingHooks] = ()) -> None:
        self.hooks = list(hooks)

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        for hook in self.hooks:
            hook.on_start(kind, config, start_iteration)

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        for hook in self.hooks:
            hook.on_iteration(iteration, logs)

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        for hook in self.hooks:
            hook.on_evaluation(iteration, metrics)

    def on_image(self, iteration: int, name: str, image: Image.Image) -> None:
        for hook in self.hooks:
            hook.on_image(iteration, name, image)

    def on_checkpoint(self, iteration: int, path: Path) -> None:
        for hook in self.hooks:
            hook.on_checkpoint(iteration, path)

    def on_end(self, result: TrainingResult) -> None:
        for hook in self.hooks:
            hook.on_end(result)
