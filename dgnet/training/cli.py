"""`dgnet train-teacher` and `dgnet train`: the trainers from the command line (also under torchrun).

    dgnet train-teacher --profile cpu --data data/synthetic --out outputs/teacher
    dgnet train --profile cpu --data data/synthetic --teacher outputs/teacher/model.pt --out outputs/dgnet
    torchrun --nproc_per_node=4 -m dgnet.cli train --profile paper --data /datasets/Market-1501 \\
        --teacher outputs/teacher/model.pt --out outputs/dgnet --amp bf16

Settings: the profile (`--profile`: paper, cpu or tiny; dgnet/profiles.py), then `--params FILE` (what
differs from it, in params.yaml's layout), then `--set section.key=value`, then the flags. The same
resolution as the DVC stages: `dgnet config show` with the same options prints the result.

Data: nothing trains on data that has not passed validation. `--data DIR` validates the dataset
first (the pandas engine: the same rules as `dgnet validate`), writing OUT/validation.json and .md,
and stops with exit code 1 when a rule fails; `--manifest FILE` must match the record that its
validation report (`--validation-report`, default reports/validation.json in the manifest's folder or
above) holds, else exit code 1 naming what changed. Exit codes: see `dgnet.errors`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dgnet.config import AMP_MODES, DEVICES
from dgnet.data.manifest import FORMATS
from dgnet.io import atomic_path
from dgnet.models.config import ModelConfig
from dgnet.profiles import CLI_PROFILE, PROFILES, model_config, resolve_cli_params, run_config, set_iterations
from dgnet.training.hooks import TrainingHooks, TrainingResult

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

# The flags that override the settings of the trained section; `cross_dataset_teacher`: `dgnet train` only.
FLAGS = ("batch_size", "device", "amp", "seed", "compile", "channels_last", "deterministic", "num_workers",
         "cross_dataset_teacher")


class FileLogHook(TrainingHooks):
    """Keeps a run's record beside its model: out/log.jsonl (one JSON object per event) and out/images/."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def _write(self, record: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def on_start(self, kind: str, config: dict[str, Any], start_iteration: int) -> None:
        self._write({"event": "start", "kind": kind, "iteration": start_iteration, "config": config})

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        self._write({"event": "iteration", "iteration": iteration, **logs})

    def on_evaluation(self, iteration: int, metrics: dict[str, float]) -> None:
        self._write({"event": "evaluation", "iteration": iteration, **metrics})

    def on_image(self, iteration: int, name: str, image: Image.Image) -> None:
        with atomic_path(self.out_dir / "images" / f"{name}_{iteration:08d}.png") as tmp:
            image.save(tmp, format="PNG")

    def on_end(self, result: TrainingResult) -> None:
        self._write({"event": "end", "iteration": result.iterations, "model": str(result.model_path),
                     **result.metrics})


def _load_frame(args: argparse.Namespace) -> pd.DataFrame:
    """The validated manifest: `--manifest` checked against its validation report, or `--data`
    validated here (the report lands in OUT)."""
    from dgnet.data.validated import read_validated_manifest, validate_dataset

    if args.manifest is not None:
        return read_validated_manifest(args.manifest, args.validation_report)
    from dgnet.training.runtime import is_main_process

    report = Path(args.out) / "validation.json"  # every rank writes the same report, atomically
    frame = validate_dataset(args.data, args.format, report=report)
    if is_main_process():
        print(f"dataset valid ({frame.attrs['format']}, {len(frame)} images); report {report}")
    return frame


def build_configs(args: argparse.Namespace, section: str) -> tuple[ModelConfig, Any]:
    """(model config, training config): the profile, `--params`, `--set`, then the flags, in that order.

    `--iterations` sets `<section>.iterations` and moves the whole schedule to the same fractions of
    the new length (`dgnet.profiles.set_iterations`; `dgnet config show --iterations N` prints it)."""
    params = resolve_cli_params(args.params, args.assignments, args.profile)
    params[section].update({k: v for k in FLAGS if (v := getattr(args, k, None)) is not None})
    if args.iterations is not None:
        set_iterations(params, section, args.iterations)
    return model_config(params), run_config(params, section)


