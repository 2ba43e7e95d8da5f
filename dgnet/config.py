"""The configuration's one schema: a frozen dataclass per params.yaml section (Params: all of them;
dgnet.profiles.read_params builds it), and one parser. Defaults are the paper's (docs/method.md
sections 2-4). Checks go through dgnet.checks, so an error reads `section.key: rule, got value`.
Imports no torch: a configuration error comes before any heavy import.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dgnet.checks import check_choice, check_fields, check_int, check_number, float_string_message
from dgnet.errors import ConfigError
from dgnet.training.schedule import ScheduleConfig, check_milestones, loss_weights_at

AMP_MODES = ("off", "auto", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SAMPLINGS = ("image", "identity")


def read_params_file(path: Path | None) -> dict[str, Any]:
    """A params file (YAML or JSON, params.yaml's layout: `profile`, `model`, `teacher`, `train`, ...)."""
    if path is None:
        return {}
    try:
        values = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file does not exist") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, teacher, train, ...)")
    return values


def config_from_mapping(cls: type, values: Mapping[str, Any], section: str) -> Any:
    """`cls(**values)` from JSON/YAML values: nested dataclass fields from mappings, lists as tuples,
    an unknown key a ConfigError naming it and the known ones."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: expected a mapping of fields, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind) and not isinstance(value, kind):
            value = config_from_mapping(kind, value, f"{section}.{name}")  # not a mapping: ConfigError
        elif isinstance(value, list):
            value = tuple(value)
        elif kind is float and isinstance(value, str):
            raise ConfigError(float_string_message(f"{section}.{name}", value))
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{section}: {exc}") from exc


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation of docs/method.md section 4, as in the published DG-Net: bicubic resize
    (in `load_image`), horizontal flip, `padding` pixels of edge replication then a random crop
    back to size, and random erasing with probability `erasing_p` on the identity-loss inputs."""

    flip: bool = True
    padding: int = 10
    erasing_p: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, "augmentation")
        check_int(self.padding, "augmentation.padding")
        check_number(self.erasing_p, "augmentation.erasing_p", 0.0, 1.0)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Switches of the objective that are not loss weights."""

    # False (published): the appearance-code loss |E_a(x_ij) - a_i| has no gradient (logged only), and
    # the cycle decodes from a detached recovered code. True (the paper's intent): the recovered code
    # E_a(x_ij) (frozen view) carries gradient into G, in the code loss and in the cycle; target detached.
    appearance_code_loss_grad: bool = False
    r1_weight: float = 0.01
    teacher_flip_average: bool = True
    # Published: the teacher's BatchNorm normalises each generated batch with its own statistics
    # (`train_bn`). False: its running statistics from training on real images.
    teacher_batch_statistics: bool = True
    # Probability per iteration that the trainable E_s re-encodes the detached x_ij for the
    # structure-code loss (published `use_encoder_again`, 0.5); otherwise a frozen E_s, whose
    # gradient reaches G. 0: always the frozen E_s; 1: G never learns from that loss.
    structure_reencode_p: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, "objective")
        check_number(self.r1_weight, "objective.r1_weight")
        check_number(self.structure_reencode_p, "objective.structure_reencode_p", 0.0, 1.0)


@dataclass(frozen=True)
class RunConfig:
    """What every training run has, teacher or DG-Net: its length, cadences, seed and where it runs."""

    iterations: int = 100_000
    batch_size: int = 8  # per rank (DG-Net: per stream)
    head_lr_mult: float = 10.0  # the id heads learn at the trunk's learning rate x 10
    momentum: float = 0.9  # SGD, Nesterov
    weight_decay: float = 5e-4
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    log_every: int = 100
    eval_every: int = 10_000  # 0: only at the end
    checkpoint_every: int = 5_000  # 0: only at the end
    keep_checkpoints: int = 2
    eval_batch_size: int = 128
    device: str = "auto"
    amp: str = "off"  # "off", "auto" (bf16 where the hardware has it), "bf16", "fp16" (CUDA)
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False
    num_workers: int = 4

    SECTION: typing.ClassVar[str] = "run"

    def __post_init__(self) -> None:
        section = self.SECTION
        check_fields(self, section)
        for name in ("iterations", "batch_size", "keep_checkpoints", "eval_batch_size"):
            check_int(getattr(self, name), f"{section}.{name}", 1)
        for name in ("log_every", "eval_every", "checkpoint_every", "num_workers", "seed"):
            check_int(getattr(self, name), f"{section}.{name}")
        check_number(self.head_lr_mult, f"{section}.head_lr_mult", low_open=True)
        check_number(self.momentum, f"{section}.momentum", 0.0, 1.0)
        check_number(self.weight_decay, f"{section}.weight_decay")
        if not str(self.device).startswith("cuda:"):
            check_choice(self.device, f"{section}.device", DEVICES)
        check_choice(self.amp, f"{section}.amp", AMP_MODES)


@dataclass(frozen=True)
class TeacherTrainConfig(RunConfig):
    """Teacher training; defaults are the usual Market-1501 baseline (about 60 epochs at batch 32)."""

    iterations: int = 24_000
    batch_size: int = 32
    lr: float = 0.005  # the trunk's (ImageNet-initialised) learning rate; the head's x head_lr_mult
    lr_milestones: tuple[int, ...] = (16_000,)
    lr_gamma: float = 0.1
    eval_every: int = 4_000
    checkpoint_every: int = 2_000

    SECTION: typing.ClassVar[str] = "teacher"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.lr, "teacher.lr", low_open=True)
        check_number(self.lr_gamma, "teacher.lr_gamma", low_open=True)
        check_milestones(self.lr_milestones, "teacher.lr_milestones")

    def scaled_to(self, iterations: int) -> TeacherTrainConfig:
        """The same run compressed or stretched to `iterations`: LR milestones at the same fractions."""
        factor = iterations / self.iterations
        milestones = tuple(round(m * factor) for m in self.lr_milestones)
        return dataclasses.replace(self, iterations=iterations, lr_milestones=milestones)


@dataclass(frozen=True)
class DGNetTrainConfig(RunConfig):
    """Joint training; defaults are the paper's (Market-1501: 100k iterations, batch 8 per stream)."""

    lr_generator: float = 1e-4  # Adam: E_s, decoder, AdaIN MLPs
    lr_discriminator: float = 1e-4  # Adam: D
    adam_betas: tuple[float, float] = (0.0, 0.999)
    lr_appearance: float = 0.002  # SGD: E_a's trunk
    # "image" (published): streams a and b each walk their own shuffle of all training images, so a
    # and b may share an id by chance. "identity": a and b are always different people, each id
    # drawn uniformly (IdentityPairSampler).
    sampling: str = "image"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # loss-weight ramps and LR milestones
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    query_alpha: float = 0.5  # evaluation: query-side weight of the fine-grained half
    swap_images: int = 5  # the swap grid is swap_images x swap_images decodes
    # Start E_a's trunk from the (first) teacher's instead of ImageNet: for runs without ImageNet
    # weights (the CPU default), where a random E_a learns identities, and so appearance codes,
    # too slowly for the decoder to use them. The paper's configuration keeps False.
    init_appearance_from_teacher: bool = False
    # Teachers trained on other data than this run's training split (cross-dataset distillation; a
    # model file records the data it learnt): accepted with a warning. False refuses them.
    cross_dataset_teacher: bool = False
    image_every: int = 5_000  # 0: only at the end
    # compile: E_a, E_s, decoder (D too when r1_weight is 0: R1 needs double backward).
    # amp: bf16 preferred to fp16, whose loss scale does not reach the R1 gradient.

    SECTION: typing.ClassVar[str] = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr_generator", "lr_discriminator", "lr_appearance"):
            check_number(getattr(self, name), f"train.{name}", low_open=True)
        betas = self.adam_betas
        if len(betas) != 2 or not all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1
                                      for b in betas):
            raise ConfigError(f"train.adam_betas: must be two numbers in [0, 1), got {self.adam_betas!r}")
        check_int(self.image_every, "train.image_every")
        check_choice(self.sampling, "train.sampling", SAMPLINGS)
        check_number(self.query_alpha, "train.query_alpha", 0.0, 1.0,
                     why="the query-side weight of the fine-grained half")
        if check_int(self.swap_images, "train.swap_images", 2) > 8:
            raise ConfigError(f"train.swap_images: must be an integer in 2..8, got {self.swap_images!r}")

    def scaled_to(self, iterations: int) -> DGNetTrainConfig:
        """The same run compressed or stretched to `iterations`: the schedule at the same fractions."""
        schedule = self.schedule.scaled_to(iterations, reference=self.iterations)
        return dataclasses.replace(self, iterations=iterations, schedule=schedule)

    def needs_teacher(self) -> bool:
        """lambda_prim > 0 within the run (the weights ramp up, never down), or E_a from the teacher."""
        primary = loss_weights_at(self.iterations - 1, self.schedule).primary > 0
        return primary or self.init_appearance_from_teacher


