"""What the benchmarks share: the untrained teacher, a loader-shaped batch, the machine, the results files.

The joint step itself is `dgnet.training.trainer.build_joint_step`, the trainer's own. Results: each
script's figures are a JSON record in benchmarks/RESULTS.json (keyed by its section name) and its
Markdown, rendered from the same figures, its section of benchmarks/RESULTS.md; a script that needs
another's figure reads the JSON. Imports only dgnet, torch and the standard library.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
import pandas
import PIL
import torch
import torchvision

from dgnet.io import replace_marked_section
from dgnet.models.config import ModelConfig
from dgnet.models.persist import save_model
from dgnet.models.teacher import FrozenTeacher, ReidBaseline
from dgnet.training.trainer import load_teachers

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = """# Benchmarks

Speed and memory measurements of dgnet. Each section below is written by one script (named in
its heading) between its BEGIN/END markers; re-running a script replaces only its section.
Never timed asserts: these are measurements, not tests.
"""
# The paper's schedule reaches its full ramped weights at 34k (code 1 at 32k) and steps the LR at 60k:
# 40k is a fully warmed-up iteration, the most expensive kind.
TIMED_ITERATION = 40_000


def load_teacher(model_cfg: ModelConfig, device: torch.device, paths: Sequence[str | Path] | None = None,
                 label_map: dict[int, int] | None = None) -> FrozenTeacher | None:
    """The teachers at `paths`, loaded as training loads them; None: an untrained `ReidBaseline` of the
    profile, saved and loaded the same way (its weights do not change the cost)."""
    label_map = label_map if label_map is not None else {i: i for i in range(model_cfg.num_classes)}
    if paths is not None:
        return load_teachers(paths, label_map, model_cfg, device)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "teacher.pt", ReidBaseline(model_cfg), "teacher", model_cfg,
                          extra={"label_map": label_map})
        return load_teachers([path], label_map, model_cfg, device)


def synthetic_batch(height: int, width: int, batch_size: int, num_classes: int,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """A loader-shaped batch [a, pos_a, b, pos_b] (4 x batch_size images), labels a != b, on the host
    (pinned on CUDA, as the loader's pin_memory does): the copy to the device is timed as in training."""
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
    memory = proc_field("/proc/meminfo", "MemTotal")
    info: dict[str, Any] = {
        "cpu": proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "memory_gib": int(memory.split()[0]) / 2**20 if memory else None,
        "torch_threads": torch.get_num_threads(),
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


def proc_field(path: str, name: str) -> str | None:
    """The value of `name: value` in a /proc file (the first such line); None off Linux."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == name), None)


def proc_memory_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    value = proc_field("/proc/self/status", field)
    return int(value.split()[0]) / 1024 if value else None  # kB


def describe_machine(info: dict[str, Any]) -> str:
    """One sentence: the CPU, threads, GPU, versions and load averages of `machine()`."""
    threads = info.get("torch_threads", "?")
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if "gpu" in info else ""
    load = (info.get("load_average") or ["-"])[0]
    end = f", {info['load_average_end'][0]} at the end" if info.get("load_average_end") else ""
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {threads} torch thread(s){gpu}; torch "
            f"{info['torch']}, Python {info['python']}; load average {load} at the start{end} (other "
            "processes slow CPU figures down, more so with several torch threads: an op waits for its "
            "slowest thread).")


def render(name: str, record: dict[str, Any]) -> str:
    """The one renderer: section `name` of RESULTS.md from its RESULTS.json record ("title", "command",
    "machine", "text" paragraphs, "columns" and "table" of cells)."""
    columns = record["columns"]
    return "\n".join([
        f"<!-- BEGIN {name} -->", f"## {record['title']}", "",
        f"Measured {record['measured']} with `{record['command']}`.", describe_machine(record["machine"]), "",
        *[line for text in record.get("text", []) for line in (text, "")],
        "| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |",
        *["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |"
          for row in record["table"]],
        "", f"<!-- END {name} -->", ""])


def write_results(path: Path, name: str, record: dict[str, Any]) -> str:
    """Replace (or add) section `name`: its figures in the JSON file beside `path` (RESULTS.json),
    its Markdown, rendered from them, in `path` (RESULTS.md). Returns the Markdown."""
    record = {"measured": dt.date.today().isoformat(), **record}
    markdown = render(name, record)
    replace_marked_section(path, name, markdown, HEADER)
    store = path.with_suffix(".json")
    records = json.loads(store.read_text()) if store.is_file() else {}
    records[name] = record
    tmp = store.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(records.items())), indent=1, default=str) + "\n")
    tmp.replace(store)
    return markdown


def recorded_rows(name: str, path: Path = RESULTS) -> list[dict[str, Any]]:
    """The rows of section `name` as its script recorded them in RESULTS.json; [] when there are none."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get(name, {}).get("rows", [])
    except (OSError, ValueError):
        return []
