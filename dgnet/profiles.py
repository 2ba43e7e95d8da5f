"""The profiles: one `profile:` key selects the model, teacher and train settings together, and
`read_params`, the one reader of a params file.

params.yaml's `model`, `teacher` and `train` hold only what differs from the profile, in the same key
names. A profile is written as its differences from the dataclass defaults (the paper's). Schedule
numbers are written for the paper's run lengths (`scale_schedule_from`) and compressed to
`iterations`, so that changing only the length keeps the warm-up and LR steps at the same fractions.
Imports no torch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from dgnet.config import (
    STAGE_CLASSES,
    TOP_LEVEL,
    DataConfig,
    DGNetTrainConfig,
    EvaluateConfig,
    MlflowConfig,
    Params,
    TeacherTrainConfig,
    TuneConfig,
    ValidateConfig,
    build_train_config,
    config_from_mapping,
    read_params_file,
    section_config,
    stage_config,
)
from dgnet.errors import ConfigError
from dgnet.models.config import ModelConfig

DEFAULT_PROFILE = "cpu"  # params without `profile:`, and `dgnet config show` outside a workspace
CLI_PROFILE = "paper"  # `dgnet train` / `train-teacher` without --profile or a params file: a GPU machine
SECTIONS = ("model", "teacher", "train")
STAGE_KEYS = {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in STAGE_CLASSES.items()}
CONFIG_CLASSES = {"teacher": TeacherTrainConfig, "train": DGNetTrainConfig}

_PAPER_RUN = {"log_every": 100, "device": "cuda", "amp": "bf16", "num_workers": 8}
# Sized for 2 CPU cores: evaluation and checkpoints often enough to see progress and to resume, and
# no loader workers (data loading is ~1% of an iteration here; workers only compete for the cores).
# On the GPU where there is one ("auto"), as users of other toolkits expect.
_CPU_RUN = {"log_every": 10, "eval_every": 200, "checkpoint_every": 200, "device": "auto", "num_workers": 0}

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # docs/method.md sections 2-4 and 8: 256x128 ResNet-50, batch 8 per stream, 100k iterations with
    # the warm-up from 30k and LR steps at 60k and 90k; the teacher 24k iterations at batch 32; E_a
    # from ImageNet. On a CUDA GPU in bf16 (fp16's loss scale does not reach R1's gradient).
    "paper": {
        # ImageNet initialisation is part of it: without it the paper configuration loses tens of
        # rank-1 points, so it refuses to start without the weights (override require_pretrained: false).
        "model": {},
        "teacher": {"scale_schedule_from": 24_000, **_PAPER_RUN},
        "train": {"scale_schedule_from": 100_000, **_PAPER_RUN},
    },
    # `dvc repro` on the synthetic data on 2 CPU cores: the teacher in ~1 min and each DG-Net variant in
    # ~6 min. What departs from the paper besides the sizes is said (and measured) beside it.
    "cpu": {
        "model": {
            # ResNet-18 at torchvision's width (backbone_width 32 makes the trunk, about half of an
            # iteration, ~4x cheaper, but its teacher reaches only mAP 29.9 against 41.4 in 600 its).
            "backbone": "resnet18",
            "require_pretrained": False,  # no ImageNet weights on CPU machines: E_a starts from the teacher
            "image_height": 64, "image_width": 32, "embedding_dim": 128,
            "structure_widths": (8, 16, 16, 32), "structure_residual_blocks": 2, "aspp_width": 16,
            "aspp_dilations": (2, 4, 6),
            # A 32x16 code (one downsampling, as many numbers as 64 channels at 16x8): at 64x32 a 16x8
            # code is too coarse for the pose and trousers to transfer; the 32x16 one sharpens the
            # swaps at the same cost (docs/generator_diagnosis.md, section 4).
            "structure_channels": 32, "structure_downsamplings": 1, "decoder_widths": (16,),
            "mlp_hidden": (128,), "discriminator_widths": (16, 32), "discriminator_residual_blocks": 1,
        },
        "teacher": {
            "scale_schedule_from": 24_000,
            "iterations": 600,  # rank-1 ~0.20 on the synthetic test set (1000: ~0.28, twice the time)
            **_CPU_RUN,
        },
        "train": {
            "scale_schedule_from": 100_000,  # warm-up 180, LR steps at 360 and 540 of 600
            "iterations": 600,
            "lr_generator": 0.001,  # paper 0.0001, for 100k iterations
            "lr_discriminator": 0.001,  # as fast as G here, or D stays at chance and its gradient is noise
            # paper (0, 0.999); beta1 0.5 reconstructs better in 600: 0.067 vs 0.075 L1
            # (docs/generator_diagnosis.md)
            "adam_betas": [0.5, 0.999],
            # Not the paper's (0: L_id^c at full weight from iteration 0): L_id^c grows linearly over
            # the first 30% of the run, so G learns to reconstruct before it must carry identity.
            # 600 its: recon 0.062 -> 0.055, swap SSIM (person) 0.357 -> 0.366, mAP 46.0 -> 47.7.
            "schedule": {"id_generated_ramp": 30_000},
            # E_a's trunk starts from the teacher's (the paper: from ImageNet). Without ImageNet
            # weights a random E_a learns identities, and so appearance codes, too slowly for 600
            # iterations: the swaps then ignore the appearance donor (all rows of the grid alike).
            "init_appearance_from_teacher": True,
            **_CPU_RUN,
            "image_every": 100,
            "checkpoint_every": 100,
            # bf16 where the hardware has it (AVX512-BF16/AMX CPUs), else fp32: the same figures;
            # emulated bf16 (AVX2 CPUs) is ~30x slower per convolution.
            "amp": "auto",
        },
    },
    # Unit tests: the smallest networks; the run settings are the tests' own (the paper's otherwise,
    # on the CPU), and schedule numbers are used as written.
    "tiny": {
        "model": {  # the smallest shapes that still exercise every layer
            "backbone": "resnet18", "pretrained": False, "require_pretrained": False,
            "image_height": 64, "image_width": 32, "num_classes": 8, "embedding_dim": 16,
            "structure_widths": (4, 8, 8, 8), "structure_residual_blocks": 1, "aspp_width": 4,
            "aspp_dilations": (1, 2, 3), "structure_channels": 16, "decoder_residual_blocks": 2,
            "decoder_widths": (8, 8), "mlp_hidden": (16,), "discriminator_widths": (4, 8),
            "discriminator_residual_blocks": 1,
        },
        "teacher": {"device": "cpu", "num_workers": 0},
        "train": {"device": "cpu", "num_workers": 0},
    },
}


def get_profile(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of profile `name` with `overrides` applied (e.g. `num_classes=751`)."""
    if name not in PROFILES:
        raise ConfigError(f"model profile: {name!r} is not one of {sorted(PROFILES)}")
    return config_from_mapping(ModelConfig, {**PROFILES[name]["model"], **overrides},
                               f"model profile {name!r}")


