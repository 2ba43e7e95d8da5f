"""The joint DG-Net training loop (docs/method.md section 4).

Each iteration, from a batch [a, pos_a, b, pos_b] of the DG-Net sampler (`train.sampling`):
1. one discriminator step on the detached cross-identity images x_ab, x_ba
   (`discriminator_objective`), Adam; it runs inside step 2's forward, as soon as its decoder has made
   them (`on_cross`), so that they are decoded once;
2. one joint step of the generator (E_s, decoder, AdaIN MLPs; Adam) and the appearance encoder
   (E_a trunk and id heads; SGD, heads x10) on `generator_objective`, whose gradient routing
   decides which loss trains which network.
Loss weights (`loss_weights_at`), learning rates (`learning_rate_at`), batches, augmentation and
dropout masks (`iteration_seed`) are pure functions of the iteration, so a resumed run equals an
uninterrupted one given the checkpointed weights, optimiser and scaler states.
The teacher(s), trained first by `train_teacher`, give the soft labels of the primary loss.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dgnet.config import SAMPLINGS, DGNetTrainConfig
from dgnet.data.datasets import TrainImages
from dgnet.data.manifest import TRAIN_DATA_KEY, train_fingerprint
from dgnet.data.samplers import IdentityPairSampler, ImagePairSampler
from dgnet.data.transforms import load_image, normalize
from dgnet.errors import ConfigError
from dgnet.evaluation.evaluate import evaluate_reid, has_eval_splits
from dgnet.evaluation.pictures import swap_grid
from dgnet.io import atomic_path
from dgnet.models.config import ModelConfig
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import ModelFileError, load_model, read_model_file
from dgnet.models.teacher import FrozenTeacher
from dgnet.training.checkpoint import CheckpointError, checkpoint_path, list_checkpoints, load_checkpoint
from dgnet.training.hooks import TrainingHooks, TrainingResult
from dgnet.training.loop import (
    TrainingSession,
    make_loader,
    training_process,
    training_split,
)
from dgnet.training.objective import DGNetBatch, check_finite, discriminator_objective, generator_objective
from dgnet.training.runtime import (
    DistContext,
    autocast_context,
    average_buffers,
    average_gradients,
    broadcast_module,
    grad_scaler,
    iteration_seed,
    mean_over_ranks,
    prepare_module,
    set_learning_rate,
    sgd_with_heads,
    to_channels_last,
)
from dgnet.training.schedule import learning_rate_at, loss_weights_at

__all__ = ["SAMPLINGS", "DGNetTrainConfig", "train_dgnet", "warmup_fingerprint"]

# Fields that change nothing a training step computes: how long the run is, and how it reports.
REPORTING_FIELDS = ("iterations", "log_every", "eval_every", "image_every", "checkpoint_every",
                    "keep_checkpoints", "eval_batch_size", "swap_images", "query_alpha", "num_workers",
                    "cross_dataset_teacher")
# Schedule fields that act only through the ramped weights, which are 0 up to `warmup_start`: the
# ablation switches and the ramps' maxima and rate.
WARMUP_ONLY_FIELDS = ("primary_learning", "fine_mining", "primary_max", "fine_alpha", "code_max",
                      "cycle_max", "warmup_rate")


def warmup_fingerprint(cfg: DGNetTrainConfig) -> dict[str, object]:
    """What two runs must share to compute the same first `schedule.warmup_start` iterations: the
    configuration without its reporting fields and without what only the warm-up switches on. The
    paper's ablations differ only in the latter, so they can fork from one warm-up checkpoint."""
    values = dataclasses.asdict(cfg)
    for name in REPORTING_FIELDS:
        values.pop(name)
    for name in WARMUP_ONLY_FIELDS:
        values["schedule"].pop(name)
    return values


