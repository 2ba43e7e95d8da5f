"""`dgnet train-teacher` and `dgnet train`: the trainers from the command line (also under torchrun).

    dgnet train-teacher --profile cpu --data data/synthetic --out outputs/teacher
    dgnet train --profile cpu --data data/synthetic --teacher outputs/teacher/model.pt --out outputs/dgnet
    torchrun --nproc_per_node=4 -m dgnet.cli train --profile paper --data /datasets/Market-1501 \\
        --teacher outputs/teacher/model.pt --out outputs/dgnet --amp bf16

Settings: the config dataclass defaults (the paper's), then `--config FILE` (a JSON file holding one
object of config fields, nested objects for `schedule` / `objective` / `augmentation`, and an
optional `model` object of ModelConfig overrides), then the flags given on the command line.

Data: nothing trains on data that has not passed validation. `--data DIR` validates the dataset
first (the pandas engine: the same rules as `dgnet validate`), writing OUT/validation.json and .md,
and stops with exit code 1 when a rule fails; `--manifest FILE` must match the record that its
validation report (`--validation-report`, default reports/validation.json in the manifest's folder or
above) holds, else exit code 1 naming what changed. Exit codes: see `dgnet.errors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dgnet.data.manifest import FORMATS
from dgnet.data.validated import read_validated_manifest, validate_dataset
from dgnet.errors import ConfigError
from dgnet.io import atomic_path
from dgnet.models.config import PROFILES, ModelConfig, get_profile
from dgnet.training.hooks import TrainingHooks, TrainingResult
from dgnet.training.loop import config_from_mapping
from dgnet.training.runtime import AMP_MODES, DEVICES


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
    if args.manifest is not None:
        return read_validated_manifest(args.manifest, args.validation_report)
    from dgnet.training.runtime import is_main_process

    report = Path(args.out) / "validation.json"  # every rank writes the same report, atomically
    frame = validate_dataset(args.data, args.format, report=report)
    if is_main_process():
        print(f"dataset valid ({frame.attrs['format']}, {len(frame)} images); report {report}")
    return frame


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--config {path}: file does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid JSON ({exc})") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of config fields")
    return values


def build_configs(args: argparse.Namespace, config_cls: type, section: str) -> tuple[ModelConfig, Any]:
    """(model config, training config) from the profile, the JSON file and the flags, in that order."""
    values = _read_json(args.config)
    model_overrides = values.pop("model", {})
    if not isinstance(model_overrides, dict):
        raise ConfigError(f"--config {args.config}: 'model' must be an object of ModelConfig fields")
    model_cfg = get_profile(args.profile, **model_overrides)
    cfg = config_from_mapping(config_cls, values, section)
    flags = {"batch_size": args.batch_size, "device": args.device, "amp": args.amp, "seed": args.seed,
             "compile": args.compile, "channels_last": args.channels_last,
             "deterministic": args.deterministic, "num_workers": args.num_workers}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    if args.iterations is not None:
        if args.scale_schedule:
            cfg = cfg.scaled_to(args.iterations)
        else:
            cfg = dataclasses.replace(cfg, iterations=args.iterations)
    return model_cfg, cfg


def _report(result: TrainingResult) -> None:
    shown = ", ".join(f"{k} {result.metrics[k]:.4f}" for k in ("rank1", "mAP", "mINP") if k in result.metrics)
    print(f"{result.kind}: {result.iterations} iterations; model {result.model_path}" +
          (f"; {shown}" if shown else ""))


def _cmd_train_teacher(args: argparse.Namespace) -> int:
    from dgnet.training.runtime import is_main_process
    from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher

    model_cfg, cfg = build_configs(args, TeacherTrainConfig, "teacher")
    frame = _load_frame(args)
    result = train_teacher(frame, model_cfg, cfg, args.out, hooks=[FileLogHook(args.out)],
                           resume=not args.no_resume)
    if is_main_process():
        _report(result)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dgnet.training.runtime import is_main_process
    from dgnet.training.trainer import DGNetTrainConfig, train_dgnet

    model_cfg, cfg = build_configs(args, DGNetTrainConfig, "train")
    frame = _load_frame(args)
    result = train_dgnet(frame, model_cfg, cfg, args.teacher, args.out, hooks=[FileLogHook(args.out)],
                         resume=not args.no_resume)
    if is_main_process():
        _report(result)
    return 0


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
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES),
                        help="model profile (default: paper)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: model.pt, checkpoints/, log.jsonl, images/")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="path to a JSON file holding one object of config fields (nested objects for "
                             "schedule/objective/augmentation, `model` for profile overrides); the flags "
                             "below override it")
    parser.add_argument("--iterations", type=int, help="number of iterations")
    parser.add_argument("--scale-schedule", action="store_true",
                        help="with --iterations: move warm-up and LR steps to the same fractions of the run")
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
                    "is several runs with different --seed.",
    )  # fmt: skip
    _add_common(teacher)
    teacher.set_defaults(func=_cmd_train_teacher)

    train = subparsers.add_parser(
        "train", help="train DG-Net jointly (generator, discriminator, re-ID encoder)",
        description="Joint DG-Net training (docs/method.md section 4). Resumes from OUT/checkpoints.",
    )  # fmt: skip
    _add_common(train)
    train.add_argument("--teacher", action="append", type=Path, default=[], metavar="PATH",
                       help="teacher model file (repeat for an ensemble)")
    train.set_defaults(func=_cmd_train)