def build_train_config(cls: type, values: Mapping[str, Any], section: str,
                       fixed: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(the `cls` run config of a params section, its stage keys). `fixed` keys are the stage's (the
    seed), never in params; `scale_schedule_from: N`: the schedule is written for N iterations and
    compressed to `iterations` (`cls.scaled_to`)."""
    stage = stage_config(cls.SECTION, values, section)
    fields = {k: v for k, v in values.items()
              if k not in vars(stage) and k != "scale_schedule_from"}
    for key in fixed or {}:
        if key in fields:
            raise ConfigError(f"{section}.{key}: set by the stage here, not in params.yaml")
    fields.update(fixed or {})
    reference = values.get("scale_schedule_from")
    if reference is None:
        return config_from_mapping(cls, fields, section), stage
    check_int(reference, f"{section}.scale_schedule_from", 1)
    default = next(f.default for f in dataclasses.fields(cls) if f.name == "iterations")
    iterations = check_int(fields.get("iterations", default), f"{section}.iterations", 1)
    cfg = config_from_mapping(cls, {**fields, "iterations": reference}, section)
    return cfg.scaled_to(iterations), stage


@dataclass(frozen=True)
class TeacherStage:
    """params `teacher`'s keys that shape the pipeline (dvc.yaml's foreach): one teacher a seed."""

    seeds: tuple[int, ...] = (0,)

    SECTION: typing.ClassVar[str] = "teacher"

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = (seeds,)
        where = f"{self.SECTION}.seeds"
        if (not isinstance(seeds, tuple | list) or not seeds
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
            raise ConfigError(f"{where}: must be a non-empty list of integers >= 0, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: {list(seeds)} repeats a seed")
        object.__setattr__(self, "seeds", tuple(seeds))


@dataclass(frozen=True)
class TrainStage(TeacherStage):
    """params `train`'s stage keys: a run per seed and variant; `teachers`: paired (seed S learns from the
    teacher of seed S) or ensemble."""

    teachers: str = "paired"

    SECTION: typing.ClassVar[str] = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.teachers, "train.teachers", ("paired", "ensemble"))


STAGE_CLASSES = {"teacher": TeacherStage, "train": TrainStage}


def stage_config(name: str, values: Mapping[str, Any], section: str | None = None) -> Any:
    """The stage keys of params `teacher` / `train` (`name`) as their dataclass."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"params `{section or name}:` must be a mapping")
    cls = STAGE_CLASSES[name]
    keys = {f.name for f in dataclasses.fields(cls)}
    return config_from_mapping(cls, {k: v for k, v in values.items() if k in keys}, section or name)


