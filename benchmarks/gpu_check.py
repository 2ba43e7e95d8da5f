"""The GPU path in one prepared run: the paper profile's speed, memory, precisions, evaluation and DDP.

    bash benchmarks/gpu_check.sh --device cuda --profile paper --out /tmp/gpu_check   # <= 10 min, one H200
    bash benchmarks/gpu_check.sh --device cpu --profile tiny --out /tmp/gpu_check_cpu  # <= 3 min, 2 cores

Steps, each in a fresh child process with its own timeout; a failing step is recorded (its error
in summary.json) and the others still run:
  setup        render the synthetic dataset (dgnet.data.synthetic), validate it (the rules of
               `dgnet validate`; the manifest + report that `dgnet train --manifest` reads), train a
               short teacher (`train_teacher`);
  train_speed  benchmarks/train_speed.py's measurement (the trainer's own iteration) per mode:
               fp32, bf16, fp16, bf16+compile, bf16+cl (channels-last);
  train        `train_dgnet` on the validated synthetic data, bf16, the paper's schedule compressed
               to the run (warm-up and LR steps at the same fractions): loss curves, the test swap
               grid and recon_l1 beside its trivial baselines (`benchmark_model`);
  eval         benchmarks/eval_speed.py's Market-size ranking on the device, and its parity with
               the same ranking on the CPU (rank-1, mAP, mINP);
  fp16         fp16 iterations with the GradScalers (R1's double backward included): skipped
               steps (a scale that went down) and every non-finite loss, counted, not raised;
  ddp          two processes on the one device, the trainer's step with gradient averaging: NCCL
               first, gloo when NCCL refuses two ranks on one GPU; both ranks must end with
               identical weights after seeing different images.
On a CPU (`--device cpu --profile tiny`, the slow-tier test) the same steps run with smaller counts;
there, fp16 autocast is refused by dgnet, so the fp16 step runs fp32 under enabled GradScalers (the
step's own logic is exercised, fp16 numerics are not), and bf16+compile is left out of the default
modes (compiling takes minutes on a few cores); both are said so in the results.
Everything goes into --out: summary.json (per step: status, wall time, key figures, error; the
machine), RESULTS.section.md (the benchmarks/RESULTS.md sections, each figure beside its baseline
or target, for a person to merge), and per step a folder with its log and pictures. The exit code
is 0 when every step passed (or was skipped for a stated reason that holds on this device), else 1.
Imports torch, torchvision, numpy, pandas, pillow and dgnet only (no MLOps package).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# benchmarks/ is this script's folder, so sys.path[0]: its two sibling benchmarks import as modules.
import eval_speed
import torch
import train_speed
from PIL import Image, ImageDraw, ImageFont

STEPS = ("setup", "train_speed", "train", "eval", "fp16", "ddp")
NEEDS_SETUP = ("train", "fp16", "ddp")
# Compilation last: it is the slow one, and takes whatever time the others leave.
SPEED_MODES = ("fp32", "bf16", "fp16", "bf16+cl", "bf16+compile")
# Compiling the networks took over 280 s on 2 busy CPU cores: more than the CPU run's 3 minutes.
CPU_SPEED_MODES = ("fp32", "bf16", "fp16", "bf16+cl")
LEFT_OUT_ON_CPU = ("left out of the CPU run's default --speed-modes: compiling takes minutes on a few "
                   "cores (over 280 s measured on 2 busy ones); add it with --speed-modes")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# Counts per device kind: the GPU run is the issue's; the CPU run is the same code shrunk to fit
# 3 minutes on 2 cores (a smoke test of the script itself, not a measurement of the method).
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {"ids": 120, "cameras": 6, "teacher_iterations": 100, "speed_iterations": 15,
             "speed_warmup": 3, "train_iterations": 1500, "fp16_iterations": 200, "ddp_iterations": 10,
             "eval_size": "market", "eval_kinds": ("trained", "random"), "eval_repeats": 3,
             "num_swaps": 512, "num_recon": 2048, "workers": 8, "budget": 600},
    "cpu": {"ids": 24, "cameras": 3, "teacher_iterations": 10, "speed_iterations": 3,
            "speed_warmup": 1, "train_iterations": 30, "fp16_iterations": 10, "ddp_iterations": 3,
            "eval_size": "market", "eval_kinds": ("trained",), "eval_repeats": 1,
            "num_swaps": 64, "num_recon": 64, "workers": 0, "budget": 420},
}
# Seconds per step. CUDA: they add up to the 10 minutes a lent GPU allows (compile and the
# 1,500-iteration training are the long ones). CPU: about twice what 2 idle cores need.
TIMEOUTS: dict[str, dict[str, int]] = {
    "cuda": {"setup": 60, "train_speed": 170, "train": 190, "eval": 30, "fp16": 50, "ddp": 80},
    "cpu": {"setup": 45, "train_speed": 90, "train": 90, "eval": 45, "fp16": 45, "ddp": 90},
}
# The published implementation and the targets for the paper profile on one GPU.
PUBLISHED_S_PER_ITER = (1.2, 1.9)
PUBLISHED_GB = 10.0
# Rank metrics on the device must equal the CPU's to within 0.01 points (float32 sums in another
# order may swap a few near-tied gallery images, nothing more).
PARITY_TOLERANCE = 1e-4
# A GradScaler starts at 2^16 and halves on each overflow, so up to 16 skipped steps can be its
# calibration; beyond that (or beyond 10% of the steps) fp16 is losing updates.
SKIP_FLOOR, SKIP_FRACTION = 16, 0.1
# The train step's time besides its iterations on a GPU (start-up, final evaluation, benchmark_model),
# and how much slower a training iteration may be than train_speed's (data loading, logging).
TRAIN_OVERHEAD_S, TRAIN_SLOWDOWN = 50, 1.2


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything a step needs, resolved once by the parent and handed to each child as JSON."""

    device: str
    profile: str
    out: str
    steps: tuple[str, ...]
    ids: int
    cameras: int
    teacher_iterations: int
    speed_iterations: int
    speed_warmup: int
    speed_modes: tuple[str, ...]
    train_iterations: int
    fp16_iterations: int
    ddp_iterations: int
    eval_size: str
    eval_kinds: tuple[str, ...]
    eval_repeats: int
    num_swaps: int
    num_recon: int
    workers: int
    batch_size: int
    threads: int
    budget: int
    timeouts: dict[str, int]
    keep_work: bool
    command: str

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def work(self) -> Path:
        """Data, teacher, checkpoints and models: large, deleted at the end unless --keep-work."""
        return Path(self.out) / "work"

    @property
    def manifest(self) -> Path:
        return self.work / "manifest.csv"

    @property
    def report(self) -> Path:
        return self.work / "validation.json"

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def teacher(self) -> Path:
        return self.work / "teacher" / "model.pt"

    def step_dir(self, step: str) -> Path:
        path = Path(self.out) / step
        path.mkdir(parents=True, exist_ok=True)
        return path


