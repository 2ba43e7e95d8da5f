"""The checkpoints the DG-Net authors released, read into dgnet's own paper-profile networks.

Their files (docs/published_model.md): the generator, discriminator and appearance encoder as
`{'a': state_dict}`, the teacher as a bare state dict with its `stride` in `opts.yaml` beside it.
Every published key maps to exactly one dgnet key of the same shape, by the rules below; the only
keys without a dgnet counterpart are torchvision's unused ImageNet classifier (`model.fc.*`) and the
running buffers of the decoder's AdaIN layers (AdaIN normalises each image with its own statistics).
Anything else (an unknown or missing key, a shape that does not fit, a file of another kind) is a
ModelFileError that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dgnet.errors import ModelFileError
from dgnet.models.config import ModelConfig
from dgnet.models.dgnet import DGNet
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile

# Each released file: what it is, the key prefix that identifies it, and whether it is {'a': state_dict}.
NETWORKS = {
    "gen": ("generator (gen_00100000.pt: structure encoder enc_content.*, decoder dec.*, AdaIN MLPs mlp_*)",
            "enc_content.", True),
    "dis": ("discriminator (dis_00100000.pt: cnns.*)", "cnns.", True),
    "id": ("appearance encoder (id_00100000.pt: model.*, classifier1.*, classifier2.*)", "classifier1.",
           True),
    "teacher": ("teacher (net_last.pth: model.*, classifier.*)", "classifier.add_block.", False),
}

Rule = tuple[str, str | Callable[[re.Match[str]], str]]


def _head(theirs: str, ours: str) -> list[Rule]:
    """A published ClassBlock (add_block: Linear, BatchNorm1d; classifier: Linear) onto an IdHead."""
    return [(rf"{theirs}\.add_block\.0\.", f"{ours}.embed."), (rf"{theirs}\.add_block\.1\.", f"{ours}.bn."),
            (rf"{theirs}\.classifier\.0\.", f"{ours}.classifier.")]


# (published key pattern, dgnet prefix) per file; a pattern matches the start of a key and the rest
# of the key (weight, bias, running_mean, ...) is kept. A published Conv2dBlock's `.conv` is the
# first layer of our ConvBlock (`.0`).
RULES: dict[str, list[Rule]] = {
    "gen": [
        (r"enc_content\.model\.([0-3])\.conv\.", r"structure_encoder.stem.\1.0."),
        (r"enc_content\.model\.4\.model\.(\d+)\.model\.(\d+)\.conv\.",
         r"structure_encoder.blocks.\1.body.\2.0."),
        (r"enc_content\.model\.5\.conv1\.conv\.", "structure_encoder.aspp.branches.0.0."),
        (r"enc_content\.model\.5\.conv6\.(\d)\.conv\.", r"structure_encoder.aspp.branches.1.\1.0."),
        (r"enc_content\.model\.5\.conv12\.(\d)\.conv\.", r"structure_encoder.aspp.branches.2.\1.0."),
        (r"enc_content\.model\.5\.conv18\.(\d)\.conv\.", r"structure_encoder.aspp.branches.3.\1.0."),
        (r"enc_content\.model\.5\.fuse\.conv\.", "structure_encoder.aspp.fuse.0."),
        (r"dec\.model\.1\.model\.(\d+)\.model\.(\d)\.conv\.",
         lambda m: f"decoder.blocks.{m[1]}.conv{int(m[2]) + 1}."),
        (r"dec\.model\.3\.conv\.", "decoder.upsample.0.conv."),
        (r"dec\.model\.5\.conv\.", "decoder.upsample.1.conv."),
        (r"dec\.model\.([35])\.norm\.gamma$", lambda m: f"decoder.upsample.{int(m[1]) // 4}.norm.weight"),
        (r"dec\.model\.([35])\.norm\.beta$", lambda m: f"decoder.upsample.{int(m[1]) // 4}.norm.bias"),
        (r"dec\.model\.([67])\.conv\.", lambda m: f"decoder.refine.{int(m[1]) - 6}.0."),
        (r"dec\.model\.8\.conv\.", "decoder.to_image."),
        # mlp_w<k> gives block k's AdaIN scales, mlp_b<k> its biases; their Linear layers sit at
        # every other index of our Sequential (a LeakyReLU between them).
        (r"mlp_([wb])([1-9])\.model\.(\d)\.fc\.",
         lambda m: f"decoder.mapping.{'scale' if m[1] == 'w' else 'bias'}_mlps."
                   f"{int(m[2]) - 1}.{2 * int(m[3])}."),
    ],
    "dis": [
        (r"cnns\.(\d)\.([0-4])\.conv\.", r"discriminator.scales.\1.net.\2.0."),
        (r"cnns\.(\d)\.([5-8])\.model\.(\d)\.conv\.", r"discriminator.scales.\1.net.\2.body.\3.0."),
        (r"cnns\.(\d)\.9\.", r"discriminator.scales.\1.net.9."),
    ],
    "id": [(r"model\.(?!fc\.)", "appearance_encoder.trunk."),
           *_head("classifier1", "appearance_encoder.primary_head"),
           *_head("classifier2", "appearance_encoder.fine_head")],
    "teacher": [(r"model\.(?!fc\.)", "trunk."), *_head("classifier", "head")],
}
# Published keys with no dgnet counterpart (docs/published_model.md says why).
UNUSED = {"gen": r"dec\..*\.norm\.running_(mean|var)$", "dis": r"$^",
          "id": r"model\.fc\.", "teacher": r"model\.fc\."}


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _inner(state: Any, net: str) -> dict | None:
    """The state dict inside a loaded file if it is network `net`'s, else None."""
    _, signature, wrapped = NETWORKS[net]
    inner = state.get("a") if wrapped and isinstance(state, dict) else state
    return inner if isinstance(inner, dict) and any(str(k).startswith(signature) for k in inner) else None