def _cmd_train(args: argparse.Namespace) -> int:
    """`dgnet train-teacher` (args.teacher is None) or `dgnet train`; the result on rank 0."""
    teacher = args.teacher is None
    model_cfg, cfg = build_configs(args, "teacher" if teacher else "train")  # errors before torch loads
    from dgnet.training.runtime import is_main_process
    from dgnet.training.teacher_trainer import train_teacher
    from dgnet.training.trainer import train_dgnet

    frame, run = _load_frame(args), dict(hooks=[FileLogHook(args.out)], resume=not args.no_resume)
    if teacher:
        result = train_teacher(frame, model_cfg, cfg, args.out, **run)
    else:
        result = train_dgnet(frame, model_cfg, cfg, args.teacher, args.out, init_from=args.init, **run)
    if is_main_process():
        metrics = result.metrics
        shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("rank1", "mAP", "mINP") if k in metrics)
        print(f"{result.kind}: {result.iterations} iterations; model {result.model_path}" +
              (f"; {shown}" if shown else ""))
    return 0


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """--set and --iterations, which `dgnet train`, `train-teacher` and `config show` resolve alike."""
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="one setting, dotted from the section (YAML value), e.g. "
                             "train.objective.r1_weight=0 or model.backbone=resnet34; repeatable")
    parser.add_argument("--iterations", type=int,
                        help="number of iterations (of `dgnet train-teacher` / `dgnet train`): the whole "
                             "schedule (warm-up, ramps, LR steps) keeps its fractions of the run")


def _add_common(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path,
                        help="dataset root (Market-1501 / DukeMTMC-reID / MSMT17 layout), validated "
                             "first; the report goes to OUT/validation.json")
    source.add_argument("--manifest", type=Path,
                        help="manifest CSV written by `dgnet validate`, checked against its report")
    parser.add_argument("--validation-report", type=Path, default=None, metavar="JSON",
                        help="with --manifest: the report of the validation that wrote it (default: "
                             "reports/validation.json in the manifest's folder or above)")
    parser.add_argument("--format", choices=FORMATS, default=None, help="dataset format (default: detected)")
    parser.add_argument("--profile", default=None, choices=sorted(PROFILES),
                        help="the whole configuration (dgnet/profiles.py; default: the --params file's "
                             f"`profile:`, else {CLI_PROFILE}); `dgnet config show` prints it")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: model.pt, checkpoints/, log.jsonl, images/")
    parser.add_argument("--params", type=Path, metavar="FILE",
                        help="a params file (YAML or JSON, params.yaml's layout): what differs from the "
                             "profile in `model:`, `teacher:`, `train:`; the options below override it")
    add_setting_options(parser)
    parser.add_argument("--batch-size", type=int, help="batch size per rank (DG-Net: per stream)")
    parser.add_argument("--device", choices=DEVICES, help="auto (default), cpu or cuda")
    parser.add_argument("--amp", choices=AMP_MODES,
                        help="mixed precision: off (default), auto (bf16 where the hardware has it), bf16, "
                        "fp16 (CUDA)")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the networks")
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="channels-last memory format (faster convolutions on recent GPUs)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic kernels (bit-exact repeatable runs on the CPU)")
    parser.add_argument("--num-workers", type=int, help="data loader worker processes")
    parser.add_argument("--seed", type=int, help="random seed (batches, augmentation, init)")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over: delete OUT/checkpoints instead of resuming from the newest")


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `train-teacher` and `train` on the `dgnet` command's sub-parsers."""
    teacher = subparsers.add_parser(
        "train-teacher", help="train the teacher re-ID baseline (ID loss only)",
        description="Train a ResNet re-ID baseline, the teacher of DG-Net's primary loss. An ensemble "
                    "is several runs with different --seed.")  # fmt: skip
    _add_common(teacher)
    teacher.set_defaults(func=_cmd_train, teacher=None)

    train = subparsers.add_parser(
        "train", help="train DG-Net jointly (generator, discriminator, re-ID encoder)",
        description="Joint DG-Net training (docs/method.md section 4). Resumes from OUT/checkpoints.")
    _add_common(train)
    train.add_argument("--teacher", action="append", type=Path, default=[], metavar="PATH",
                       help="teacher model file (repeat for an ensemble)")
    train.add_argument("--cross-dataset-teacher", action="store_true", default=None,
                       help="accept teachers trained on other data than this training split (cross-dataset "
                            "distillation), with a warning; refused otherwise")
    train.add_argument("--init", type=Path, metavar="MODEL",
                       help="fine-tune: start from this DG-Net model file (e.g. `dgnet import-published`'s)")
    train.set_defaults(func=_cmd_train)