@dataclass(frozen=True)
class SyntheticData:
    """params `data.synthetic`: the embedded dataset the `data` stage draws (half the ids train)."""

    out: str = "data/synthetic"
    seed: int = 0
    ids: int = 120
    cameras: int = 6

    def __post_init__(self) -> None:
        check_int(self.seed, "data.synthetic.seed")
        check_int(self.ids, "data.synthetic.ids", 2)
        check_int(self.cameras, "data.synthetic.cameras", 1)


@dataclass(frozen=True)
class DataConfig:
    """params `data:`, the dataset every later stage uses (`format` null or auto: detected)."""

    root: str = "data/synthetic"
    format: str | None = None
    include_gt_bbox: bool = False
    msmt_include_val: bool = True
    synthetic: SyntheticData = field(default_factory=SyntheticData)

    def __post_init__(self) -> None:
        check_fields(self, "data")
        if self.format in ("", "auto"):
            object.__setattr__(self, "format", None)
        if self.format is not None:
            from dgnet.data.manifest import FORMATS  # pandas: only the data stages get here

            check_choice(self.format, "data.format", FORMATS)


@dataclass(frozen=True)
class ValidateConfig:
    """params `validate:`: where the validation report, its Data Docs and the manifest go."""

    report: str = "reports/validation.json"
    docs: str = "reports/gx_docs"
    manifest: str = "data/manifest.csv"  # written only when every rule passes; training reads it
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_int(self.workers, "validate.workers", 1)