def read_published(path: str | os.PathLike, net: str) -> dict[str, torch.Tensor]:
    """The state dict of a released file of network `net`, loaded with `weights_only=True`."""
    path = Path(path)
    what, signature, wrapped = NETWORKS[net]
    what = f"published {what}"
    if not path.is_file():
        raise ModelFileError(f"{what}: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or a pickle of code
        raise ModelFileError(f"{what}: {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    inner = _inner(state, net)
    if inner is None:
        looks = next((f"it looks like the {NETWORKS[n][0]}" for n in NETWORKS
                      if _inner(state, n) is not None), "it is none of the released files")
        layout = "{'a': state_dict}" if wrapped else "a bare state dict"
        raise ModelFileError(f"{what}: {path} is not that file (expected {layout} with {signature}* keys); "
                             f"{looks}")
    bad = [k for k, v in inner.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelFileError(f"{what}: {path}: entry {bad[0]!r} is not a tensor")
    return inner


def map_keys(state: Mapping[str, torch.Tensor], net: str,
             path: str | os.PathLike) -> dict[str, tuple[str, torch.Tensor]]:
    """{dgnet key: (published key, tensor)}; the UNUSED keys dropped, a key no rule maps is an error."""
    mapped: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        if re.match(UNUSED[net], key):
            continue
        for pattern, target in RULES[net]:
            match = re.match(pattern, key)
            if match:
                ours = match.expand(target) if isinstance(target, str) else target(match)
                mapped[ours + key[match.end():]] = (key, value)
                break
        else:
            raise ModelFileError(f"published {NETWORKS[net][0]} {path}: key {key!r} is not one of the "
                                 "published paper configuration's (a checkpoint of another architecture?)")
    return mapped


# The dgnet key prefixes each released file fills, and the classifier that gives the class count.
_PREFIXES = {"gen": ("structure_encoder.", "decoder."), "id": ("appearance_encoder.",),
             "dis": ("discriminator.",), "teacher": ("trunk.", "head.")}
_CLASSES = {"id": "classifier1.classifier.0.weight", "teacher": "classifier.classifier.0.weight"}


def _imported(network: type[nn.Module], paths: dict[str, Path],
              **profile: Any) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """A paper-profile `network` filled from the released `paths` {net: file}: (model in eval mode,
    its config, {net: {path, sha256}})."""
    states = {net: read_published(path, net) for net, path in paths.items()}
    net, key = next((n, k) for n, k in _CLASSES.items() if n in paths)
    if key not in states[net] or states[net][key].dim() != 2:
        raise ModelFileError(f"{paths[net]}: no classifier weight {key!r} to read the number of classes from")
    cfg = get_profile("paper", num_classes=int(states[net][key].shape[0]), **profile)
    model = network(dataclasses.replace(cfg, pretrained=False, require_pretrained=False))
    ours, filled = model.state_dict(), {}
    for net, state in states.items():
        for key, (theirs, value) in map_keys(state, net, paths[net]).items():
            if key not in ours:
                raise ModelFileError(f"{paths[net]}: key {theirs!r} (our {key!r}) has no place in the paper "
                                     "profile")
            if tuple(value.shape) != tuple(ours[key].shape):
                raise ModelFileError(f"{paths[net]}: {theirs!r} has shape {tuple(value.shape)}, the paper "
                                     f"profile's {key!r} has {tuple(ours[key].shape)} (a checkpoint of "
                                     "another width or class count?)")
            filled[key] = value
    source = {prefix: paths[net] for net in paths for prefix in _PREFIXES[net]}
    missing = sorted(k for k in ours if k.startswith(tuple(source)) and k not in filled)
    if missing:
        raise ModelFileError(f"{next(source[p] for p in source if missing[0].startswith(p))}: no published "
                             f"key fills our {missing[0]!r} ({len(missing)} of ours unfilled; a truncated "
                             "or partial checkpoint?)")
    model.load_state_dict({**ours, **filled}, strict=True)
    return model.eval(), cfg, {net: {"path": str(p), "sha256": sha256(p)} for net, p in paths.items()}


def teacher_stride(path: str | os.PathLike, given: int | None) -> int:
    """The teacher's last stride: `opts.yaml` beside the file when there is one (a `given` stride
    that contradicts it is an error), else `given` (an error when None)."""
    import yaml

    opts = Path(path).with_name("opts.yaml")
    if not opts.is_file():
        if given is None:
            raise ModelFileError(f"teacher {path}: no opts.yaml beside it to read its stride from; "
                                 "give --teacher-stride 1 or 2 (the stride it was trained with)")
        return given
    try:
        stride = (yaml.safe_load(opts.read_text()) or {}).get("stride")
    except (yaml.YAMLError, AttributeError) as exc:
        raise ModelFileError(f"teacher options {opts}: not a YAML mapping ({exc})") from exc
    if stride not in (1, 2):
        raise ModelFileError(f"teacher options {opts}: stride must be 1 or 2, got {stride!r}")
    if given is not None and given != stride:
        raise ModelFileError(f"--teacher-stride {given} contradicts {opts} (stride: {stride})")
    return stride


def import_published(out: str | os.PathLike, gen: str | os.PathLike, id_: str | os.PathLike,
                     dis: str | os.PathLike | None = None, teacher: str | os.PathLike | None = None,
                     stride: int | None = None) -> dict[str, Path]:
    """Write OUT/model.pt (DG-Net, paper profile; without `dis`, D keeps its initialisation: only
    training uses it) and, with `teacher`, OUT/teacher/model.pt (a ResNet-50 baseline, average
    pooling): dgnet model files whose `extra["provenance"]` names the released files and their
    SHA-256. Everything is read and checked before anything is written."""
    from dgnet.models.persist import save_model

    out = Path(out)
    paths = {"gen": Path(gen), "id": Path(id_), **({"dis": Path(dis)} if dis is not None else {})}
    model, cfg, files = _imported(DGNet, paths)
    provenance = {"source": "published DG-Net checkpoints", "files": files,
                  "discriminator": "published" if dis is not None else "initialised (no --dis given)"}
    if teacher is not None:
        stride = teacher_stride(teacher, stride)
        net, net_cfg, net_files = _imported(ReidBaseline, {"teacher": Path(teacher)}, teacher_pooling="avg",
                                            teacher_last_stride=stride)
    written = {"dgnet": save_model(out / "model.pt", model, "dgnet", cfg, extra={"provenance": provenance})}
    if teacher is not None:
        written["teacher"] = save_model(out / "teacher" / "model.pt", net, "teacher", net_cfg, extra={
            "provenance": {"source": "published DG-Net teacher", "stride": stride, "files": net_files}})
    return written
