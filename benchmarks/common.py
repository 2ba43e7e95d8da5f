"""What the benchmarks share: the trainer's joint step built once, the machine, and the results files.

`build_joint_step` is the one place the benchmarks (train_speed, profile_iteration, gpu_check) set up
what `dgnet.training.trainer.train_dgnet` runs each iteration: DG-Net on the device, the same
order of initialisation, broadcast, `prepare_networks`, optimisers, gradient scalers and
`make_joint_step`. Results: each script's figures are a JSON record in benchmarks/RESULTS.json
(keyed by its section name), and its Markdown, rendered from the same figures, is its section of
benchmarks/RESULTS.md; a script that needs another's figure reads the JSON, never the Markdown.
Imports only dgnet, torch and the standard library (GPU machines have torch but no MLOps packages).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy
import pandas
import PIL
import torch
import torchvision

from dgnet.io import replace_marked_section
from dgnet.models.config import ModelConfig
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import save_model
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.training.runtime import DistContext, broadcast_module
from dgnet.training.trainer import (
    DGNetTrainConfig,
    init_from_teacher,
    load_teachers,
    make_joint_step,
    make_optimizers,
    make_scalers,
    prepare_networks,
)

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmarks

Speed and memory measurements of dgnet. Each section below is written by one script (named in
its heading) between its BEGIN/END markers; re-running a script replaces only its section.
Never timed asserts: these are measurements, not tests.
"""
# The paper's schedule reaches its full ramped weights at 34k (code 1 at 32k) and steps the LR at 60k:
# 40k is a fully warmed-up iteration, the most expensive kind.
TIMED_ITERATION = 40_000


@dataclasses.dataclass
class JointStep:
    """The trainer's iteration, `step(iteration, batch) -> logs`, and what it trains."""

    model: DGNet
    teacher: FrozenTeacher | None
    optimizers: dict[str, torch.optim.Optimizer]
    scalers: dict[str, torch.amp.GradScaler]
    step: Callable[[int, dict[str, torch.Tensor]], dict[str, float]]


def build_joint_step(model_cfg: ModelConfig, cfg: DGNetTrainConfig, ctx: DistContext,
                     teachers: Sequence[str | Path] | None = None, label_map: dict[int, int] | None = None,
                     scalers: dict[str, torch.amp.GradScaler] | None = None) -> JointStep:
    """DG-Net, its optimisers and scalers and `make_joint_step`, set up as `train_dgnet` sets them up.

    `teachers`: model files of trained teachers, loaded the way training loads them; None: an
    untrained `ReidBaseline` of the profile, saved and loaded the same way (its weights do not change
    the cost). `label_map`: the training split's (default: identity over the profile's classes).
    `scalers`: default `make_scalers(device, cfg.amp)`. Call it inside `determinism(...)`; under a
    process group the weights are broadcast from rank 0, as in training. The model is left in train mode.
    """
    device = ctx.device
    label_map = label_map if label_map is not None else {i: i for i in range(model_cfg.num_classes)}
    if teachers is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_model(Path(tmp) / "teacher.pt", ReidBaseline(model_cfg), "teacher", model_cfg,
                              extra={"label_map": label_map})
            teacher = load_teachers([path], label_map, model_cfg, device)
    else:
        teacher = load_teachers(teachers, label_map, model_cfg, device)
    model = DGNet(model_cfg).to(device)
    if cfg.init_appearance_from_teacher:
        init_from_teacher(model, teacher)
    broadcast_module(model, ctx)
    prepare_networks(model, teacher, cfg)
    optimizers = make_optimizers(model, cfg)
    scalers = scalers if scalers is not None else make_scalers(device, cfg.amp)
    step = make_joint_step(model, teacher, cfg, ctx, optimizers, scalers)
    model.train()
    return JointStep(model, teacher, optimizers, scalers, step)


def synthetic_batch(height: int, width: int, batch_size: int, num_classes: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """A loader-shaped batch [a, pos_a, b, pos_b] (4 x batch_size images), labels a != b.

    Kept on the host (pinned on CUDA, as the loader's pin_memory does) so that the step's copy to
    the device is timed as in training.
    """
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4 * batch_size, 3, height, width, generator=gen)
    erased = images.clone()
    erased[:, :, height // 4: height // 2, width // 4: width // 2] = 0.0  # a stand-in erased patch
    label_a = torch.arange(batch_size) % num_classes
    label_b = (label_a + max(1, num_classes // 2)) % num_classes  # another person
    labels = torch.cat([label_a, label_a, label_b, label_b])
    batch = {"image": images, "image_erased": erased, "label": labels}
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    memory = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) / 2**20  # GiB
    except (OSError, ValueError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "load_average": load_average(),
        "platform": platform.platform(),
        "packages": {m.__name__.replace("PIL", "pillow"): m.__version__
                     for m in (torchvision, numpy, pandas, PIL)},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "cuda": torch.version.cuda, "gpu_memory_gib": props.total_memory / 2**30,
                 "gpu_count": torch.cuda.device_count(), "cudnn": torch.backends.cudnn.version(),
                 "compute_capability": f"{props.major}.{props.minor}", "bf16": torch.cuda.is_bf16_supported()}
        try:
            info["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
        except Exception as exc:  # a build without NCCL
            info["nccl"] = f"unavailable ({type(exc).__name__})"
        try:  # the driver's version, which torch does not report
            query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable ({type(exc).__name__})"
    return info


def write_results(path: Path, name: str, markdown: str, record: dict[str, Any]) -> None:
    """Replace (or add) section `name`: its Markdown in `path` (RESULTS.md), its figures in the JSON
    file beside it (RESULTS.json), the figures the Markdown was rendered from."""
    replace_marked_section(path, name, markdown, HEADER)
    store = path.with_suffix(".json")
    records = json.loads(store.read_text()) if store.is_file() else {}
    records[name] = {"measured": dt.date.today().isoformat(), **record}
    tmp = store.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(records.items())), indent=1, default=str) + "\n")
    tmp.replace(store)


def recorded_rows(name: str, path: Path = RESULTS) -> list[dict[str, Any]]:
    """The rows of section `name` as its script recorded them in RESULTS.json; [] when there are none."""
    store = path.with_suffix(".json")
    try:
        return json.loads(store.read_text()).get(name, {}).get("rows", [])
    except (OSError, ValueError):
        return []
