"""Seconds per iteration and peak memory of the joint DG-Net training loop, per precision / compile mode.

    python benchmarks/train_speed.py --profile cpu --device cpu --modes fp32,bf16,compile --write
    python benchmarks/train_speed.py --profile paper --device cuda \\
        --modes fp32,bf16,fp16,compile,bf16+compile --iterations 30 --warmup 5 --write

What is timed: the trainer's own iteration, `dgnet.training.trainer.make_joint_step` (what
`train_dgnet` runs each iteration; set up by benchmarks/common.py's `build_joint_step`): one
discriminator step on detached cross-identity fakes, then one joint generator + appearance-encoder
step, with its learning rates, loss weights, gradient scalers and host-to-device copy of the batch.
It runs at iteration 40,000 of the paper's schedule, after the warm-up ramps are complete (code
weights 1, cycle 2, lambda_prim 2, fine-grained 0.4): the most expensive iteration, with the frozen
teacher's soft labels (on flipped and unflipped images), the cycle decode and the code losses all
on. The teacher is a real `ReidBaseline` of the profile, untrained, saved with `save_model` and
loaded the way training loads it (`load_teachers`); its weights do not change the cost. Batches are
synthetic images of the profile's size (4 x batch-size clean images + their random-erased copies, as
the DG-Net sampler gives), made once: data loading and augmentation are not included (in training
they run in loader workers, beside the step).

Modes (comma-separated; tokens joined by "+"): fp32 | bf16 | fp16 (autocast, the trainer's `amp`),
`compile` (the trainer's `compile`: E_a, E_s and the decoder; D stays eager because of R1's double
backward), `cl` (channels-last; `--channels-last` adds it to every mode). A mode the device cannot
run (fp16 on the CPU, bf16 on an old GPU, a compile that fails or runs past --mode-timeout) is
reported as skipped with the reason.

Each mode runs in a fresh child process, so that neither its peak memory nor its compile caches
leak into the next mode's figures. Peak memory: on CUDA `torch.cuda.max_memory_allocated` and
`max_memory_reserved` over the child's life (model, optimiser states, activations); on the CPU the
child's peak resident set size (VmHWM of /proc/self/status, which includes torch itself: the RSS
after importing torch is listed beside it). The load average is read before and after each mode:
other processes on the machine slow the CPU figures down.

`--write` replaces this script's section for (profile, device) in benchmarks/RESULTS.md between
`<!-- BEGIN train_speed-PROFILE-DEVICE -->` / `<!-- END ... -->` markers, leaving the other sections,
and its rows under the same name in benchmarks/RESULTS.json.
Imports only dgnet and the standard library (GPU machines have torch but no MLOps packages).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dgnet.errors import ConfigError
from dgnet.models.config import PROFILES, get_profile
from dgnet.training.runtime import DistContext, determinism, select_device
from dgnet.training.schedule import loss_weights_at
from dgnet.training.trainer import DGNetTrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported by path
from common import (
    RESULTS,
    TIMED_ITERATION,
    build_joint_step,
    load_average,
    machine,
    synthetic_batch,
    write_results,
)

PAPER_ITERATIONS = 100_000
# Per-stream batch per profile: the paper's 8 (the paper and cpu profiles, dgnet/profiles.py); tiny: tests.
DEFAULT_BATCH = {"paper": 8, "cpu": 8, "tiny": 4}
# The targets for the paper profile on one GPU, and the published code's figures.
TARGET_S_PER_ITER = 0.1
TARGET_PEAK_GB = 8.0
PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
PAPER_GPU_COMMAND = ("python benchmarks/train_speed.py --profile paper --device cuda "
                     "--modes fp32,bf16,fp16,compile,bf16+compile,bf16+cl --iterations 30 --warmup 5 --write")


class Skipped(Exception):
    """A mode this device or torch build cannot run; its message is the reason shown in the table."""


@dataclasses.dataclass(frozen=True)
class Mode:
    """One measured configuration: autocast precision, compilation, memory format."""

    amp: str  # the trainer's amp: "off", "bf16", "fp16"
    compile: bool
    channels_last: bool

    @classmethod
    def parse(cls, text: str, channels_last: bool = False) -> Mode:
        """"bf16+compile+cl" -> Mode("bf16", True, True); "compile" alone is fp32 + compile."""
        tokens = [t.strip() for t in text.lower().split("+") if t.strip()]
        precisions = [t for t in tokens if t in PRECISIONS]
        unknown = [t for t in tokens if t not in PRECISIONS and t not in ("compile", "cl")]
        if unknown or len(precisions) > 1 or not tokens:
            raise ConfigError(f"--modes: {text!r} is not a mode; use fp32|bf16|fp16, optionally "
                              "+compile and/or +cl (e.g. bf16+compile)")
        amp = PRECISIONS[precisions[0]] if precisions else "off"
        return cls(amp, "compile" in tokens, channels_last or "cl" in tokens)

    @property
    def name(self) -> str:
        parts = [{"off": "fp32", "bf16": "bf16", "fp16": "fp16"}[self.amp]]
        parts += ["compile"] if self.compile else []
        parts += ["cl"] if self.channels_last else []
        return "+".join(parts)


# --------------------------------------------------------------------------------------------
# Measuring one mode (in this process)
# --------------------------------------------------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def measure(profile: str, device: str, mode: str, iterations: int, warmup: int,
            batch_size: int | None = None, channels_last: bool = False, num_classes: int | None = None,
            rss_at_start_mb: float | None = None,
            model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time `iterations` joint DG-Net iterations after `warmup` untimed ones; peak memory. In this process.

    Returns a row: mode, status ("ok" / "skipped" + reason), per-iteration times and their
    median / p90, it/s, the projected time of the paper's 100k iterations, memory, loss weights.
    """
    if iterations < 1 or warmup < 0:
        raise ConfigError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    parsed = Mode.parse(mode, channels_last)
    batch_size = batch_size or DEFAULT_BATCH[profile]
    row: dict[str, Any] = {
        "profile": profile, "mode": parsed.name, "amp": parsed.amp, "compile": parsed.compile,
        "channels_last": parsed.channels_last, "batch_size": batch_size,
        "images_per_iteration": 4 * batch_size, "iteration": TIMED_ITERATION, "warmup": warmup,
        "torch_threads": torch.get_num_threads(), "load_average_start": load_average(),
    }
    try:
        dev = select_device(device)
        row["device"] = str(dev)
        _check_mode(parsed, dev)
    except (Skipped, ConfigError) as exc:
        return {**row, "device": row.get("device", device), "status": "skipped", "reason": str(exc)}

    # pretrained=False: no ImageNet lookup; weights do not change the cost.
    overrides: dict[str, Any] = {"pretrained": False, **(model_overrides or {})}
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    model_cfg = get_profile(profile, **overrides)
    cfg = DGNetTrainConfig(batch_size=batch_size, device=device, amp=parsed.amp, compile=parsed.compile,
                           channels_last=parsed.channels_last, num_workers=0)
    weights = loss_weights_at(TIMED_ITERATION, cfg.schedule)
    row["loss_weights"] = {k: round(v, 4) for k, v in dataclasses.asdict(weights).items()}
    ctx = DistContext(0, 1, 0, dev, False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    # determinism(seed, False) as in training: seeds, and cudnn.benchmark on.
    with determinism(cfg.seed, cfg.deterministic):
        step = build_joint_step(model_cfg, cfg, ctx).step
        batch = synthetic_batch(model_cfg.image_height, model_cfg.image_width, batch_size,
                                model_cfg.num_classes, dev)

        times: list[float] = []
        for k in range(warmup + iterations):
            sync()
            start = time.perf_counter()
            try:
                logs = step(TIMED_ITERATION + k, batch)
            except torch.cuda.OutOfMemoryError:
                total = torch.cuda.get_device_properties(dev).total_memory / 2**30
                return {**row, "status": "skipped", "reason": f"out of GPU memory ({total:.0f} GiB device)"}
            except Exception as exc:
                if not parsed.compile:
                    raise  # an eager failure is a bug, not an unavailable mode
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                reason = f"torch.compile failed: {type(exc).__name__}: {first}"
                return {**row, "status": "skipped", "reason": reason}
            sync()
            elapsed = time.perf_counter() - start
            if k == 0:
                row["first_iteration_s"] = elapsed  # includes compilation / cudnn autotuning
            if k >= warmup:
                times.append(elapsed)
    row["loss_total"] = logs.get("loss/total")

    median = statistics.median(times)
    row.update({
        "status": "ok", "iterations": iterations, "times_s": [round(t, 4) for t in times],
        "median_s": median, "p90_s": _p90(times), "min_s": min(times), "it_per_s": 1.0 / median,
        "projected_100k_h": median * PAPER_ITERATIONS / 3600,
        "load_average_end": load_average(),
    })
    if dev.type == "cuda":
        row["peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["peak_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        row["gpu"] = torch.cuda.get_device_name(dev)
    else:
        row["peak_rss_mb"] = _proc_status_mb("VmHWM")
        row["rss_at_start_mb"] = rss_at_start_mb
    return row


def _check_mode(mode: Mode, dev: torch.device) -> None:
    """Raise Skipped when `dev` cannot run `mode` (the trainer would refuse it or fail)."""
    if mode.amp == "fp16" and dev.type != "cuda":
        raise Skipped("fp16 autocast needs CUDA (the trainer refuses it on the CPU; use bf16)")
    if mode.amp == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Skipped(f"bf16 is not supported on {torch.cuda.get_device_name(dev)}")
    if mode.compile and not hasattr(torch, "compile"):
        raise Skipped(f"torch {torch.__version__} has no torch.compile")


def _p90(values: list[float]) -> float:
    """The 90th percentile (inclusive: within the observed range even for a few values)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


# --------------------------------------------------------------------------------------------
# Children, machine description, RESULTS.md
# --------------------------------------------------------------------------------------------


def model_overrides(assignments: list[str]) -> dict[str, Any]:
    """`--model-set KEY=VALUE` assignments as ModelConfig overrides (values parsed as YAML)."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--model-set {assignment!r}: expected KEY=VALUE, e.g. backbone_width=32")
        overrides[key] = yaml.safe_load(text)
    return overrides


def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One mode in a fresh interpreter, so that its peak memory and compile caches are its own."""
    cmd = [sys.executable, __file__, "--child", mode, "--profile", args.profile, "--device", args.device,
           "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    for flag, value in (("--batch-size", args.batch_size), ("--num-classes", args.num_classes),
                        ("--threads", args.threads)):
        if value:
            cmd += [flag, str(value)]
    if args.channels_last:
        cmd.append("--channels-last")
    for assignment in args.model_set:
        cmd += ["--model-set", assignment]
    base = {"profile": args.profile, "mode": Mode.parse(mode, args.channels_last).name, "device": args.device,
            "load_average_start": load_average()}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.mode_timeout)
    except subprocess.TimeoutExpired:
        return {**base, "status": "skipped",
                "reason": f"did not finish within --mode-timeout {args.mode_timeout} s "
                          f"(on {os.cpu_count()} cores; compilation is the slow part)"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return {**base, "status": "skipped", "reason": f"child exited {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def section_name(profile: str, device: str, threads: int = 0) -> str:
    """One section per (profile, device kind), and per --threads when given."""
    name = f"train_speed-{profile}-{'cuda' if device.startswith('cuda') else 'cpu'}"
    return name + (f"-{threads}thread{'s' if threads > 1 else ''}" if threads else "")


def _fmt_load(load: list[float] | None) -> str:
    return "-" if not load else f"{load[0]:.2f}"


def render_section(name: str, info: dict[str, Any], rows: list[dict[str, Any]], command: str,
                   gpu_pending: bool = False) -> str:
    """The markdown of one (profile, device) section, between its markers."""
    profile = rows[0]["profile"] if rows else "?"
    device = rows[0]["device"] if rows else "cpu"
    on_gpu = device.startswith("cuda")
    ok = [r for r in rows if r.get("status") == "ok"]
    batch = ok[0]["batch_size"] if ok else DEFAULT_BATCH.get(profile, "?")
    threads = info["torch_threads"]
    load, load_end = info.get("load_average"), info.get("load_average_end")
    busy = ""
    if load:
        busy = f"; load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load)} at the start"
        if load_end:
            busy += f", {', '.join(f'{x:.2f}' for x in load_end)} at the end"
        if not on_gpu and max(load[0], load_end[0] if load_end else 0) > 0.5:
            busy += (". Other processes were using the cores: CPU figures are slower than on an idle machine "
                     "(each mode's own load average is in the table)")
            if threads > 1:  # why the 2-thread and 1-thread sections differ so much on a shared machine
                busy += ("; with several torch threads an op waits for its slowest thread, so a busy machine "
                         "hurts more than its share: --threads 1 gives steadier figures")
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if on_gpu and "gpu" in info else ""
    memory = f", {info['memory_gib']:.0f} GiB RAM" if info.get("memory_gib") else ""
    weights = ok[0]["loss_weights"] if ok else None
    lines = [
        f"<!-- BEGIN {name} -->",
        f"## Training speed, {profile} profile, {device}"
        + ("" if on_gpu else f", {threads} torch thread{'s' if threads > 1 else ''}")
        + " (`benchmarks/train_speed.py`)",
        "",
        f"Measured {dt.date.today().isoformat()} with `{command}`.",
        f"Machine: {info['cpu']}, {info['cores']} cores{memory} ({threads} torch "
        f"thread{'s' if threads > 1 else ''}){gpu}; torch {info['torch']}, Python {info['python']}{busy}.",
        "",
        f"One joint DG-Net iteration as `train_dgnet` runs it (`make_joint_step`: a D step, then the joint "
        f"G + E_a step), batch {batch} per stream "
        f"({4 * batch if isinstance(batch, int) else '?'} real images "
        f"+ their random-erased copies), at iteration {TIMED_ITERATION:,} of the paper's schedule, after "
        "the warm-up: teacher soft labels, cycle and code losses all on"
        + (f" (weights: code {weights['code_appearance']:g}, cycle {weights['cycle']:g}, "
           f"lambda_prim {weights['primary']:g}, fine {weights['fine']:g})" if weights else "")
        + ". Synthetic batches, made once: data loading is excluded (the host-to-device copy is included). "
        "Each mode in a fresh process; median, p90 and min over the timed iterations after the warm-up ones "
        "(on a busy machine the min is the closest to an idle machine's figure); it/s from the median; "
        f"'100k' = median x {PAPER_ITERATIONS:,} (the paper's run length); 'first' = the first iteration "
        "(compilation, much shorter when torch's on-disk compile cache is warm; cudnn autotuning). "
        + ("Peak memory: `torch.cuda.max_memory_allocated` / `max_memory_reserved` over the process."
           if on_gpu else
           "Peak memory: the process's peak RSS (VmHWM), torch itself included; 'RSS at start' = after "
           "importing torch and dgnet, so peak - start is the training's own (compiled modes: the compiler's "
           "too).")
        + " Load: 1-minute load average at the mode's start / end.",
        "",
    ]
    if on_gpu:
        lines += ["| mode | median s/iter | p90 s/iter | min s/iter | it/s | 100k iterations (h) | first (s) "
                  "| peak allocated (GB) | peak reserved (GB) | load | paper target |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    else:
        lines += ["| mode | median s/iter | p90 s/iter | min s/iter | it/s | 100k iterations (h) | first (s) "
                  "| peak RSS (MB) | RSS at start (MB) | load |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        load_cell = f"{_fmt_load(r.get('load_average_start'))} / {_fmt_load(r.get('load_average_end'))}"
        if r.get("status") != "ok":
            width = 11 if on_gpu else 10
            lines.append(f"| {r['mode']} | skipped: {r.get('reason', '?')} |" + " |" * (width - 2))
            continue
        cells = [r["mode"], f"{r['median_s']:.3f}", f"{r['p90_s']:.3f}", f"{r['min_s']:.3f}",
                 f"{r['it_per_s']:.2f}", f"{r['projected_100k_h']:.1f}", f"{r['first_iteration_s']:.1f}"]
        if on_gpu:
            peak_gb = r["peak_allocated_mb"] / 1024
            target = ""
            if profile == "paper":
                met = r["median_s"] <= TARGET_S_PER_ITER and r["peak_reserved_mb"] / 1024 <= TARGET_PEAK_GB
                target = "met" if met else "not met"
            cells += [f"{peak_gb:.2f}", f"{r['peak_reserved_mb'] / 1024:.2f}", load_cell, target]
        else:
            start = r.get("rss_at_start_mb")
            cells += [f"{r['peak_rss_mb']:,.0f}" if r.get("peak_rss_mb") else "-",
                      f"{start:,.0f}" if start else "-", load_cell]
        lines.append("| " + " | ".join(cells) + " |")
    target = (f"<= {TARGET_S_PER_ITER} s per iteration (100k iterations in under 3 hours) with peak GPU "
              f"memory <= {TARGET_PEAK_GB:g} GB (reserved); the published code needed 1.2-1.9 s per "
              "iteration and >= 10 GB in fp16")
    if profile == "paper":
        lines += ["", f"Paper-profile target on one GPU: {target}."]
    if gpu_pending:
        lines += ["", "GPU figures of the paper profile: pending (no GPU was lent to the session that "
                  f"measured these; target {target}). On a CUDA machine with torch only: "
                  f"`{PAPER_GPU_COMMAND}`."]
    lines += ["", f"<!-- END {name} -->"]
    return "\n".join(lines) + "\n"


def update_results(path: Path, name: str, section: str, record: dict[str, Any]) -> None:
    """Replace (or add) this script's section of the results file, and its record (rows, machine)."""
    write_results(path, name, section, record)


def _print_row(r: dict[str, Any]) -> None:
    if r.get("status") != "ok":
        print(f"{r['mode']:18s} skipped: {r.get('reason')}", flush=True)
        return
    if "peak_allocated_mb" in r:
        memory = (f"peak allocated {r['peak_allocated_mb'] / 1024:.2f} GB, "
                  f"reserved {r['peak_reserved_mb'] / 1024:.2f} GB")
    else:
        memory = (f"peak RSS {r.get('peak_rss_mb') or 0:,.0f} MB "
                  f"(at start {r.get('rss_at_start_mb') or 0:,.0f} MB)")
    print(f"{r['mode']:18s} median {r['median_s']:.3f} s  p90 {r['p90_s']:.3f} s  {r['it_per_s']:.2f} it/s  "
          f"100k: {r['projected_100k_h']:.1f} h  first {r['first_iteration_s']:.1f} s  {memory}  "
          f"load {_fmt_load(r.get('load_average_start'))} -> {_fmt_load(r.get('load_average_end'))}  "
          f"times {r['times_s']}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The command line; benchmarks/gpu_check.py parses its own settings with it too."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--modes", default="fp32,bf16,fp16,compile,bf16+compile",
                        help="comma-separated: fp32|bf16|fp16, +compile, +cl (channels-last)")
    parser.add_argument("--iterations", type=int, default=15, help="timed iterations per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compile, autotune)")
    parser.add_argument("--batch-size", type=int, default=0, help="per stream (default: the profile's)")
    parser.add_argument("--num-classes", type=int, default=0, help="training identities (default: profile's)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last in every mode")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mode-timeout", type=int, default=3600, help="seconds before a mode is given up")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help="write its section of --results")
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a ModelConfig field of the profile changed (YAML value), e.g. "
                             "backbone_width=32; repeatable; the section's name then ends with the changes")
    parser.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    rss_at_start = _proc_status_mb("VmRSS")  # after importing torch and dgnet: the children's baseline
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        row = measure(args.profile, args.device, args.child, args.iterations, args.warmup,
                      args.batch_size or None, args.channels_last, args.num_classes or None, rss_at_start,
                      model_overrides(args.model_set))
        print(json.dumps(row))
        return

    modes = [m for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        Mode.parse(mode)  # a typo fails before minutes of measuring
    get_profile(args.profile, pretrained=False, **model_overrides(args.model_set))  # so does a bad field
    info = machine()
    print(f"{args.profile} profile on {args.device}: {info['cpu']}, {info['cores']} cores, "
          f"torch {info['torch']}, load average {info['load_average']}", flush=True)
    rows = []
    for mode in modes:
        row = run_child(args, mode)
        rows.append(row)
        _print_row(row)
    info["load_average_end"] = load_average()
    if args.write:
        command = "python benchmarks/train_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        name = section_name(args.profile, args.device, args.threads)
        if args.model_set:
            name += "-" + re.sub(r"[^A-Za-z0-9_.=]+", "", "-".join(args.model_set))
        existing = args.results.read_text() if args.results.exists() else ""
        gpu_pending = not args.device.startswith("cuda") and "BEGIN train_speed-paper-cuda" not in existing
        section = render_section(name, info, rows, command.strip(), gpu_pending)
        record = {"command": command.strip(), "machine": info, "rows": rows}
        update_results(args.results, name, section, record)
        print(f"wrote {args.results} ({name})")


if __name__ == "__main__":
    main()