def fork_from_warmup(checkpoint_dir: Path, warmup: Path, identity: dict[str, object], warmup_start: int,
                     resume: bool) -> None:
    """Start this run from the warm-up checkpoint `warmup` (a run of the same fingerprint, stopped at
    or before the warm-up), unless `resume` finds a checkpoint of this run's own to continue.
    CheckpointError names what differs when the warm-up was trained with other settings."""
    if resume and list_checkpoints(checkpoint_dir):
        return
    state = load_checkpoint(warmup)
    done = int(state["iteration"])
    if done > warmup_start:
        raise CheckpointError(f"warm-up checkpoint {warmup} is at iteration {done}, past the warm-up "
                              f"(schedule.warmup_start {warmup_start}): variants differ from there on")
    theirs = state.get("identity", {})
    for name, value in identity.items():
        if theirs.get(name) != value:
            other = theirs.get(name) or {}
            differ = sorted(k for k in set(value) | set(other) if value.get(k) != other.get(k)) \
                if isinstance(value, dict) and isinstance(other, dict) else [name]
            raise CheckpointError(f"warm-up checkpoint {warmup} was trained with other settings ({name}: "
                                  f"{', '.join(differ)} differ); re-run the warm-up with these settings")
    for old in list_checkpoints(checkpoint_dir):
        old.unlink()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(checkpoint_path(checkpoint_dir, done)) as tmp:
        shutil.copyfile(warmup, tmp)


def load_teachers(paths: Sequence[str | Path], label_map: dict[int, int], model_cfg: ModelConfig,
                  device: torch.device, data: str | None = None,
                  other_data: bool = False) -> FrozenTeacher | None:
    """The trained teachers as one frozen ensemble, checked against this training set; None for no paths.
    `data`: this run's `train_fingerprint`; a teacher of other data is refused unless `other_data`
    (cross-dataset distillation, warned about), one of unknown data is warned about."""
    members = []
    for path in paths:
        teacher, info = load_model(path, map_location=device, kind="teacher")
        if info.config.num_classes != len(label_map) or (info.label_map not in (None, label_map)):
            raise ModelFileError(
                f"teacher {path}: trained on {info.config.num_classes} identities that are not this "
                f"training split's {len(label_map)}; train the teacher on the same dataset"
            )
        theirs = info.extra.get(TRAIN_DATA_KEY)
        if data is not None and theirs is None:
            warnings.warn(f"teacher {path}: trained on unknown data (its model file records no training "
                          "data, e.g. an imported or older one); check it learnt this training split",
                          stacklevel=2)
        elif data is not None and theirs != data:
            what = (f"teacher {path}: trained on other data (training split {str(theirs)[:12]}) than this "
                    f"run's (training split {data[:12]})")
            if not other_data:
                raise ModelFileError(f"{what}; train the teacher on this manifest, or accept it for "
                                     "cross-dataset distillation with --cross-dataset-teacher "
                                     "(params: train.cross_dataset_teacher: true)")
            warnings.warn(f"{what}: accepted (train.cross_dataset_teacher)", stacklevel=2)
        size = (info.config.image_height, info.config.image_width)
        if size != (model_cfg.image_height, model_cfg.image_width):
            raise ModelFileError(
                f"teacher {path}: trained at {size[0]}x{size[1]}, DG-Net runs at "
                f"{model_cfg.image_height}x{model_cfg.image_width}; use the same model profile"
            )
        members.append(teacher)
    return FrozenTeacher(members) if members else None


def init_from_teacher(model: DGNet, teacher: FrozenTeacher | None) -> None:
    """Copy the first teacher's ResNet trunk into E_a's (same backbone required); heads stay new."""
    if teacher is None:
        raise ConfigError("train.init_appearance_from_teacher: no teacher model was given")
    source = teacher.members[0].trunk.state_dict()
    target = model.appearance_encoder.trunk
    mismatched = [k for k, v in target.state_dict().items() if k not in source or source[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"train.init_appearance_from_teacher: the teacher's trunk does not fit E_a's "
                          f"({len(mismatched)} tensors differ, e.g. {mismatched[0]!r}); "
                          "use the same backbone")
    target.load_state_dict(source)


def init_from_model(model: DGNet, path: Path, model_cfg: ModelConfig, label_map: dict[int, int]) -> list[str]:
    """Fine-tuning: start `model` from the DG-Net model file at `path` (e.g. the released model). Its
    networks must be this configuration's but for the number of classes: trained on other identities,
    the two classifier layers start new. Returns the keys left new."""
    source, info = load_model(path, kind="dgnet")
    ignored = ("num_classes", "pretrained", "pretrained_path", "require_pretrained")
    theirs, ours = (dataclasses.asdict(dataclasses.replace(c, **{k: getattr(model_cfg, k) for k in ignored}))
                    for c in (info.config, model_cfg))
    differing = sorted(k for k in ours if ours[k] != theirs[k])
    if differing:
        raise ModelFileError(f"--init {path}: its model differs from this run's in {differing} "
                             f"(e.g. {differing[0]} {theirs[differing[0]]!r} vs {ours[differing[0]]!r}); "
                             "use the profile it was trained with")
    state = source.state_dict()
    same_ids = info.config.num_classes == model_cfg.num_classes and info.label_map in (None, label_map)
    new = [] if same_ids else [k for k in state if ".classifier." in k]
    model.load_state_dict({k: v for k, v in state.items() if k not in new}, strict=False)
    return new


@dataclasses.dataclass
class JointStep:
    """The training iteration, `step(iteration, batch) -> logs`, and what it trains."""

    model: DGNet
    teacher: FrozenTeacher | None
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler]
    step: Callable[[int, dict[str, torch.Tensor]], dict[str, float]]