MODEL_PROFILES = {name: get_profile(name) for name in PROFILES}  # name -> ModelConfig


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied key by key, nested mappings merged (neither is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        both = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = merge(merged[key], value) if both else copy.deepcopy(value)
    return merged


def resolve_params(params: Mapping[str, Any], profile: str | None = None) -> dict[str, Any]:
    """params with `teacher` and `train` put over the profile's (params' keys win; `profile`, else
    params' `profile:`). `model` stays the user's ModelConfig fields: `model_config` applies them."""
    if not isinstance(params, Mapping):
        raise ConfigError("params must be a mapping of sections")
    name = profile or params.get("profile", DEFAULT_PROFILE)
    if name not in PROFILES:
        raise ConfigError(f"profile: {name!r} is not one of {sorted(PROFILES)}")
    resolved = {**copy.deepcopy(dict(params)), "profile": name}
    for section in SECTIONS:
        values = {} if params.get(section) is None else params[section]
        if not isinstance(values, Mapping):
            raise ConfigError(f"params `{section}:` must be a mapping, got {type(values).__name__}")
        if section == "model" and ({"profile", "overrides"} & set(values)):
            raise ConfigError("model.profile / model.overrides: the profile is now the top-level "
                              "`profile:` key, and `model:` holds ModelConfig fields directly "
                              "(e.g. `model: {backbone: resnet34}`)")
        resolved[section] = dict(values) if section == "model" else merge(PROFILES[name][section], values)
    return resolved


def apply_assignments(values: Mapping[str, Any], assignments: Iterable[str],
                      where: str = "params") -> dict[str, Any]:
    """`key.sub=value` assignments (values parsed as YAML), keys relative to `values`, applied to a copy."""
    values = copy.deepcopy(dict(values))
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.objective.r1_weight=0")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
        node, (*parents, leaf) = values, key.split(".")
        for depth, name in enumerate(parents):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {assignment!r}: {where}.{'.'.join(parents[:depth + 1])} "
                                  f"is not a mapping")
        node[leaf] = value
    return values


