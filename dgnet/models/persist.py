"""Trained-model files: the weights with everything needed to rebuild the network that holds them.

A model file is a dict saved with torch.save (atomically): a format marker, the kind ("teacher"
for a ReidBaseline, "dgnet" for a DGNet), the ModelConfig as a plain dict, the state dict (on
the CPU) and `extra`, which holds at least the training split's label map {person_id: label}
when the trainer writes it. It loads with `weights_only=True`: plain containers and tensors only.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgnet.errors import DgnetError, ModelFileError
from dgnet.io import atomic_path
from dgnet.models.config import ModelConfig
from dgnet.models.dgnet import DGNet
from dgnet.models.teacher import ReidBaseline

FORMAT = "dgnet-model"
VERSION = 1
KINDS: dict[str, type[nn.Module]] = {"teacher": ReidBaseline, "dgnet": DGNet}
# What produces each kind, for the message about a missing file.
_PRODUCER = {"teacher": "run the teacher stage first (`dgnet train-teacher`)",
             "dgnet": "run the train stage first (`dgnet train`)"}


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about its model."""

    path: Path
    kind: str
    config: ModelConfig
    label_map: dict[int, int] | None = None  # training split {person_id: label}, when stored
    extra: dict[str, Any] = field(default_factory=dict)


def save_model(path: str | os.PathLike, model: nn.Module, kind: str, model_cfg: ModelConfig,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s weights, kind and config to `path` atomically; return the path. `extra` holds
    plain values; the training label map under "label_map" lets a consumer check the identities."""
    if kind not in KINDS:
        raise ValueError(f"save_model: kind must be one of {sorted(KINDS)}, got {kind!r}")
    model = getattr(model, "module", model)  # the plain module behind DDP / DataParallel ...
    model = getattr(model, "_orig_mod", model)  # ... and torch.compile
    if not isinstance(model, KINDS[kind]):
        raise TypeError(f"save_model: kind {kind!r} holds a {KINDS[kind].__name__}, "
                        f"got {type(model).__name__}")
    payload = {"format": FORMAT, "version": VERSION, "kind": kind,
               "model_config": dataclasses.asdict(model_cfg),
               "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
               "extra": dict(extra or {})}
    # torch.save names the zip's top folder after the file; saving to memory first keeps it
    # "archive", so equal weights give byte-identical files (DVC then skips downstream stages).
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def read_model_file(path: str | os.PathLike, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], ModelInfo]:
    """The raw payload and its ModelInfo, without building the network; ModelFileError if unfit."""
    path = Path(path)
    what = kind or "model"
    if not path.is_file():
        hint = _PRODUCER.get(kind or "", "check the path")
        raise ModelFileError(f"missing {what}: {path} does not exist — {hint}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise ModelFileError(f"{what} file {path} cannot be read ({type(exc).__name__}: {exc}); is it a "
                             "dgnet model file?") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{what} file {path} is not a dgnet model file (no '{FORMAT}' marker); "
                             "model files are written by `dgnet train-teacher` / `dgnet train`")
    if payload.get("version") != VERSION:
        raise ModelFileError(f"{what} file {path}: format version {payload.get('version')!r}, "
                             f"this dgnet reads version {VERSION}")
    stored_kind = payload.get("kind")
    if stored_kind not in KINDS:
        raise ModelFileError(f"{what} file {path}: unknown kind {stored_kind!r}")
    if kind is not None and stored_kind != kind:
        raise ModelFileError(f"{path} holds a {stored_kind} model, a {kind} model is needed here")
    try:
        config = ModelConfig(**payload["model_config"])
    except (TypeError, DgnetError) as exc:
        raise ModelFileError(f"{what} file {path}: its model configuration is not valid here "
                             f"({exc})") from exc
    extra = dict(payload.get("extra") or {})
    label_map = extra.get("label_map")
    label_map = {int(k): int(v) for k, v in label_map.items()} if label_map is not None else None
    return payload, ModelInfo(path, stored_kind, config, label_map, extra)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               kind: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the network stored in `path` with its weights, in eval mode; `kind` checked when given.
    ImageNet weights are never looked for: the stored state dict replaces them anyway."""
    payload, info = read_model_file(path, kind, map_location)
    build_cfg = dataclasses.replace(info.config, pretrained=False, require_pretrained=False)
    model = KINDS[info.kind](build_cfg)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{info.kind} file {path}: weights do not fit the stored configuration "
                             f"({exc})") from exc
    return model.to(map_location).eval(), info