def build_joint_step(model_cfg: ModelConfig, cfg: DGNetTrainConfig, ctx: DistContext,
                     teacher: FrozenTeacher | None, init: Callable[[DGNet], None] | None = None,
                     scalers: dict[str, torch.amp.GradScaler] | None = None) -> JointStep:
    """DG-Net on `ctx.device` with its optimisers, gradient scalers and iteration: what `train_dgnet`
    runs, and the benchmarks (train_speed, gpu_check) too. `init(model)` starts the weights (default:
    E_a's trunk from the teacher if `cfg.init_appearance_from_teacher`), then rank 0's are broadcast.
    `scalers`: one per backward pass (D's and G's losses differ in scale), pass-through unless fp16."""
    device = ctx.device
    model = DGNet(model_cfg).to(device)
    if init is not None:
        init(model)
    elif cfg.init_appearance_from_teacher:
        init_from_teacher(model, teacher)
    broadcast_module(model, ctx)
    for module in (model.appearance_encoder, model.structure_encoder, model.decoder):
        prepare_module(module, channels_last=cfg.channels_last, compile=cfg.compile)
    # The R1 penalty differentiates D twice, which compiled (AOT-autograd) modules cannot do.
    prepare_module(model.discriminator, channels_last=cfg.channels_last,
                   compile=cfg.compile and cfg.objective.r1_weight == 0)
    if teacher is not None:
        prepare_module(teacher, channels_last=cfg.channels_last, compile=False)
    groups = model.parameter_groups()
    adam = {"betas": cfg.adam_betas, "weight_decay": cfg.weight_decay}
    optimizers = {
        "generator": torch.optim.Adam(groups.generator, lr=cfg.lr_generator, **adam),
        "discriminator": torch.optim.Adam(groups.discriminator, lr=cfg.lr_discriminator, **adam),
        "appearance": sgd_with_heads(groups.appearance_trunk, groups.id_heads, cfg.lr_appearance, cfg),
    }
    if scalers is None:
        scalers = {"discriminator": grad_scaler(device, cfg.amp), "joint": grad_scaler(device, cfg.amp)}
    joint_parameters = [*groups.generator, *groups.appearance_trunk, *groups.id_heads]

    def step(iteration: int, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        torch.manual_seed(iteration_seed(cfg.seed, iteration, ctx.rank))  # dropout masks
        schedule = cfg.schedule
        for name, base_lr in (("generator", cfg.lr_generator), ("discriminator", cfg.lr_discriminator),
                              ("appearance", cfg.lr_appearance)):
            set_learning_rate(optimizers[name],
                              learning_rate_at(iteration, base_lr, schedule.lr_milestones, schedule.lr_gamma))
        real = split_batch(batch, device, cfg.channels_last)

        d_logs: dict[str, float] = {}

        def discriminator_step(fakes: torch.Tensor) -> None:
            """1. D on the detached x_ab, x_ba of this iteration's G forward (objective.py docstring)."""
            d_loss, logs = discriminator_objective(model, torch.cat([real.a, real.b]), fakes,
                                                   cfg.objective.r1_weight)
            d_logs.update(mean_over_ranks(logs, ctx))  # a NaN on any rank stops every rank
            check_finite(d_logs, iteration + 1)
            optimizers["discriminator"].zero_grad(set_to_none=True)
            scalers["discriminator"].scale(d_loss).backward()
            average_gradients(groups.discriminator, ctx)
            scalers["discriminator"].step(optimizers["discriminator"])
            scalers["discriminator"].update()

        # 2. The joint step of the generator and E_a, whose forward runs the D step when x_ij exist.
        with autocast_context(device, cfg.amp):
            g_loss, g_logs = generator_objective(model, teacher, real, loss_weights_at(iteration, schedule),
                                                 cfg.objective, on_cross=discriminator_step)
        g_logs = mean_over_ranks(g_logs, ctx)
        check_finite(g_logs, iteration + 1)
        optimizers["generator"].zero_grad(set_to_none=True)
        optimizers["appearance"].zero_grad(set_to_none=True)
        scalers["joint"].scale(g_loss).backward()
        average_gradients(joint_parameters, ctx)
        scalers["joint"].step(optimizers["generator"])
        scalers["joint"].step(optimizers["appearance"])
        scalers["joint"].update()
        average_buffers(model.appearance_encoder, ctx)
        return {**{f"loss/{k}": v for k, v in d_logs.items()}, **{f"loss/{k}": v for k, v in g_logs.items()}}

    model.train()
    return JointStep(model, teacher, optimizers, scalers, step)


def split_batch(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> DGNetBatch:
    """The sampler's [a, pos_a, b, pos_b] batch (clean and random-erased images) as a DGNetBatch."""

    def move(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return to_channels_last(images.to(device, non_blocking=True), channels_last).chunk(4)

    a, pos_a, b, pos_b = move(batch["image"])
    a_erased, pos_a_erased, b_erased, pos_b_erased = move(batch["image_erased"])
    label_a, _, label_b, _ = batch["label"].to(device, non_blocking=True).chunk(4)
    return DGNetBatch(a, label_a, b, label_b, pos_a, pos_b, a_erased, b_erased, pos_a_erased, pos_b_erased)


def train_dgnet(
    frame: pd.DataFrame,
    model_cfg: ModelConfig,
    cfg: DGNetTrainConfig,
    teacher_paths: Sequence[str | Path],
    out_dir: str | Path,
    hooks: Sequence[TrainingHooks] = (),
    resume: bool = True,
    fork_from: str | Path | None = None,
    init_from: str | Path | None = None,
) -> TrainingResult:
    """Train DG-Net on `frame`'s train split; write out_dir/model.pt. `teacher_paths`: `train_teacher`
    model files (several = an ensemble), needed when the primary loss switches on within the run.
    `fork_from`: a warm-up run's checkpoint (same `warmup_fingerprint`) to start from when out_dir has
    no checkpoint of its own; the result equals an unforked run bit for bit in deterministic mode.
    `init_from`: a DG-Net model file to fine-tune (`init_from_model`); a checkpoint of this run comes first.
    """
    out_dir = Path(out_dir)
    teacher_paths = [Path(p) for p in teacher_paths]
    if cfg.needs_teacher() and not teacher_paths:
        start = cfg.schedule.warmup_start
        raise ConfigError(
            f"teacher: the primary loss switches on after iteration {start} of {cfg.iterations} but no "
            "teacher model was given; train one with `dgnet train-teacher` and pass --teacher PATH"
        )
    for path in teacher_paths:
        if not path.is_file():
            raise ModelFileError(f"missing teacher: {path} does not exist — run the teacher stage first "
                                 "(`dgnet train-teacher`)")
    init_from = Path(init_from) if init_from is not None else None
    if init_from is not None:
        read_model_file(init_from, "dgnet")  # a missing or wrong file stops before anything is written
    label_map, model_cfg = training_split(frame, model_cfg)
    if cfg.schedule.primary_max > 0 and not cfg.needs_teacher():
        warnings.warn(
            f"schedule.warmup_start {cfg.schedule.warmup_start} is past the run's {cfg.iterations} "
            "iterations: the ramped losses and the teacher never switch on "
            "(DGNetTrainConfig.scaled_to(iterations) keeps the paper's proportions)",
            stacklevel=2,
        )
    data = train_fingerprint(frame)
    with training_process(cfg, out_dir) as (ctx, cfg):
        device = ctx.device
        teacher = load_teachers(teacher_paths, label_map, model_cfg, device, data, cfg.cross_dataset_teacher)
        if init_from is not None:  # the file's weights replace ImageNet's
            model_cfg = dataclasses.replace(model_cfg, pretrained=False, require_pretrained=False)

        def start_from_file(model: DGNet) -> None:
            new = init_from_model(model, init_from, model_cfg, label_map)
            if new and ctx.is_main:
                warnings.warn(f"--init {init_from}: trained on other identities; its classifiers start new "
                              f"({len(new)} tensors)", stacklevel=2)

        built = build_joint_step(model_cfg, cfg, ctx, teacher, None if init_from is None else start_from_file)
        model, optimizers = built.model, built.optimizers
        stateful = {"model": model, **{f"optimizer.{k}": v for k, v in optimizers.items()},
                    **{f"scaler.{k}": v for k, v in built.scalers.items()}}
        identity = {"model_config": dataclasses.asdict(model_cfg), "warmup": warmup_fingerprint(cfg)}
        session = TrainingSession("dgnet", out_dir, ctx, cfg, model_cfg, hooks,
                                  teachers=[str(p) for p in teacher_paths])
        if fork_from is not None:
            if ctx.is_main:
                fork_from_warmup(session.checkpoint_dir, Path(fork_from), identity, cfg.schedule.warmup_start,
                                 resume)
            resume = True
        start = session.resume(stateful, identity, resume)

        size = (model_cfg.image_height, model_cfg.image_width)
        dataset = TrainImages(frame, size, cfg.augmentation)
        sampler_class = ImagePairSampler if cfg.sampling == "image" else IdentityPairSampler
        sampler = sampler_class(dataset.labels.numpy(), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
        loader = make_loader(dataset, sampler, start, cfg.iterations, cfg.num_workers, device)

        def describe(iteration: int) -> dict[str, float]:
            """The loss weights, and the learning rates the step set (id heads: x head_lr_mult)."""
            weights = dataclasses.asdict(loss_weights_at(iteration, cfg.schedule))
            lrs = {"generator": optimizers["generator"].param_groups[0]["lr"],
                   "discriminator": optimizers["discriminator"].param_groups[0]["lr"],
                   "appearance_trunk": optimizers["appearance"].param_groups[0]["lr"],
                   "id_heads": optimizers["appearance"].param_groups[1]["lr"]}
            return {**{f"weight/{k}": float(v) for k, v in weights.items()},
                    **{f"lr/{k}": v for k, v in lrs.items()}}

        def evaluate() -> dict[str, float]:
            return evaluate_reid(model, frame, size, device=device, batch_size=cfg.eval_batch_size,
                                 query_alpha=cfg.query_alpha)

        grid_images = swap_grid_inputs(frame, size, cfg.swap_images).to(device) if ctx.is_main else None

        def picture() -> tuple[str, Image.Image]:
            return "swap_grid", swap_grid_picture(model, grid_images)

        session.run(start, loader, built.step, describe, evaluate if has_eval_splits(frame) else None,
                    picture, postfix=("loss/total", "loss/d_total"))
        return session.finish(model, label_map, data, teachers=[str(p) for p in teacher_paths])


def swap_grid_inputs(frame: pd.DataFrame, size: tuple[int, int], count: int) -> torch.Tensor:
    """A fixed set of `count` training images of different identities (first image of the first ids),
    normalised and without augmentation, so that grids from different iterations compare."""
    train = frame[frame["split"] == "train"].sort_values(["label", "path"])
    paths = train.groupby("label", sort=True)["path"].first().tolist()[:count]
    return torch.stack([normalize(load_image(p, size)) for p in paths])


@torch.no_grad()
def swap_grid_picture(model: DGNet, images: torch.Tensor) -> Image.Image:
    """`dgnet.evaluation.pictures.swap_grid` of `images`: cell (i, j) = G(s_j, a_i), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        k = images.shape[0]
        structure = model.structure_encoder(images)
        codes = model.appearance_encoder(images).code
        # Row i, column j at index i * k + j: structures cycle fastest, appearance codes repeat.
        decoded = model.decoder(structure.repeat(k, 1, 1, 1), codes.repeat_interleave(k, dim=0))
    finally:
        model.train(was_training)
    donors = list(images.float().cpu())
    return swap_grid(donors, donors, decoded.float().cpu().view(k, k, *decoded.shape[1:]), normalized=True)
