"""The loop skeleton both trainers share: resume, cadences, progress, hooks, checkpoints.

A trainer builds its networks and optimisers, then hands a `TrainingSession`:
- the objects to checkpoint (anything with state_dict / load_state_dict), to `resume`, which
  restores the newest checkpoint into them;
- a `step(iteration, batch) -> logs` function and the batches, to `run`, which calls the step
  for iterations [start, total) and, on their cadences, logs (window means of the step's logs plus
  the trainer's weights / learning rates), pictures, checkpoints and evaluations, then the same at
  the end of the run.
Only rank 0 shows progress, calls hooks, evaluates and writes files. Iterations are counted from 0
(the argument of the schedule functions); hooks and checkpoint names get the number of iterations
completed, so `iter_00000500.pt` holds the state after 500 iterations and resumes at iteration 500.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from dgnet.config import RunConfig
from dgnet.data.manifest import TRAIN_DATA_KEY, mislabelled_train_rows, train_label_map
from dgnet.data.samplers import IterationBatchSampler
from dgnet.data.validated import check_invariants
from dgnet.errors import DatasetError, DgnetError
from dgnet.models.config import ModelConfig
from dgnet.models.persist import save_model
from dgnet.training.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_readable_checkpoint,
    save_checkpoint,
)
from dgnet.training.hooks import HookList, TrainingHooks, TrainingResult
from dgnet.training.runlock import run_lock
from dgnet.training.runtime import (
    DistContext,
    barrier,
    broadcast_object,
    cleanup_distributed,
    determinism,
    init_distributed,
    resolve_amp,
    trained_on,
)


@contextlib.contextmanager
def training_process(cfg: RunConfig, out_dir: Path) -> Iterator[tuple[DistContext, Any]]:
    """This process's part of a run: the torchrun group (if any), the run lock (rank 0), the seeds;
    yields the context and `cfg` with its amp resolved ("auto" -> what runs, which is logged)."""
    ctx = init_distributed(cfg.device)
    try:
        with run_lock(out_dir) if ctx.is_main else contextlib.nullcontext(), \
                determinism(cfg.seed, cfg.deterministic):
            yield ctx, dataclasses.replace(cfg, amp=resolve_amp(ctx.device, cfg.amp))
    finally:
        cleanup_distributed(ctx)


def _due(every: int, done: int) -> bool:
    """Whether a cadence of `every` completed iterations falls on `done` (0 = only at the end)."""
    return every > 0 and done % every == 0


def training_labels(frame: pd.DataFrame) -> dict[int, int]:
    """The training split's label map {person_id: label}, checked against the manifest's label column
    (training takes its number of classes from here, whatever the model profile says)."""
    train = frame[frame["split"] == "train"]
    if train.empty:
        raise DatasetError("training: the manifest has no training images (split 'train')")
    if len(mislabelled_train_rows(frame)):
        raise DatasetError(
            "training: the manifest's label column does not number the train ids 0..C-1 in sorted "
            "person_id order; rebuild the manifest with dgnet.data.manifest.build_manifest"
        )
    return train_label_map(frame)


def training_split(frame: pd.DataFrame, model_cfg: ModelConfig) -> tuple[dict[int, int], ModelConfig]:
    """The checked manifest's label map, and `model_cfg` with one class per training identity."""
    check_invariants(frame)
    label_map = training_labels(frame)
    return label_map, dataclasses.replace(model_cfg, num_classes=len(label_map))


def make_loader(dataset: Dataset, sampler: Iterable[Any], start: int, stop: int, num_workers: int,
                device: torch.device) -> DataLoader:
    """Batches of iterations [start, stop). Workers change nothing: each image's augmentation is seeded
    by the sampler, and the loader gets its own generator so it draws nothing from the global RNG."""
    return DataLoader(dataset, batch_sampler=IterationBatchSampler(sampler, start, stop),
                      num_workers=num_workers, pin_memory=device.type == "cuda", generator=torch.Generator())


