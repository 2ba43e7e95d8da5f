"""What the benchmarks share: options, child processes, the untrained teacher, a loader-shaped batch,
the machine, and the results files.

Each script's figures are a JSON record in benchmarks/RESULTS.json (keyed by its section name); its
section of benchmarks/RESULTS.md is rendered from that record by `render`, the one renderer. Imports
only dgnet and its dependencies (the GPU machines have nothing else).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy
import pandas
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFont

from dgnet.io import atomic_path, replace_marked_section
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


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every benchmark shares: --device, --threads, --results."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md to write into")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """`argv` parsed, --device auto resolved, --threads applied, the command line kept for the record."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    args.argv, args.command = argv, f"python benchmarks/{script} {shlex.join(argv)}".strip()
    return args


def section_name(script: str, device: str, threads: int = 0) -> str:
    """One section per script (and profile) and device kind, and per --threads when given."""
    name = f"{script}-{'cuda' if device.startswith('cuda') else 'cpu'}"
    return name + (f"-{threads}thread{'s' if threads > 1 else ''}" if threads else "")


def run_logged(cmd: list[str], log: Path, timeout: float | None = None, env: dict[str, str] | None = None,
               session: bool = True, errors: Path | None = None) -> int | None:
    """`cmd`, its output to `log` (stderr too, unless to `errors`); None on a timeout, after SIGTERM (to
    its whole session when it has one: the command and what it started) and SIGKILL 10 s later. SIGTERM
    first: torchrun then stops its ranks, which run in sessions of their own (SIGKILLed, it leaves them)."""
    with open(log, "w", encoding="utf-8") as out, open(errors or os.devnull, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err if errors else subprocess.STDOUT, env=env,
                                start_new_session=session)
        try:
            return proc.wait(timeout=None if timeout is None else max(1.0, timeout))
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig) if session else proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    break
            return None


def run_child(argv: list[str], timeout: float | None = None) -> dict[str, Any]:
    """A benchmark script in a fresh interpreter (its peak memory and compile caches are its own): the
    JSON of its last output line; TimeoutError, or RuntimeError with its last error line."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out.txt", Path(tmp) / "err.txt"
        code = run_logged([sys.executable, *argv], out, timeout, errors=err)
        lines, errors = out.read_text().strip().splitlines(), err.read_text().strip().splitlines()
    if code is None:
        raise TimeoutError(f"did not finish within {timeout} s")
    if code != 0:
        raise RuntimeError(f"child exited {code}: {(errors or ['(no output)'])[-1][:300]}")
    return json.loads(lines[-1])


def clock(device: torch.device) -> float:
    """time.perf_counter() once `device` has run what was queued on it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def load_teacher(model_cfg: ModelConfig, device: torch.device) -> FrozenTeacher | None:
    """An untrained `ReidBaseline` of the profile, saved and loaded as training loads its teachers (the
    weights do not change the cost)."""
    label_map = {i: i for i in range(model_cfg.num_classes)}
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
    return {k: v.pin_memory() for k, v in batch.items()} if device.type == "cuda" else batch


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def loss_curves_picture(rows: list[dict[str, Any]], title: str) -> Image.Image:
    """Small multiples of every `loss/*` series of a training log, one panel each, own y-range."""
    names = sorted({k for row in rows for k in row if k.startswith("loss/")})
    cols, w, h, blue, grey = 4, 300, 170, (31, 119, 180), (90, 90, 90)
    sheet = Image.new("RGB", (cols * w, 36 + max(1, math.ceil(len(names) / cols)) * h), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    draw.text((10, 10), title, fill="black", font=font)
    for n, name in enumerate(names):
        x0, y0 = (n % cols) * w, 36 + (n // cols) * h
        points = [(row["iteration"], row[name]) for row in rows if finite(row.get(name))]
        left, right, top, bottom = x0 + 50, x0 + w - 12, y0 + 22, y0 + h - 24
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        last = f"{points[-1][1]:.4g}" if points else "no finite value"
        draw.text((x0 + 8, y0 + 4), f"{name[5:]}  (last {last})", fill="black", font=font)
        if not points:
            continue
        (x_lo, x_hi), (lo, hi) = [(min(v), max(v)) for v in zip(*points, strict=True)]
        x_hi, hi = max(x_hi, x_lo + 1), hi if hi > lo else lo + 1e-9
        for xy, text in (((x0 + 4, top), f"{hi:.3g}"), ((x0 + 4, bottom - 10), f"{lo:.3g}"),
                         ((left, bottom + 4), f"{x_lo}"), ((right - 30, bottom + 4), f"{x_hi}")):
            draw.text(xy, text, fill=grey, font=font)
        line = [(left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                 bottom - (y - lo) / (hi - lo) * (bottom - top)) for x, y in points]
        (x, y), *_ = line
        draw.line(line, fill=blue, width=2) if len(line) > 1 else draw.ellipse([x - 2, y - 2, x + 2, y + 2],
                                                                               fill=blue)
    return sheet


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(), "load_average": load_average(), "platform": platform.platform(),
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
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if "gpu" in info else ""
    end = f", {info['load_average_end'][0]} at the end" if info.get("load_average_end") else ""
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {info.get('torch_threads', '?')} torch thread(s)"
            f"{gpu}; torch {info['torch']}, Python {info['python']}; load average "
            f"{(info.get('load_average') or ['-'])[0]} at the start{end} (other processes slow CPU figures "
            "down, more so with several torch threads: an op waits for its slowest thread).")


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


def print_cells(record: dict[str, Any]) -> None:
    """The first table row of a record, each cell beside its column's name (a row as it is measured)."""
    cells = zip(record["columns"], record["table"][0], strict=True)
    print("; ".join(f"{c} {v}" for c, v in cells if v != ""), flush=True)


def recorded(path: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The records in the RESULTS.json beside `path`, by section name."""
    store = path.with_suffix(".json")
    return json.loads(store.read_text()) if store.is_file() else {}


def write_results(path: Path, name: str, record: dict[str, Any]) -> str:
    """Replace (or add) section `name`: its record in the JSON file beside `path` (RESULTS.json), its
    Markdown, rendered from it, in `path` (RESULTS.md). Returns the Markdown."""
    record = {"measured": dt.date.today().isoformat(), **record}
    markdown = render(name, record)
    replace_marked_section(path, name, markdown, HEADER)
    records = recorded(path) | {name: record}
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(dict(sorted(records.items())), indent=1, default=str) + "\n")
    print(f"wrote {path} ({name})")
    return markdown