def resolve_cli_params(path: Path | None, assignments: Iterable[str] = (), profile: str | None = None,
                       default: str = CLI_PROFILE) -> dict[str, Any]:
    """`--params FILE`, then `--set`, over `--profile` (else the file's `profile:`, else `default`)."""
    params = apply_assignments(read_params_file(path), assignments)
    return resolve_params(params, profile=profile or params.get("profile") or default)


def set_iterations(params: dict[str, Any], section: str, iterations: int) -> None:
    """`--iterations N`: `section` of resolved params runs N iterations with its schedule at the same
    fractions (numbers without `scale_schedule_from` are taken as written for its own length)."""
    values = params[section]
    default = next(f.default for f in dataclasses.fields(CONFIG_CLASSES[section]) if f.name == "iterations")
    values.setdefault("scale_schedule_from", values.get("iterations", default))
    values["iterations"] = iterations


def model_config(params: Mapping[str, Any], num_classes: int | None = None) -> ModelConfig:
    """The ModelConfig of resolved params: the profile's, changed by `model:` (and the data's classes)."""
    overrides = dict(params.get("model") or {})
    if num_classes is not None:
        if overrides.get("num_classes", num_classes) != num_classes:
            raise ConfigError(f"model.num_classes: {overrides['num_classes']} differs from the {num_classes} "
                              f"training identities of the manifest; leave it out (it is set from there)")
        overrides["num_classes"] = num_classes
    return get_profile(params.get("profile", DEFAULT_PROFILE), **overrides)


def run_config(params: Mapping[str, Any], section: str, fixed: Mapping[str, Any] | None = None) -> Any:
    """The TeacherTrainConfig / DGNetTrainConfig of a resolved section, schedule scaled to its length."""
    return build_train_config(CONFIG_CLASSES[section], params[section], section, fixed)[0]


def resolved_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """What `dgnet config show` prints: the model's fields (`num_classes` null: it is the manifest's),
    the teacher's and DG-Net's after scaling (what the trainers get), their stage keys beside them."""
    shown: dict[str, Any] = {"profile": params["profile"],
                             "model": {**dataclasses.asdict(model_config(params)), "num_classes": None}}
    for section in ("teacher", "train"):
        stage = {k: params[section][k] for k in STAGE_KEYS[section] if k in params[section]}
        shown[section] = {**dataclasses.asdict(run_config(params, section)), **stage,
                          "scale_schedule_from": params[section].get("scale_schedule_from")}
    return _plain(shown)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (JSON and YAML print them alike)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def read_params(path: Path, ablation: str | None = None, assignments: Iterable[str] = ()) -> Params:
    """The one reader of a params file: its sections over the profile (`resolve_params`), `train`
    changed by `ablations.<ablation>`, then `--set` (dotted from the top: `train.lr_generator=0.002`),
    every section built by the schema (dgnet.config)."""
    values = resolve_params(read_params_file(path))
    if unknown := sorted(set(values) - set(TOP_LEVEL)):
        raise ConfigError(f"{path}: unknown section(s) {unknown}; known sections are {list(TOP_LEVEL)}")
    ablations = values.get("ablations") or {}
    for name, changes in ablations.items():
        if not isinstance(changes, Mapping):
            raise ConfigError(f"ablations.{name}: must be a mapping of the `train` keys it changes")
    base = values["train"]
    if ablation is not None:
        if ablation not in ablations:
            raise ConfigError(f"--ablation {ablation!r}: params.yaml has no `ablations.{ablation}` mapping; "
                              f"defined: {sorted(ablations) or 'none'}")
        values["train"] = merge(base, ablations[ablation])
    values = apply_assignments(values, assignments)

    def run(cls: type, section: Mapping[str, Any], name: str) -> tuple[Any, Any]:
        seeds = stage_config(cls.SECTION, section, name).seeds  # the stage sets each run's seed
        return build_train_config(cls, section, name, fixed={"seed": seeds[0]})

    teacher, teacher_stage = run(TeacherTrainConfig, values["teacher"], "teacher")
    train, train_stage = run(DGNetTrainConfig, values["train"], "train")
    variants = {name: run(DGNetTrainConfig, merge(base, changes), f"ablations.{name}")[0]
                for name, changes in ablations.items()}
    tune = section_config(TuneConfig, values, "tune") if values.get("tune") is not None else None
    data, validate, mlflow, evaluate = (section_config(cls, values, name) for cls, name in (
        (DataConfig, "data"), (ValidateConfig, "validate"), (MlflowConfig, "mlflow"),
        (EvaluateConfig, "evaluate")))
    return Params(values, data, validate, model_config(values), teacher, teacher_stage, train, train_stage,
                  variants, tune, mlflow, evaluate)