# --------------------------------------------------------------------------------------------
# Shared pieces of the steps
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: torch.device) -> str:
    """bf16 on a GPU (the paper profile's precision); on a CPU bf16 only where it runs in hardware."""
    from dgnet.training.runtime import resolve_amp

    return resolve_amp(device, "bf16" if device.type == "cuda" else "auto")


def _validated(opts: Options) -> tuple[Any, Any, dict[int, int]]:
    """The manifest as `dgnet train --manifest` reads it (checked against its validation record),
    the model profile sized to its identities, and the label map."""
    from dgnet.data.validated import read_validated_manifest
    from dgnet.models.config import get_profile
    from dgnet.training.loop import training_labels

    if not opts.manifest.is_file() or not opts.teacher.is_file():
        raise RuntimeError(f"setup did not leave {opts.manifest} and {opts.teacher}; see the setup step")
    frame = read_validated_manifest(opts.manifest, opts.report)
    label_map = training_labels(frame)
    # ImageNet weights are used when they are in the torch cache; without them (no network on the
    # GPU machines) the paper profile starts from random init instead of refusing to start.
    model_cfg = get_profile(opts.profile, require_pretrained=False, num_classes=len(label_map))
    return frame, model_cfg, label_map


def _train_config(opts: Options, iterations: int, **fields: Any) -> Any:
    """The paper's DGNetTrainConfig compressed to `iterations` (warm-up from 30%, LR steps at 60%/90%)."""
    from dgnet.training.trainer import DGNetTrainConfig

    cfg = DGNetTrainConfig().scaled_to(iterations)
    return dataclasses.replace(cfg, batch_size=opts.batch_size, device=opts.device,
                               num_workers=opts.workers, **fields)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _tensor_digests(module: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer's bytes: equal digests are bit-identical weights."""
    out = {}
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        out[name] = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def results_cell(section: str, first_cell: str, column: int, path: Path = RESULTS) -> str | None:
    """One cell of a table in benchmarks/RESULTS.md (the CPU figures the GPU ones stand beside)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find(f"<!-- BEGIN {section} -->"), text.find(f"<!-- END {section} -->")
    if start < 0 or end < 0:
        return None
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell and len(cells) > column:
            return cells[column]
    return None


def loss_curves_picture(rows: list[dict[str, Any]], title: str) -> Image.Image:
    """Small multiples of every `loss/*` series of a training log, one panel each, own y-range."""
    names = sorted({k for row in rows for k in row if k.startswith("loss/")})
    cols, panel_w, panel_h = 4, 300, 170
    grid_rows = max(1, math.ceil(len(names) / cols))
    sheet = Image.new("RGB", (cols * panel_w, 36 + grid_rows * panel_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((10, 10), title, fill="black", font=font)
    for n, name in enumerate(names):
        x0, y0 = (n % cols) * panel_w, 36 + (n // cols) * panel_h
        points = [(row["iteration"], row[name]) for row in rows if _finite(row.get(name))]
        left, right, top, bottom = x0 + 50, x0 + panel_w - 12, y0 + 22, y0 + panel_h - 24
        draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
        last = f"{points[-1][1]:.4g}" if points else "no finite value"
        draw.text((x0 + 8, y0 + 4), f"{name[5:]}  (last {last})", fill="black", font=font)
        if not points:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-9
        x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        draw.text((x0 + 4, top), f"{hi:.3g}", fill=(90, 90, 90), font=font)
        draw.text((x0 + 4, bottom - 10), f"{lo:.3g}", fill=(90, 90, 90), font=font)
        draw.text((left, bottom + 4), f"{x_lo}", fill=(90, 90, 90), font=font)
        draw.text((right - 30, bottom + 4), f"{x_hi}", fill=(90, 90, 90), font=font)
        line = [(left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                 bottom - (y - lo) / (hi - lo) * (bottom - top)) for x, y in points]
        if len(line) > 1:
            draw.line(line, fill=(31, 119, 180), width=2)
        else:
            (x, y), = line
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
    return sheet


# --------------------------------------------------------------------------------------------
# The steps (each runs in its own child process; returns {"status", "figures", ...})
# --------------------------------------------------------------------------------------------


def step_setup(opts: Options) -> dict[str, Any]:
    """Synthetic dataset -> validated manifest + report -> a short teacher."""
    from dgnet.data.synthetic import generate_dataset
    from dgnet.data.validated import validate_dataset
    from dgnet.models.backbone import cached_imagenet_checkpoint
    from dgnet.models.config import get_profile
    from dgnet.models.persist import save_model
    from dgnet.models.teacher import ReidBaseline
    from dgnet.training.cli import FileLogHook
    from dgnet.training.loop import training_labels
    from dgnet.training.runtime import select_device
    from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher

    device = select_device(opts.device)
    start = time.perf_counter()
    table = generate_dataset(opts.data, seed=0, num_ids=opts.ids, num_cameras=opts.cameras)
    render_s = time.perf_counter() - start
    frame = validate_dataset(opts.data, report=opts.report, manifest=opts.manifest)
    label_map = training_labels(frame)
    model_cfg = get_profile(opts.profile, require_pretrained=False, num_classes=len(label_map))
    imagenet = cached_imagenet_checkpoint(model_cfg.backbone) if model_cfg.pretrained else None
    figures: dict[str, Any] = {
        "images": len(table), "train_ids": len(label_map), "render_s": round(render_s, 1),
        "splits": frame["split"].value_counts().to_dict(),
        "imagenet_weights": str(imagenet) if imagenet else None,
    }
    if opts.teacher_iterations > 0:
        cfg = dataclasses.replace(
            TeacherTrainConfig().scaled_to(opts.teacher_iterations), batch_size=4 * opts.batch_size,
            device=opts.device, amp=_amp(device), num_workers=opts.workers, eval_every=0,
            checkpoint_every=0, log_every=max(1, opts.teacher_iterations // 10))
        started = time.perf_counter()
        result = train_teacher(frame, model_cfg, cfg, opts.teacher.parent,
                               hooks=[FileLogHook(opts.step_dir("setup") / "teacher")], resume=False)
        figures |= {"teacher_iterations": opts.teacher_iterations,
                    "teacher_s": round(time.perf_counter() - started, 1),
                    "teacher_rank1": result.metrics.get("rank1"), "teacher_mAP": result.metrics.get("mAP")}
    else:  # an untrained teacher: its soft labels are near-uniform, which costs the check nothing
        save_model(opts.teacher, ReidBaseline(model_cfg), "teacher", model_cfg,
                   extra={"label_map": label_map})
        figures["teacher_iterations"] = 0
    return {"status": "ok", "figures": figures}


def _expected_skip(row: dict[str, Any], on_cuda: bool) -> bool:
    """A mode this device cannot run (train_speed's own reasons), or a compiler missing on a CPU."""
    reason = str(row.get("reason", ""))
    cannot = ("fp16 autocast needs CUDA", "is not supported on", "has no torch.compile", LEFT_OUT_ON_CPU)
    return any(text in reason for text in cannot) or (not on_cuda and "torch.compile failed" in reason)


def step_deadline(margin: float) -> float:
    """time.monotonic() at which this step must wrap up: `margin` s before the parent kills it."""
    kill_at = float(os.environ.get("GPU_CHECK_KILL_AT", time.time() + 600))  # wall clock: set by the parent
    return time.monotonic() + (kill_at - time.time()) - margin


def step_train_speed(opts: Options) -> dict[str, Any]:
    """train_speed.py's per-mode measurement, each mode in its own process, within this step's time."""
    deadline = step_deadline(margin=8)
    # A slow mode (compilation) may not starve the ones after it below this many seconds each.
    reserve = 25 if opts.on_cuda else 10
    # train_speed's own parser, so that every option its children read has its default here too.
    args = train_speed.build_parser().parse_args(
        ["--profile", opts.profile, "--device", opts.device, "--iterations", str(opts.speed_iterations),
         "--warmup", str(opts.speed_warmup), "--batch-size", str(opts.batch_size),
         "--threads", str(0 if opts.on_cuda else opts.threads)])
    info = train_speed.machine()
    rows = []
    cannot: dict[str, str] = {}
    for mode in opts.speed_modes:  # a mode this device cannot run is skipped without a child to say so
        try:
            train_speed._check_mode(train_speed.Mode.parse(mode), torch.device(opts.device))
        except train_speed.Skipped as exc:
            cannot[mode] = str(exc)
    runnable = [m for m in opts.speed_modes if m not in cannot]
    for mode in opts.speed_modes:
        if mode in cannot:
            row = {"profile": opts.profile, "mode": train_speed.Mode.parse(mode).name, "device": opts.device,
                   "status": "skipped", "reason": cannot[mode]}
        else:
            later = len(runnable) - runnable.index(mode) - 1
            args.mode_timeout = max(5, int(deadline - time.monotonic() - reserve * later))
            row = train_speed.run_child(args, mode)
        rows.append(row)
        train_speed._print_row(row)
    if not opts.on_cuda:  # said in the table, so that a reader sees the mode was not forgotten
        rows += [{"profile": opts.profile, "mode": train_speed.Mode.parse(m).name, "device": opts.device,
                  "status": "skipped", "reason": LEFT_OUT_ON_CPU}
                 for m in SPEED_MODES if m not in opts.speed_modes]
    info["load_average_end"] = train_speed._load_average()
    command = (f"python benchmarks/train_speed.py --profile {opts.profile} --device {opts.device} "
               f"--modes {','.join(opts.speed_modes)} --iterations {opts.speed_iterations} "
               f"--warmup {opts.speed_warmup}" + ("" if opts.on_cuda else f" --threads {opts.threads}"))
    name = train_speed.section_name(opts.profile, opts.device, 0 if opts.on_cuda else opts.threads)
    section = train_speed.render_section(name, info, rows, command + " (run by benchmarks/gpu_check.sh)")
    (opts.step_dir("train_speed") / "section.md").write_text(section)
    modes = {}
    for r in rows:
        entry: dict[str, Any] = {"status": r.get("status"), "reason": r.get("reason")}
        if r.get("status") == "ok":
            entry |= {"median_s": r["median_s"], "first_s": r.get("first_iteration_s"),
                      "projected_100k_h": r["projected_100k_h"]}
            if "peak_reserved_mb" in r:
                gb = r["peak_reserved_mb"] / 1024
                entry |= {"peak_reserved_gb": gb, "peak_allocated_gb": r["peak_allocated_mb"] / 1024,
                          "target_met": r["median_s"] <= train_speed.TARGET_S_PER_ITER
                          and gb <= train_speed.TARGET_PEAK_GB}
            else:
                entry["peak_rss_mb"] = r.get("peak_rss_mb")
        modes[r["mode"]] = entry
    failed = [r["mode"] for r in rows if r.get("status") != "ok" and not _expected_skip(r, opts.on_cuda)]
    result: dict[str, Any] = {"status": "failed" if failed else "ok", "figures": {"modes": modes},
                              "rows": rows, "section": name}
    if failed:
        result["error"] = "; ".join(f"{r['mode']}: {r.get('reason')}" for r in rows if r["mode"] in failed)
    return result


def step_train(opts: Options) -> dict[str, Any]:
    """A short paper-profile DG-Net training (compressed schedule), then recon_l1 and the swap grid."""
    from dgnet.evaluation.benchmark import benchmark_model
    from dgnet.training.cli import FileLogHook
    from dgnet.training.runtime import select_device
    from dgnet.training.trainer import train_dgnet

    device = select_device(opts.device)
    frame, model_cfg, _ = _validated(opts)
    out = opts.step_dir("train")
    n = opts.train_iterations
    cfg = _train_config(opts, n, amp=_amp(device), log_every=max(1, n // 60), eval_every=0,
                        image_every=max(1, n // 3), checkpoint_every=0)
    log = out / "log.jsonl"
    log.unlink(missing_ok=True)
    started = time.perf_counter()
    result = train_dgnet(frame, model_cfg, cfg, [opts.teacher], opts.work / "train",
                         hooks=[FileLogHook(out)], resume=False)
    train_s = time.perf_counter() - started
    peak = _peak_gb(device)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "event"} for r in records if r["event"] == "iteration"]
    loss_names = sorted({k for row in rows for k in row if k.startswith("loss/")})
    with open(out / "losses.csv", "w", encoding="utf-8") as handle:
        columns = ["iteration", *sorted({k for row in rows for k in row} - {"iteration"})]
        handle.write(",".join(columns) + "\n")
        for row in rows:
            handle.write(",".join(str(row.get(c, "")) for c in columns) + "\n")
    loss_curves_picture(rows, f"DG-Net {opts.profile} profile, {n} iterations, {cfg.amp}, {device}").save(
        out / "loss_curves.png")
    # A ramped loss is absent from the log until its weight switches on; a logged one must be finite.
    non_finite = [f"{k} at {row['iteration']}" for row in rows for k in loss_names
                  if k in row and not _finite(row[k])]
    # After the first window (cudnn autotuning, loader start-up): the steady time of an iteration.
    steady = [row["time/iteration"] for row in rows[1:]] or [row["time/iteration"] for row in rows]

    bench = benchmark_model(result.model_path, frame, name="gpu_check", device=device, alphas=(0.5,),
                            data_root=opts.data, num_swaps=opts.num_swaps, num_recon=opts.num_recon,
                            batch_size=64, num_workers=min(opts.workers, 4))
    bench.pictures["swap_grid"].save(out / "swap_grid.png")
    gen = bench.generation
    recon = gen.get("recon_l1")
    figures = {
        "iterations": n, "amp": cfg.amp, "batch_size": cfg.batch_size, "train_s": round(train_s, 1),
        "s_per_iteration": statistics.median(steady) if steady else None,
        "data_s_per_iteration": statistics.median([row["time/data"] for row in rows]) if rows else None,
        "peak_reserved_gb": peak, "logged_points": len(rows),
        "first_losses": {k: rows[0].get(k) for k in loss_names} if rows else {},
        "last_losses": {k: rows[-1].get(k) for k in loss_names} if rows else {},
        "recon_l1": recon, "baselines": gen.get("baselines"),
        "swap_l1_person": gen.get("swap_l1_person"), "swap_ssim_person": gen.get("swap_ssim_person"),
        "reid": bench.reid.get("alpha_0.5"), "schedule": dataclasses.asdict(cfg.schedule),
    }
    problems = non_finite[:5]
    if not (_finite(recon) and 0 < recon < 1):
        problems.append(f"recon_l1 {recon!r} is not in (0, 1)")
    if not rows:
        problems.append("no loss was logged")
    out_result: dict[str, Any] = {"status": "failed" if problems else "ok", "figures": figures}
    if problems:
        out_result["error"] = "; ".join(problems)
    return out_result


def step_eval(opts: Options) -> dict[str, Any]:
    """eval_speed.py's Market-size ranking on the device, and the same ranking on the CPU: equal metrics."""
    rows, parity = [], {}
    for kind in opts.eval_kinds:
        row = eval_speed.measure(opts.eval_size, kind, opts.device, opts.eval_repeats, chunk_size=256)
        # The reference: the CPU, once (on a CPU run, a second CPU run: a repeatability check).
        reference = eval_speed.measure(opts.eval_size, kind, "cpu", 1, chunk_size=256)
        rows.append(row)
        parity[kind] = {"cpu_total_s": reference["total_s"],
                        **{f"{m}_diff": abs(row[m] - reference[m]) for m in ("rank1", "mAP", "mINP")}}
        print(f"{kind}: {row['device']} {row['total_s']:.3f} s, cpu {reference['total_s']:.3f} s, "
              f"mAP {row['mAP']:.4f} vs {reference['mAP']:.4f}", flush=True)
    info = eval_speed.machine()
    info["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    name = f"eval_speed-{'cuda' if opts.on_cuda else 'cpu'}"
    command = (f"python benchmarks/eval_speed.py --sizes {opts.eval_size} --device {opts.device} "
               f"--repeats {opts.eval_repeats} (run by benchmarks/gpu_check.sh)")
    (opts.step_dir("eval") / "section.md").write_text(eval_speed.render_section(name, info, rows, command))
    worst = max(v for p in parity.values() for k, v in p.items() if k.endswith("_diff"))
    figures = {"size": opts.eval_size, "queries": rows[0]["queries"], "gallery": rows[0]["gallery"],
               "device": {r["kind"]: {k: r.get(k) for k in ("total_s", "distances_s", "rank1", "mAP",
                                                             "peak_gpu_mb")} for r in rows},
               "parity": parity, "max_diff": worst, "tolerance": PARITY_TOLERANCE}
    result: dict[str, Any] = {"status": "ok" if worst <= PARITY_TOLERANCE else "failed", "figures": figures,
                              "rows": rows, "section": name}
    if worst > PARITY_TOLERANCE:
        result["error"] = f"device and CPU metrics differ by {worst:.2e} (tolerance {PARITY_TOLERANCE:g})"
    return result


def step_fp16(opts: Options) -> dict[str, Any]:
    """fp16 training iterations with the GradScalers; count skipped steps and non-finite losses."""
    from dgnet.data.datasets import TrainImages
    from dgnet.data.samplers import ImagePairSampler
    from dgnet.models.dgnet import DGNet
    from dgnet.training.loop import make_loader
    from dgnet.training.objective import NonFiniteLossError
    from dgnet.training.runtime import DistContext, determinism, select_device
    from dgnet.training.trainer import (
        load_teachers,
        make_joint_step,
        make_optimizers,
        make_scalers,
        prepare_networks,
    )

    device = select_device(opts.device)
    frame, model_cfg, label_map = _validated(opts)
    n = opts.fp16_iterations
    # dgnet refuses fp16 autocast on the CPU, so there the step runs fp32 under enabled GradScalers:
    # the scaling, unscaling and skip logic of this step is exercised, the fp16 numerics are not.
    cfg = _train_config(opts, n, amp="fp16" if opts.on_cuda else "off")
    teacher = load_teachers([opts.teacher], label_map, model_cfg, device)
    ctx = DistContext(0, 1, 0, device, False)
    rows, non_finite = [], []
    skipped = {"discriminator": [], "joint": []}
    with determinism(cfg.seed, False):
        model = DGNet(model_cfg).to(device)
        prepare_networks(model, teacher, cfg)
        optimizers = make_optimizers(model, cfg)
        scalers = (make_scalers(device, "fp16") if opts.on_cuda else
                   {name: torch.amp.GradScaler("cpu") for name in skipped})
        step = make_joint_step(model, teacher, cfg, ctx, optimizers, scalers)
        dataset = TrainImages(frame, (model_cfg.image_height, model_cfg.image_width), cfg.augmentation)
        sampler = ImagePairSampler(dataset.labels.numpy(), cfg.batch_size, cfg.seed)
        model.train()
        started = time.perf_counter()
        deadline = step_deadline(margin=8)
        for iteration, batch in enumerate(make_loader(dataset, sampler, 0, n, cfg.num_workers, device)):
            if time.monotonic() > deadline:  # stop in time: what ran is reported, not lost to the kill
                break
            before = {name: scaler.get_scale() for name, scaler in scalers.items()}
            try:
                logs = step(iteration, batch)
            except NonFiniteLossError as exc:  # recorded, and training goes on: how often is the question
                non_finite.append({"iteration": iteration + 1, "error": str(exc)})
                continue
            for name, scaler in scalers.items():
                if scaler.get_scale() < before[name]:  # update() backs off only after an inf/NaN gradient
                    skipped[name].append(iteration + 1)
            rows.append({"iteration": iteration + 1, **logs,
                         **{f"scale/{name}": scaler.get_scale() for name, scaler in scalers.items()}})
        _sync(device)
        wall = time.perf_counter() - started
    out = opts.step_dir("fp16")
    loss_curves_picture(rows, f"fp16 + GradScaler, {n} iterations, {device}").save(out / "loss_curves.png")
    (out / "iterations.json").write_text(json.dumps(rows))
    limit = max(SKIP_FLOOR, int(SKIP_FRACTION * n))
    r1 = [row["loss/d_r1"] for row in rows if "loss/d_r1" in row]
    figures = {
        "iterations": len(rows) + len(non_finite), "asked": n,
        "precision": "fp16" if opts.on_cuda else "fp32 + GradScaler (CPU stand-in)",
        "s_per_iteration": wall / max(len(rows) + len(non_finite), 1),
        "skipped_steps": {k: len(v) for k, v in skipped.items()},
        "skipped_at": {k: v[:20] for k, v in skipped.items()}, "skip_limit": limit,
        "non_finite_losses": len(non_finite), "non_finite": non_finite[:10],
        "final_scale": {name: scaler.get_scale() for name, scaler in scalers.items()},
        "d_r1_range": [min(r1), max(r1)] if r1 else None, "peak_reserved_gb": _peak_gb(device),
        "last_losses": {k: v for k, v in rows[-1].items() if k.startswith("loss/")} if rows else {},
    }
    problems = []
    if non_finite:
        problems.append(f"{len(non_finite)} non-finite loss(es), first: {non_finite[0]['error']}")
    problems += [f"{name} skipped {len(v)} of {n} steps (limit {limit})" for name, v in skipped.items()
                 if len(v) > limit]
    result: dict[str, Any] = {"status": "failed" if problems else "ok", "figures": figures}
    if problems:
        result["error"] = "; ".join(problems)
    return result


def default_threads() -> int:
    """Every core the 1-minute load average leaves idle, at least one: torch threads beyond the free
    cores wait on each other (a tiny-profile iteration took 6.5 s with 2 threads on 2 busy cores,
    0.8 s with 1)."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - round(load)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_rank(opts: Options, rank: int, backend: str, record: Path) -> None:
    """One of two ranks: the trainer's step (gradient and BN averaging over ranks) on this rank's share
    of each global batch; writes the weights' digests and what it saw to `record`."""
    import torch.distributed as dist

    from dgnet.data.datasets import TrainImages
    from dgnet.data.samplers import ImagePairSampler
    from dgnet.models.dgnet import DGNet
    from dgnet.training.loop import make_loader
    from dgnet.training.runtime import broadcast_module, determinism, init_distributed, select_device
    from dgnet.training.trainer import (
        load_teachers,
        make_joint_step,
        make_optimizers,
        make_scalers,
        prepare_networks,
    )

    world = 2
    device = select_device(opts.device)  # LOCAL_RANK is 0 for both: the one GPU
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, opts.threads // world))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=dt.timedelta(seconds=60))
    try:
        ctx = init_distributed(opts.device)  # the group exists: the trainer's context on it
        probe = torch.ones(1, device=ctx.device)
        dist.all_reduce(probe)  # an unusable backend fails here, before minutes of set-up
        frame, model_cfg, label_map = _validated(opts)
        n = opts.ddp_iterations
        cfg = dataclasses.replace(_train_config(opts, n, amp=_amp(ctx.device)), num_workers=0)
        teacher = load_teachers([opts.teacher], label_map, model_cfg, ctx.device)
        times, seen = [], []
        with determinism(cfg.seed, False):
            torch.manual_seed(cfg.seed + rank)  # different initial weights per rank: broadcast must fix it
            model = DGNet(model_cfg).to(ctx.device)
            broadcast_module(model, ctx)
            initial = _tensor_digests(model)
            prepare_networks(model, teacher, cfg)
            step = make_joint_step(model, teacher, cfg, ctx, make_optimizers(model, cfg),
                                   make_scalers(ctx.device, cfg.amp))
            dataset = TrainImages(frame, (model_cfg.image_height, model_cfg.image_width), cfg.augmentation)
            sampler = ImagePairSampler(dataset.labels.numpy(), cfg.batch_size, cfg.seed, rank, world)
            model.train()
            for iteration, batch in enumerate(make_loader(dataset, sampler, 0, n, 0, ctx.device)):
                _sync(ctx.device)
                start = time.perf_counter()
                logs = step(iteration, batch)
                _sync(ctx.device)
                times.append(time.perf_counter() - start)
                seen.append(sampler.batch(iteration).indices.tolist())
        record.write_text(json.dumps({"rank": rank, "backend": backend, "device": str(ctx.device),
                                      "times": times, "seen": seen, "initial": initial,
                                      "final": _tensor_digests(model), "last_logs": logs}))
    finally:
        dist.destroy_process_group()


def _run_ranks(opts: Options, backend: str, folder: Path, timeout: float) -> tuple[list[dict] | None, str]:
    """Start both ranks; their records, or None and why not."""
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
        log = open(folder / f"{backend}_rank{rank}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        logs.append(log)
        cmd = [sys.executable, __file__, "--ddp-rank", str(rank), "--backend", backend,
               "--options", str(Path(opts.out) / "options.json"),
               "--record", str(folder / f"{backend}_rank{rank}.json")]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        return None, f"{backend}: the ranks did not finish within {timeout:.0f} s"
    finally:
        for proc in procs:
            proc.wait()
        for log in logs:
            log.close()
    if any(p.returncode for p in procs):
        tails = []
        for rank in range(2):
            lines = (folder / f"{backend}_rank{rank}.log").read_text().strip().splitlines()
            errors = [line for line in lines if "Error" in line or "error" in line]
            tails.append(f"rank {rank}: {(errors or lines or ['(no output)'])[-1][:300]}")
        return None, f"{backend}: " + " | ".join(tails)
    return [json.loads((folder / f"{backend}_rank{r}.json").read_text()) for r in range(2)], ""


def step_ddp(opts: Options) -> dict[str, Any]:
    """Two ranks on the one device: NCCL where it allows it, else gloo; lockstep weights."""
    import torch.distributed as dist

    folder = opts.step_dir("ddp")
    deadline = step_deadline(margin=5)
    backends = ["nccl", "gloo"] if opts.on_cuda and dist.is_nccl_available() else ["gloo"]
    attempts: dict[str, str] = {}
    records = None
    for k, backend in enumerate(backends):
        left = deadline - time.monotonic()
        # NCCL gets half the time: when it refuses two ranks on one GPU, it says so at once.
        records, error = _run_ranks(opts, backend, folder, left / 2 if k < len(backends) - 1 else left)
        attempts[backend] = "ok" if records else error
        if records:
            break
    if not records:
        return {"status": "failed", "error": "; ".join(attempts.values()), "figures": {"attempts": attempts}}
    first, second = records
    names = first["final"].keys()
    moved = sum(first["final"][k] != first["initial"][k] for k in names)
    different = [k for k in names if first["final"][k] != second["final"][k]]
    start_differs = [k for k in names if first["initial"][k] != second["initial"][k]]
    n = opts.batch_size
    shared = [it + 1 for it, (s0, s1) in enumerate(zip(first["seen"], second["seen"], strict=True))
              if set(s0[:n]) & set(s1[:n]) or set(s0[2 * n:3 * n]) & set(s1[2 * n:3 * n])]
    figures = {"backend": first["backend"], "attempts": attempts, "device": first["device"],
               "iterations": len(first["times"]), "tensors": len(names), "moved": moved,
               "differing_after": len(different), "differing_at_start": len(start_differs),
               "batches_sharing_images": shared,
               "s_per_iteration": statistics.median(first["times"][1:] or first["times"]),
               "last_losses": first["last_logs"]}
    problems = []
    if different:
        problems.append(f"the ranks' weights differ after training in {len(different)} tensors, "
                        f"e.g. {different[0]}")
    if start_differs:
        problems.append(f"the ranks started from different weights ({len(start_differs)} tensors)")
    if moved <= len(names) // 2:
        problems.append(f"training moved only {moved} of {len(names)} tensors: nothing is proven")
    if shared:
        problems.append(f"the ranks saw the same images at iterations {shared[:5]}")
    result: dict[str, Any] = {"status": "failed" if problems else "ok", "figures": figures}
    if problems:
        result["error"] = "; ".join(problems)
    return result


STEP_FUNCTIONS = {"setup": step_setup, "train_speed": step_train_speed, "train": step_train,
                  "eval": step_eval, "fp16": step_fp16, "ddp": step_ddp}


def run_step_here(opts: Options, name: str) -> None:
    """A child's whole job: run one step, write its result (an exception becomes a failed result)."""
    if not opts.on_cuda:
        torch.set_num_threads(opts.threads)
    folder = opts.step_dir(name)
    try:
        result = STEP_FUNCTIONS[name](opts)
    except BaseException as exc:
        trace = traceback.format_exc()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": trace[-4000:]}
        print(trace, file=sys.stderr)
    (folder / "result.json").write_text(json.dumps(result, indent=1, default=str))


# --------------------------------------------------------------------------------------------
# The parent: children with timeouts, summary.json, RESULTS.section.md
# --------------------------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    """What the check ran on: train_speed's description plus the CUDA / cuDNN / NCCL versions."""
    info = train_speed.machine()
    info |= {"device": device, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "platform": platform.platform()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": props.total_memory / 2**30,
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
    import numpy
    import pandas
    import PIL
    import torchvision

    info["packages"] = {"torchvision": torchvision.__version__, "numpy": numpy.__version__,
                        "pandas": pandas.__version__, "pillow": PIL.__version__}
    return info


def run_step(opts: Options, name: str, timeout: float) -> dict[str, Any]:
    """One step in a child process (own session, so a timeout kills its grandchildren too)."""
    folder = opts.step_dir(name)
    (folder / "result.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--run-step", name, "--options", str(Path(opts.out) / "options.json")]
    started = time.monotonic()
    with open(folder / "log.txt", "w", encoding="utf-8") as log:
        env = {**os.environ, "GPU_CHECK_KILL_AT": str(time.time() + timeout)}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    wall = time.monotonic() - started
    result_file = folder / "result.json"
    if timed_out:
        result = {"status": "timeout", "error": f"did not finish within its {timeout:.0f} s"}
    elif result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        lines = (folder / "log.txt").read_text(errors="replace").strip().splitlines()
        last = (lines or ["(no output)"])[-1][:500]
        result = {"status": "failed", "error": f"exited {proc.returncode}: {last}"}
    result["wall_s"] = round(wall, 1)
    result["timeout_s"] = round(timeout)
    result["log"] = str(folder / "log.txt")
    return result


def _fmt(value: Any, spec: str = ".3f", unit: str = "") -> str:
    return "-" if not _finite(value) else f"{value:{spec}}{unit}"


def _step_line(name: str, result: dict[str, Any], opts: Options) -> tuple[str, str]:
    """(what the step measured, what it stands beside) for the summary table."""
    f = result.get("figures", {})
    target = (f"paper profile on one GPU: target <= {train_speed.TARGET_S_PER_ITER} s/it, "
              f"<= {train_speed.TARGET_PEAK_GB:g} GB; published "
              f"{PUBLISHED_S_PER_ITER[0]}-{PUBLISHED_S_PER_ITER[1]} s/it, >= {PUBLISHED_GB:g} GB (fp16)")
    cpu_bf16 = results_cell("train_speed-cpu-cpu", "bf16", 1)
    cpu_note = f"; CPU: cpu profile (ResNet-18, 64x32) {cpu_bf16} s/it bf16 on 2 cores" if cpu_bf16 else ""
    if name == "setup":
        teacher = f"teacher {f.get('teacher_iterations', '?')} iterations"
        if _finite(f.get("teacher_mAP")):
            teacher += f" (mAP {100 * f['teacher_mAP']:.1f})"
        weights = ("ImageNet weights found" if f.get("imagenet_weights")
                   else "no ImageNet weights: random init")
        text = f"{f.get('images', '?')} images, {f.get('train_ids', '?')} train ids, validated; {teacher}"
        return f"{text}; {weights}", "-"
    if name == "train_speed":
        parts = []
        for mode, m in f.get("modes", {}).items():
            if m.get("status") != "ok":
                parts.append(f"{mode} skipped ({m.get('reason')})")
            elif "peak_reserved_gb" in m:
                parts.append(f"{mode} {m['median_s']:.3f} s/it, {m['peak_reserved_gb']:.1f} GB"
                             + (" (target met)" if m.get("target_met") else " (target not met)"))
            else:
                parts.append(f"{mode} {m['median_s']:.3f} s/it")
        return "; ".join(parts) or "-", target + cpu_note
    if name == "train":
        base = f.get("baselines") or {}
        swap = base.get("copy_structure", {}), base.get("copy_appearance", {})
        memory = f", {f['peak_reserved_gb']:.1f} GB" if _finite(f.get("peak_reserved_gb")) else ""
        text = (f"{f.get('iterations')} iterations {f.get('amp')}, {_fmt(f.get('s_per_iteration'))} s/it"
                f"{memory}; recon_l1 {_fmt(f.get('recon_l1'))}; "
                f"swap L1 (person) {_fmt(f.get('swap_l1_person'))}, "
                f"SSIM (person) {_fmt(f.get('swap_ssim_person'))}")
        beside = (f"recon: mean image {_fmt(base.get('recon_mean_image'))}, "
                  f"blur4 {_fmt(base.get('recon_blur4'))}; swap L1 (person) copy-structure "
                  f"{_fmt(swap[0].get('swap_l1_person'))} / copy-appearance "
                  f"{_fmt(swap[1].get('swap_l1_person'))}; {target}")
        return text, beside
    if name == "eval":
        dev = f.get("device", {}).get("trained", {})
        parity = f.get("parity", {}).get("trained", {})
        cpu2 = results_cell("eval_speed-cpu", "market", 3)
        text = (f"{f.get('queries', 0):,} x {f.get('gallery', 0):,}: {_fmt(dev.get('total_s'))} s on "
                f"{opts.device}; largest metric difference from the CPU {_fmt(f.get('max_diff'), '.1e')}")
        beside = f"CPU, same run: {_fmt(parity.get('cpu_total_s'))} s"
        return text, beside + (f"; 2 CPU cores (RESULTS.md): {cpu2} s" if cpu2 else "")
    if name == "fp16":
        skipped = f.get("skipped_steps", {})
        done = f"{f.get('iterations')} of {f.get('asked')}" if f.get("iterations") != f.get("asked") \
            else f"{f.get('iterations')}"
        return (f"{done} iterations ({f.get('precision')}): skipped steps "
                f"D {skipped.get('discriminator')} / G+E_a {skipped.get('joint')} "
                f"(limit {f.get('skip_limit')}), non-finite losses "
                f"{f.get('non_finite_losses')}, final scales {f.get('final_scale')}",
                "the published code's fp16 (apex) overflowed")
    if name == "ddp":
        attempts = "; ".join(f"{k}: {v}" for k, v in f.get("attempts", {}).items())
        return (f"backend {f.get('backend')}, {f.get('iterations')} iterations, "
                f"{_fmt(f.get('s_per_iteration'))} s/it; tensors differing between the ranks at the end: "
                f"{f.get('differing_after')} ({f.get('moved')} of {f.get('tensors')} moved)", attempts)
    return "-", "-"


def render_markdown(summary: dict[str, Any], opts: Options) -> str:
    """RESULTS.section.md: this check's table, then the train_speed and eval_speed sections as written
    by those scripts (each between its own markers, to replace the same section of RESULTS.md)."""
    info, steps = summary["machine"], summary["steps"]
    kind = "cuda" if opts.on_cuda else "cpu"
    gpu = f", GPU {info['gpu']} ({info.get('gpu_memory_gib', 0):.0f} GiB, CUDA {info.get('cuda_build')})" \
        if opts.on_cuda and "gpu" in info else ""
    passed = sum(r["status"] in ("ok", "skipped") for r in steps.values())
    lines = [
        f"<!-- BEGIN gpu_check-{opts.profile}-{kind} -->",
        f"## GPU check, {opts.profile} profile, {opts.device} (`benchmarks/gpu_check.sh`)",
        "",
        f"Measured {summary['started'][:10]} with `{opts.command}`.",
        f"Machine: {info['cpu']}, {info['cores']} cores{gpu}; torch {info['torch']}, "
        f"Python {info['python']}; load average {(info.get('load_average') or ['-'])[0]} at the start. "
        f"Total {summary['wall_s']:.0f} s (budget {opts.budget} s); {passed} of {len(steps)} steps passed.",
        "",
        "| step | status | wall (s) | result | beside |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, result in steps.items():
        text, beside = _step_line(name, result, opts)
        error = str(result.get("error", "?"))
        if result["status"] not in ("ok", "skipped") and error[:60] not in text:
            text = error[:300] + ("" if text == "-" else f" ({text})")
        cells = [name, result["status"], result.get("wall_s", "-"), text, beside]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Pictures: `train/loss_curves.png`, `train/swap_grid.png` (test images, row = appearance, "
              "column = structure), `fp16/loss_curves.png`.", "",
              f"<!-- END gpu_check-{opts.profile}-{kind} -->", ""]
    for name in ("train_speed", "eval"):
        section = Path(opts.out) / name / "section.md"
        if section.is_file():
            lines += ["", section.read_text()]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any], opts: Options) -> None:
    out = Path(opts.out)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "RESULTS.section.md").write_text(render_markdown(summary, opts))


def fit_train_iterations(opts: Options, speed: dict[str, Any] | None, timeout: float) -> int | None:
    """On a GPU: fewer training iterations when train_speed's bf16 figure says the asked-for number
    would not finish within the step's timeout (a cut run still gives curves, grid and recon_l1; a
    killed one gives nothing); None when they fit or nothing was measured."""
    bf16 = ((speed or {}).get("figures", {}).get("modes", {})).get("bf16", {})
    if not opts.on_cuda or not _finite(bf16.get("median_s")):
        return None
    fit = int((timeout - TRAIN_OVERHEAD_S) / (bf16["median_s"] * TRAIN_SLOWDOWN))
    return max(10, fit) if fit < opts.train_iterations else None


def parse_options(argv: list[str] | None) -> Options:
    """Command-line flags, with the counts defaulted per device kind (see --help)."""
    cuda, cpu = DEFAULTS["cuda"], DEFAULTS["cpu"]

    def both(key: str) -> str:
        return f"default {cuda[key]} on cuda, {cpu[key]} on cpu"

    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="Counts and timeouts default per device kind: the GPU run is the issue's (<= 10 minutes on "
               "one H200); the CPU run (`--device cpu --profile tiny`) shrinks them to fit 3 minutes on 2 "
               f"cores. Step timeouts (s): cuda {TIMEOUTS['cuda']}; cpu {TIMEOUTS['cpu']}.")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--profile", default="paper", choices=sorted(train_speed.PROFILES),
                        help="model profile (default: paper)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (summary.json, RESULTS.section.md, a folder per step)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--ids", type=int, help=f"synthetic identities ({both('ids')})")
    parser.add_argument("--cameras", type=int, help=f"synthetic cameras ({both('cameras')})")
    parser.add_argument("--teacher-iterations", type=int,
                        help=f"0: an untrained teacher ({both('teacher_iterations')})")
    parser.add_argument("--speed-iterations", type=int,
                        help=f"timed iterations per mode ({both('speed_iterations')})")
    parser.add_argument("--speed-warmup", type=int,
                        help=f"untimed iterations per mode ({both('speed_warmup')})")
    parser.add_argument("--speed-modes", help=f"train_speed modes (default {','.join(SPEED_MODES)} on cuda, "
                                              f"{','.join(CPU_SPEED_MODES)} on cpu)")
    parser.add_argument("--train-iterations", type=int,
                        help=f"the bf16 training ({both('train_iterations')})")
    parser.add_argument("--fp16-iterations", type=int, help=f"fp16 + GradScaler ({both('fp16_iterations')})")
    parser.add_argument("--ddp-iterations", type=int, help=f"two-rank iterations ({both('ddp_iterations')})")
    parser.add_argument("--eval-size", choices=sorted(eval_speed.SIZES), help=f"({both('eval_size')})")
    parser.add_argument("--eval-kinds", type=lambda text: tuple(k for k in text.split(",") if k),
                        help="comma-separated feature kinds of eval_speed, trained and/or random "
                             f"(default {','.join(cuda['eval_kinds'])} on cuda, "
                             f"{','.join(cpu['eval_kinds'])} on cpu)")
    parser.add_argument("--eval-repeats", type=int, help=f"best of N on the device ({both('eval_repeats')})")
    parser.add_argument("--num-swaps", type=int, help=f"test swap pairs scored ({both('num_swaps')})")
    parser.add_argument("--num-recon", type=int, help=f"test images behind recon_l1 ({both('num_recon')})")
    parser.add_argument("--workers", type=int, help=f"data loader workers ({both('workers')})")
    parser.add_argument("--batch-size", type=int, help="per stream (default: the profile's, 8 for paper)")
    parser.add_argument("--threads", type=int, help="CPU runs: torch threads (default: the idle cores)")
    parser.add_argument("--budget", type=int, help=f"seconds for the whole check ({both('budget')})")
    parser.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                        help="override one step's timeout (repeatable)")
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work (data, teacher, models)")
    args = parser.parse_args(argv)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                     f"CUDA build {torch.version.cuda}); use --device cpu --profile tiny")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; choose from {','.join(STEPS)}")
    timeouts = dict(TIMEOUTS[kind])
    for item in args.timeout:
        step, _, seconds = item.partition("=")
        if step not in STEPS or not seconds.isdigit():
            parser.error(f"--timeout {item!r}: expected STEP=SECONDS with STEP one of {','.join(STEPS)}")
        timeouts[step] = int(seconds)
    modes = tuple(m.strip() for m in (args.speed_modes or ",".join(
        SPEED_MODES if kind == "cuda" else CPU_SPEED_MODES)).split(",") if m.strip())
    for mode in modes:
        train_speed.Mode.parse(mode)  # a typo fails now, not after minutes
    values = {key: getattr(args, key) if getattr(args, key, None) is not None else default
              for key, default in DEFAULTS[kind].items()}
    command = "bash benchmarks/gpu_check.sh " + shlex.join(argv if argv is not None else sys.argv[1:])
    return Options(
        device=device, profile=args.profile, out=str(args.out.resolve()), steps=steps,
        speed_modes=modes, batch_size=args.batch_size or train_speed.DEFAULT_BATCH.get(args.profile, 8),
        threads=args.threads or default_threads(), timeouts=timeouts, keep_work=args.keep_work,
        command=command, **values)


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] in (["--run-step"], ["--ddp-rank"]):  # a child of this script
        hidden = argparse.ArgumentParser()
        hidden.add_argument("--run-step")
        hidden.add_argument("--ddp-rank", type=int)
        hidden.add_argument("--backend")
        hidden.add_argument("--options", type=Path)
        hidden.add_argument("--record", type=Path)
        args = hidden.parse_args(raw)
        values = json.loads(args.options.read_text())
        tuples = {k: tuple(values[k]) for k in ("steps", "speed_modes", "eval_kinds")}  # JSON made them lists
        opts = Options(**{**values, **tuples})
        if args.run_step:
            run_step_here(opts, args.run_step)
        else:
            ddp_rank(opts, args.ddp_rank, args.backend, args.record)
        return 0

    opts = parse_options(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps(dataclasses.asdict(opts), indent=1))
    summary: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"),
                               "command": opts.command, "options": dataclasses.asdict(opts),
                               "machine": machine(opts.device), "steps": {}}
    where = summary["machine"].get("gpu", summary["machine"]["cpu"])
    print(f"gpu_check: {opts.profile} profile on {opts.device} ({where}), torch {torch.__version__}; "
          f"steps {', '.join(opts.steps)}; out {out}", flush=True)
    begin = time.monotonic()
    for name in opts.steps:
        left = opts.budget - (time.monotonic() - begin)
        setup = summary["steps"].get("setup")
        if name in NEEDS_SETUP and setup is not None and setup["status"] != "ok":
            result = {"status": "failed", "error": "setup failed: no validated data or teacher", "wall_s": 0}
        elif left < 5:
            result = {"status": "failed", "error": f"not run: the --budget of {opts.budget} s was spent",
                      "wall_s": 0}
        else:
            timeout = min(opts.timeouts[name], left)
            reduced = fit_train_iterations(opts, summary["steps"].get("train_speed"), timeout) \
                if name == "train" else None
            if reduced is not None:
                print(f"gpu_check: train: {reduced} iterations instead of {opts.train_iterations}: at the "
                      f"measured bf16 speed, {opts.train_iterations} would not fit in {timeout:.0f} s",
                      flush=True)
                opts = dataclasses.replace(opts, train_iterations=reduced)
                (out / "options.json").write_text(json.dumps(dataclasses.asdict(opts), indent=1))
            print(f"gpu_check: {name} (timeout {timeout:.0f} s) ...", flush=True)
            result = run_step(opts, name, timeout)
            if reduced is not None:
                result["iterations_reduced_from"] = summary["options"]["train_iterations"]
        summary["steps"][name] = result
        summary["wall_s"] = time.monotonic() - begin
        summary["passed"] = all(r["status"] in ("ok", "skipped") for r in summary["steps"].values())
        write_summary(summary, opts)  # after every step: a killed run still leaves what it measured
        text, _ = _step_line(name, result, opts)
        shown = text if result["status"] in ("ok", "skipped") else result.get("error", "")
        print(f"gpu_check: {name}: {result['status']} in {result['wall_s']} s: {shown}", flush=True)
    summary["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    write_summary(summary, opts)
    if not opts.keep_work:
        shutil.rmtree(opts.work, ignore_errors=True)
    print(f"gpu_check: {'PASSED' if summary['passed'] else 'FAILED'} in {summary['wall_s']:.0f} s; "
          f"{out / 'summary.json'}, {out / 'RESULTS.section.md'}", flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