_NAME = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class EvaluationTarget:
    """One extra dataset of `evaluate.targets`, validated and ranked on by every model (cross-domain)."""

    name: str
    data: str
    format: str | None = None  # detected when left out

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"evaluate.targets: name {self.name!r} must be letters, digits, `_`, `-`")
        object.__setattr__(self, "data", str(self.data))
        if self.format is not None:
            from dgnet.data.manifest import FORMATS  # pandas: only the evaluate stage gets here

            check_choice(self.format, f"evaluate.targets[{self.name}].format", FORMATS)


@dataclass(frozen=True)
class EvaluateConfig:
    """params `evaluate:`: how every trained model is benchmarked (docs/method.md section 5)."""

    alphas: tuple[float, ...] = (0.0, 0.5, 1.0)  # query-side weights of the fine-grained half
    rerank: bool = False  # adds k-reciprocal re-ranking rows at alpha 0.5
    num_swaps: int = 512  # test swaps behind the swap figures and their copy baselines (report: >= 500)
    ranked_queries: int = 6
    batch_size: int = 64
    device: str = "cpu"
    inception_weights: str | None = None  # for FID; else the torch cache; else skipped
    seed: int = 0
    targets: tuple[EvaluationTarget, ...] = ()

    def __post_init__(self) -> None:
        for alpha in self.alphas:
            check_number(alpha, "evaluate.alphas", 0.0, 1.0)
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        check_fields(self, "evaluate")
        check_int(self.num_swaps, "evaluate.num_swaps", 2)  # SSIM diversity needs two images
        for name in ("ranked_queries", "batch_size"):
            check_int(getattr(self, name), f"evaluate.{name}", 1)
        check_int(self.seed, "evaluate.seed")
        if not str(self.device).startswith("cuda:"):
            check_choice(self.device, "evaluate.device", DEVICES)
        object.__setattr__(self, "targets", _targets(self.targets))


def _targets(values: Any) -> tuple[EvaluationTarget, ...]:
    if not isinstance(values, list | tuple):
        raise ConfigError("evaluate.targets: must be a list of {name, data, format} entries")
    targets: list[EvaluationTarget] = []
    for k, entry in enumerate(values):
        if isinstance(entry, Mapping):
            if not {"name", "data"} <= set(entry):
                raise ConfigError(f"evaluate.targets[{k}]: must be a mapping with `name` and `data` "
                                  f"(and optionally `format`)")
            entry = config_from_mapping(EvaluationTarget, entry, f"evaluate.targets[{k}]")
        elif not isinstance(entry, EvaluationTarget):
            raise ConfigError(f"evaluate.targets[{k}]: must be a mapping with `name` and `data`")
        if entry.name in {t.name for t in targets}:
            raise ConfigError(f"evaluate.targets[{k}]: name {entry.name!r} must be unique")
        targets.append(entry)
    return tuple(targets)