class TrainingSession:
    """One training run on this process (see the module docstring): `cfg`'s cadences; the run's flat
    configuration is `cfg` and `model_cfg` with the given extra `sections`."""

    def __init__(self, kind: str, out_dir: str | Path, ctx: DistContext, cfg: RunConfig,
                 model_cfg: ModelConfig, hooks: Sequence[TrainingHooks] = (), **sections: Any) -> None:
        self.kind, self.ctx, self.cfg, self.model_cfg = kind, ctx, cfg, model_cfg
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        self.hooks = HookList(hooks if ctx.is_main else ())
        self.config = flat_config(train=cfg, model=model_cfg, **sections, world_size=ctx.world_size)
        self.metrics: dict[str, float] = {}

    def resume(self, stateful: Mapping[str, Any], identity: Mapping[str, Any], resume: bool = True) -> int:
        """Load the newest checkpoint into `stateful` (what the session then checkpoints); return the
        start iteration. `identity` (e.g. the model configuration) must equal the checkpoint's: another
        model's is an error, not something to half-load. Without `resume`, old checkpoints are deleted,
        so that a fresh run never resumes from a stale one later. Every rank loads rank 0's choice."""
        self.stateful, self.identity = stateful, identity
        path, state = None, None
        if self.ctx.is_main:
            if resume:
                found = newest_readable_checkpoint(self.checkpoint_dir, self.ctx.device, warn=self._warn)
                if found is not None:
                    path, state = found
            else:
                for old in list_checkpoints(self.checkpoint_dir):
                    old.unlink()
        path = broadcast_object(str(path) if path is not None else None, self.ctx)
        if path is None:
            return 0
        if state is None:  # the other ranks load the file rank 0 chose
            state = load_checkpoint(path, map_location=self.ctx.device)
        for name, value in identity.items():
            if state.get("identity", {}).get(name) != value:
                raise CheckpointError(
                    f"checkpoint {path} was written for another {name}; resume with the same settings, "
                    f"or start over with --no-resume (or another --out)"
                )
        for name, obj in stateful.items():
            try:
                obj.load_state_dict(state["state"][name])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(
                    f"checkpoint {path}: cannot restore {name!r} ({type(exc).__name__}: {exc}); "
                    "resume with the settings it was written with, or start over with --no-resume"
                ) from exc
        if self.ctx.is_main:
            print(f"{self.kind}: resumed from {path} at iteration {state['iteration']}")
        return int(state["iteration"])

    def _warn(self, message: str) -> None:
        print(f"{self.kind}: warning: {message}", file=sys.stderr)

    def _save(self, done: int) -> None:
        if not self.ctx.is_main:
            return
        state = {"kind": self.kind, "identity": dict(self.identity),
                 "state": {name: obj.state_dict() for name, obj in self.stateful.items()}}
        path = save_checkpoint(self.checkpoint_dir, done, state, keep=self.cfg.keep_checkpoints)
        self.hooks.on_checkpoint(done, path)

    def run(
        self,
        start: int,
        batches: Iterable[Any],
        step: Callable[[int, Any], Mapping[str, float]],
        describe: Callable[[int], Mapping[str, float]],
        evaluate: Callable[[], Mapping[str, float]] | None = None,
        picture: Callable[[], tuple[str, Image.Image]] | None = None,
        postfix: Sequence[str] = (),
    ) -> dict[str, float]:
        """Run iterations [start, total) (after `resume`); return the last evaluation's metrics ({} without).
        `describe(iteration)` adds values that are not window means (loss weights, learning rates) to
        each log line; `postfix` names the logs shown on the progress bar."""
        total, main = self.cfg.iterations, self.ctx.is_main
        self.hooks.on_start(self.kind, self.config, start)
        sums: dict[str, float] = {}
        count, busy, waiting = 0, 0.0, 0.0
        bar = tqdm(total=total, initial=start, desc=self.kind, disable=not main, dynamic_ncols=True)
        done, fetching = start, False
        try:
            iterator = iter(batches)
            for iteration in range(start, total):
                tick = time.perf_counter()
                fetching = True
                batch = next(iterator)
                fetching, fetched = False, time.perf_counter()
                logs = step(iteration, batch)
                done = iteration + 1
                busy += time.perf_counter() - tick
                waiting += fetched - tick
                count += 1
                for name, value in logs.items():
                    sums[name] = sums.get(name, 0.0) + value
                bar.update(1)
                if main and (done % 10 == 0 or done == total) and postfix:
                    bar.set_postfix({name.split("/")[-1]: logs[name] for name in postfix if name in logs})
                if _due(self.cfg.log_every, done) or (done == total and self.cfg.log_every > 0):
                    window = {name: value / count for name, value in sums.items()}
                    window.update(describe(iteration))
                    window.update({"time/iteration": busy / count, "time/data": waiting / count,
                                   "speed/it_per_s": count / max(busy, 1e-9)})
                    self.hooks.on_iteration(done, window)
                    sums, count, busy, waiting = {}, 0, 0.0, 0.0
                if done < total:
                    self._events(done, evaluate, picture, at_end=False)
        except Exception as exc:
            # Reading a batch failed, or an image of a picture or evaluation: the networks hold the
            # state of `done` iterations. (Not so inside a step, which may have updated some of
            # them; other failures, e.g. of the tracking store, keep their own handling.)
            if fetching or isinstance(exc, DatasetError):
                raise self._stopped(done, exc) from exc
            raise
        finally:
            bar.close()
        self._events(max(start, total), evaluate, picture, at_end=start < total)
        return self.metrics

    def _stopped(self, completed: int, exc: Exception) -> DgnetError:
        """The error to stop with when reading data (a picture, an evaluation) failed between steps: the
        state of `completed` iterations is checkpointed first (rank 0) and the message says where; the
        error keeps the original's class (and exit code) when it is ours."""
        message = worker_error_message(str(exc))
        if not isinstance(exc, DgnetError):
            message = f"{type(exc).__name__}: {message}"
        kept = latest_checkpoint(self.checkpoint_dir) if self.ctx.is_main else None
        if not self.ctx.is_main:
            saved = "rank 0 keeps the checkpoints"
        elif completed == 0:
            saved = "no iteration had completed, so there is no checkpoint"
        elif kept == checkpoint_path(self.checkpoint_dir, completed):
            saved = f"checkpoint {kept} holds the {completed} completed iterations"
        else:
            try:
                self._save(completed)
                saved = (f"wrote checkpoint {checkpoint_path(self.checkpoint_dir, completed)} of the "
                         f"{completed} completed iterations")
            except Exception as save_exc:
                saved = (f"could not write a checkpoint ({type(save_exc).__name__}: {save_exc}); the "
                         f"newest kept is {kept}")
        where = (f"{self.kind}: stopped after {completed} of {self.cfg.iterations} iterations: "
                 f"{message}; {saved}; fix the cause and run the same command again to resume")
        kind = type(exc) if isinstance(exc, DgnetError) else DgnetError
        try:
            return kind(where)
        except TypeError:  # an error class with another constructor
            return DgnetError(where)

    def _events(self, done: int, evaluate: Callable[[], Mapping[str, float]] | None,
                picture: Callable[[], tuple[str, Image.Image]] | None, at_end: bool) -> None:
        """Checkpoint first (it protects the progress), then picture and evaluation (rank 0)."""
        cfg, final = self.cfg, done >= self.cfg.iterations
        if at_end or _due(cfg.checkpoint_every, done):
            self._save(done)
        if not self.ctx.is_main:
            return
        if picture is not None and (final or _due(getattr(cfg, "image_every", 0), done)):
            name, image = picture()
            self.hooks.on_image(done, name, image)
        if evaluate is not None and (final or _due(cfg.eval_every, done)):
            self.metrics = dict(evaluate())
            self.hooks.on_evaluation(done, self.metrics)
            shown = ", ".join(f"{k} {self.metrics[k]:.4f}" for k in ("rank1", "mAP") if k in self.metrics)
            print(f"{self.kind}: iteration {done}: {shown}")

    def finish(self, model: torch.nn.Module, label_map: dict[int, int], data: str, **extra: Any
               ) -> TrainingResult:
        """Rank 0 writes out_dir/model.pt (label map, training data, iterations, seed, `extra`, the
        metrics and where it trained); every rank returns the run's result once the file exists; rank 0
        tells the hooks."""
        model_path, cfg = self.out_dir / "model.pt", self.cfg
        if self.ctx.is_main:
            save_model(model_path, model, self.kind, self.model_cfg, extra={
                "label_map": label_map, TRAIN_DATA_KEY: data, "iterations": cfg.iterations, "seed": cfg.seed,
                **extra, "metrics": self.metrics, "trained_on": trained_on(self.ctx.device, cfg.amp,
                                                                           self.ctx.world_size)})
        barrier()
        result = TrainingResult(self.kind, model_path, cfg.iterations, dict(self.metrics), dict(self.config))
        self.hooks.on_end(result)
        return result


def worker_error_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker, whose text is the
    worker's whole traceback ("Caught X in DataLoader worker process 0. Original Traceback ...")."""
    if not text.startswith("Caught ") or "Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    _, sep, message = last.partition(": ")
    return message if sep else text


def flat_config(**sections: Any) -> dict[str, Any]:
    """{"section.field": value} for dataclasses / mappings, nested fields dotted; JSON-friendly values."""
    flat: dict[str, Any] = {}
    for name, value in sections.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            inner = flat_config(**{str(key): item for key, item in value.items()})
            flat.update({f"{name}.{key}": item for key, item in inner.items()})
        elif isinstance(value, tuple | list):
            flat[name] = [str(v) if isinstance(v, Path) else v for v in value]
        else:
            flat[name] = str(value) if isinstance(value, Path) else value
    return flat