@dataclass(frozen=True)
class MlflowConfig:
    """params `mlflow:`: the experiment every run goes to, and the registered models' names."""

    experiment: str = "dgnet"
    teacher_model: str = "dgnet-teacher"  # '' registers nothing
    model: str = "dgnet"
    alias: str = "current"  # moved to each new version; '' sets none

    def __post_init__(self) -> None:
        if self.alias:
            check_alias(self.alias)


def check_alias(alias: Any) -> str:
    """A registry alias MLflow accepts: letters, digits, `_`, `-`; not `latest` nor `v<digits>`."""
    if not isinstance(alias, str) or not alias or not re.fullmatch(r"[\w\-]+", alias):
        raise ConfigError(f"mlflow.alias: {alias!r} must be letters, digits, `_` or `-`")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"mlflow.alias: {alias!r} is reserved by MLflow (`latest`, `v1`, ...); "
                          f"use e.g. `current` or `champion`")
    return alias


def section_config(cls: type, params: Mapping[str, Any], name: str) -> Any:
    """The dataclass of params section `name` (missing or null: the defaults); unknown keys named."""
    values = params.get(name)
    return config_from_mapping(cls, {} if values is None else values, name)


_STUDY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class Knob:
    """A searched loss weight of train.schedule in [low, high] (log scale: `log`), set in `name`, `also`."""

    name: str
    low: float
    high: float
    log: bool = False
    also: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.name, *self.also)

    def __post_init__(self) -> None:
        where = f"tune.space.{self.name}"
        low = float(check_number(self.low, f"{where}.low"))
        high = float(check_number(self.high, f"{where}.high"))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        check_fields(self, where)
        if not low < high or (self.log and low == 0):
            raise ConfigError(f"{where}: needs 0 <= low < high (low > 0 on a log scale), got low {low}, "
                              f"high {high}")
        numeric = {f.name for f in dataclasses.fields(ScheduleConfig) if f.type in ("float", float)}
        for name in self.targets:
            if name not in numeric:
                raise ConfigError(f"{where}: {name!r} is not a loss weight of train.schedule; "
                                  f"searchable: {sorted(numeric)}")


@dataclass(frozen=True)
class SamplerConfig:
    n_startup_trials: int = 10  # random trials before TPE models the results

    def __post_init__(self) -> None:
        check_int(self.n_startup_trials, "tune.sampler.n_startup_trials")


@dataclass(frozen=True)
class PrunerConfig:
    """median (default), threshold (prune below `lower`) or none; the keys of the other kinds are
    ignored, so that `--set pruner.kind=none` works over params holding the median's."""

    kind: str = "median"
    n_startup_trials: int = 3  # median: trials finished before any is pruned
    n_warmup_steps: int = 0  # iterations
    interval_steps: int = 1
    lower: float | None = None  # threshold

    def __post_init__(self) -> None:
        check_choice(self.kind, "tune.pruner.kind", ("median", "threshold", "none"))
        check_int(self.n_startup_trials, "tune.pruner.n_startup_trials")
        check_int(self.n_warmup_steps, "tune.pruner.n_warmup_steps")
        check_int(self.interval_steps, "tune.pruner.interval_steps", 1)
        if self.kind == "threshold":
            check_number(self.lower, "tune.pruner.lower", low=-math.inf)


@dataclass(frozen=True)
class TuneConfig:
    """params `tune:`, the Optuna study of the loss weights (params.yaml says what each key does)."""

    study: str = "dgnet-weights"
    n_trials: int = 10
    seed: int = 0
    storage: str = "sqlite:///optuna.db"  # relative: against the repository root
    metric: str = "mAP"
    base: str = "train"
    train: Mapping[str, Any] = field(default_factory=dict)
    space: tuple[Knob, ...] = ()  # params: {field: {low, high, log, also}}
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    heartbeat_interval: int | None = 30  # 0 / null: no heartbeat
    grace_period: int | None = None  # null: Optuna's default, 2 heartbeats
    max_retry: int = 2
    log_models: bool = False
    out: str = "params/tuned.yaml"
    validation_fraction: float = 0.25
    validation_seed: int = 0

    def __post_init__(self) -> None:
        from dgnet.data.splits import check_fraction  # pandas: only `dgnet tune` gets here

        if not isinstance(self.study, str) or not _STUDY.fullmatch(self.study):
            raise ConfigError(f"tune.study: {self.study!r} must be letters, digits, `_`, `.`, `-` "
                              f"(at most 100)")
        check_int(self.n_trials, "tune.n_trials", 1)
        check_int(self.seed, "tune.seed")
        check_choice(self.metric, "tune.metric", ("mAP", "rank1", "mINP"))
        if not isinstance(self.train, Mapping):
            raise ConfigError("tune.train: must be a mapping of training keys changed for every trial")
        object.__setattr__(self, "space", _knobs(self.space))
        heartbeat = None if self.heartbeat_interval in (None, 0) else check_int(
            self.heartbeat_interval, "tune.heartbeat_interval", 1)
        grace = None if self.grace_period is None or heartbeat is None else check_int(
            self.grace_period, "tune.grace_period", 1)
        if grace is not None and grace <= heartbeat:
            raise ConfigError(f"tune.grace_period: {grace} s must exceed heartbeat_interval {heartbeat} s")
        object.__setattr__(self, "heartbeat_interval", heartbeat)
        object.__setattr__(self, "grace_period", grace)
        check_int(self.max_retry, "tune.max_retry")
        check_fields(self, "tune")
        object.__setattr__(self, "out", str(self.out))
        object.__setattr__(self, "validation_fraction", check_fraction(self.validation_fraction))
        check_int(self.validation_seed, "tune.validation_seed")


def _knobs(values: Any) -> tuple[Knob, ...]:
    if isinstance(values, tuple) and all(isinstance(k, Knob) for k in values) and values:
        return values
    if not isinstance(values, Mapping) or not values:
        raise ConfigError("tune.space: must map loss weights to {low, high, log} ranges")
    knobs: list[Knob] = []
    for name, spec in values.items():
        where = f"tune.space.{name}"
        if not isinstance(spec, Mapping) or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: must be a mapping with `low` and `high` (and `log`, `also`)")
        knob = config_from_mapping(Knob, {"name": str(name), **spec}, where)
        taken = {t for k in knobs for t in k.targets} & set(knob.targets)
        if taken or len(set(knob.targets)) < len(knob.targets):
            raise ConfigError(f"{where}: {sorted(taken or knob.targets)} set by two entries of tune.space")
        knobs.append(knob)
    return tuple(knobs)


TOP_LEVEL = ("profile", "data", "validate", "model", "teacher", "train", "ablations", "tune", "mlflow",
             "evaluate")


@dataclass(frozen=True)
class Params:
    """A params file with every section built. `values` is the same, resolved, in params.yaml's layout
    (the profile under `model`, `teacher`, `train`): what MLflow records and tune starts from."""

    values: dict[str, Any]
    data: DataConfig
    validate: ValidateConfig
    model: Any  # ModelConfig; num_classes is the manifest's, set by the stage
    teacher: TeacherTrainConfig  # seed: the first of teacher.seeds
    teacher_stage: TeacherStage
    train: DGNetTrainConfig  # the ablation's when read with one; seed: the first of train.seeds
    train_stage: TrainStage
    ablations: dict[str, DGNetTrainConfig]  # `train` changed by `ablations.<name>`
    tune: TuneConfig | None  # None without a `tune:` section
    mlflow: MlflowConfig
    evaluate: EvaluateConfig

