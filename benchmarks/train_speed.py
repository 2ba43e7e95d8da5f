"""Seconds per iteration and peak memory of the joint DG-Net training loop, per precision / compile mode.

    python benchmarks/train_speed.py --profile cpu --device cpu --modes fp32,bf16,compile --write
    python benchmarks/train_speed.py --profile paper --device cuda \\
        --modes fp32,bf16,fp16,compile,bf16+compile --iterations 30 --warmup 5 --write
    python benchmarks/train_speed.py --profile cpu --modes bf16 --iterations 5 --by-network --write

Timed: the trainer's own iteration (`build_joint_step`) at iteration 40,000 of the paper's schedule
(every ramp complete: the most expensive one), the host-to-device copy included, with an untrained
teacher and synthetic batches made once (data loading runs in loader workers, beside the step). Each
mode in a fresh process, so that neither its peak memory nor its compile caches leak into the next;
one the device cannot run (fp16 on the CPU, a failed or too slow compile) is a skipped row, with why.
`--by-network`: the first mode's CPU step under torch.profiler, seconds per network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.profiler import ProfilerActivity, record_function
from torch.profiler import profile as profile_ops

from dgnet.errors import ConfigError
from dgnet.profiles import PROFILES, apply_assignments, get_profile
from dgnet.training.runtime import DistContext, determinism, resolve_amp, select_device
from dgnet.training.schedule import loss_weights_at
from dgnet.training.trainer import DGNetTrainConfig, build_joint_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported by path
import common
from common import TIMED_ITERATION, load_average, load_teacher, machine, synthetic_batch

PAPER_ITERATIONS = 100_000
# Per-stream batch per profile: the paper's 8 (the paper and cpu profiles, dgnet/profiles.py); tiny: tests.
DEFAULT_BATCH = {"paper": 8, "cpu": 8, "tiny": 4}
# The targets for the paper profile on one GPU, and the published code's figures.
TARGET_S_PER_ITER = 0.1
TARGET_PEAK_GB = 8.0
TARGET = (f"<= {TARGET_S_PER_ITER} s per iteration (100k iterations in under 3 hours) with peak GPU "
          f"memory <= {TARGET_PEAK_GB:g} GB (reserved); the published code needed 1.2-1.9 s per "
          "iteration and >= 10 GB in fp16")
PRECISIONS = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
PAPER_GPU_COMMAND = ("python benchmarks/train_speed.py --profile paper --device cuda "
                     "--modes fp32,bf16,fp16,compile,bf16+compile,bf16+cl --iterations 30 --warmup 5 --write")


class Mode(NamedTuple):
    """One measured configuration: autocast precision (the trainer's amp), compilation, memory format."""

    amp: str
    compile: bool
    channels_last: bool

    @classmethod
    def parse(cls, text: str) -> Mode:
        """"bf16+compile+cl" -> Mode("bf16", True, True); "compile" alone is fp32 + compile."""
        tokens = [t.strip() for t in text.lower().split("+") if t.strip()]
        precisions = [t for t in tokens if t in PRECISIONS]
        if not tokens or len(precisions) > 1 or set(tokens) - {*PRECISIONS, "compile", "cl"}:
            raise ConfigError(f"--modes: {text!r} is not a mode; use fp32|bf16|fp16, optionally "
                              "+compile and/or +cl (e.g. bf16+compile)")
        return cls(PRECISIONS[precisions[0]] if precisions else "off", "compile" in tokens, "cl" in tokens)

    @property
    def name(self) -> str:
        flags = [flag for flag, on in (("compile", self.compile), ("cl", self.channels_last)) if on]
        return "+".join([next(k for k, v in PRECISIONS.items() if v == self.amp), *flags])


def measure(profile: str, device: str, mode: str, iterations: int, warmup: int,
            batch_size: int | None = None, rss_at_start_mb: float | None = None,
            model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Time `iterations` joint DG-Net iterations after `warmup` untimed ones, in this process: a row with
    the status ("ok" / "skipped" + reason), the times and their median / p90 / min, memory, loss weights."""
    if iterations < 1 or warmup < 0:
        raise ConfigError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    parsed, batch_size = Mode.parse(mode), batch_size or DEFAULT_BATCH[profile]
    row: dict[str, Any] = {
        "profile": profile, "mode": parsed.name, "amp": parsed.amp, "compile": parsed.compile,
        "channels_last": parsed.channels_last, "batch_size": batch_size,
        "images_per_iteration": 4 * batch_size, "iteration": TIMED_ITERATION, "warmup": warmup,
        "torch_threads": torch.get_num_threads(), "load_average_start": load_average(), "device": device}
    try:
        dev = select_device(device)
    except ConfigError as exc:
        return row | {"status": "skipped", "reason": str(exc)}
    row["device"] = str(dev)
    if reason := cannot_run(parsed, dev):
        return row | {"status": "skipped", "reason": reason}
    model_cfg = get_profile(profile, pretrained=False, **(model_overrides or {}))  # weights: not the cost
    cfg = DGNetTrainConfig(batch_size=batch_size, device=device, amp=parsed.amp, compile=parsed.compile,
                           channels_last=parsed.channels_last, num_workers=0)
    weights = loss_weights_at(TIMED_ITERATION, cfg.schedule)
    row["loss_weights"] = {k: round(v, 4) for k, v in dataclasses.asdict(weights).items()}
    with determinism(cfg.seed, cfg.deterministic):  # as in training: seeds, and cudnn.benchmark on
        ctx = DistContext(0, 1, 0, dev, False)
        step = build_joint_step(model_cfg, cfg, ctx, load_teacher(model_cfg, dev)).step
        batch = synthetic_batch(model_cfg.image_height, model_cfg.image_width, batch_size,
                                model_cfg.num_classes, dev)
        times: list[float] = []
        for k in range(warmup + iterations):
            start = common.clock(dev)
            try:
                logs = step(TIMED_ITERATION + k, batch)
            except torch.cuda.OutOfMemoryError:
                total = torch.cuda.get_device_properties(dev).total_memory / 2**30
                return row | {"status": "skipped", "reason": f"out of GPU memory ({total:.0f} GiB device)"}
            except Exception as exc:
                if not parsed.compile:
                    raise  # an eager failure is a bug, not an unavailable mode
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                reason = f"torch.compile failed: {type(exc).__name__}: {first}"
                return row | {"status": "skipped", "reason": reason}
            times.append(common.clock(dev) - start)
    row["first_iteration_s"], times = times[0], times[warmup:]  # the first: compilation / cudnn autotuning
    median = statistics.median(times)
    row |= {"loss_total": logs.get("loss/total"), "status": "ok", "iterations": iterations,
            "times_s": [round(t, 4) for t in times], "median_s": median, "min_s": min(times),
            "it_per_s": 1.0 / median,  # p90 "inclusive": within the observed range even for a few values
            "p90_s": statistics.quantiles(times, n=10, method="inclusive")[8] if len(times) > 1 else times[0],
            "projected_100k_h": median * PAPER_ITERATIONS / 3600, "load_average_end": load_average()}
    if dev.type == "cuda":
        return row | {"peak_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20,
                      "peak_reserved_mb": torch.cuda.max_memory_reserved(dev) / 2**20,
                      "gpu": torch.cuda.get_device_name(dev)}
    return row | {"peak_rss_mb": common.proc_memory_mb("VmHWM"), "rss_at_start_mb": rss_at_start_mb}


def cannot_run(mode: Mode, dev: torch.device) -> str | None:
    """Why `dev` cannot run `mode` (the trainer would refuse it or fail), the reason shown in the table."""
    if mode.amp == "fp16" and dev.type != "cuda":
        return "fp16 autocast needs CUDA (the trainer refuses it on the CPU; use bf16)"
    if mode.amp == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported on {torch.cuda.get_device_name(dev)}"
    return None


def run_modes(argv: list[str], modes: list[str], until: float = math.inf, reserve: float = 0.0) -> list[dict]:
    """Each mode in a child (this script's `argv` and `--child MODE`), printed as it ends; a mode gets the
    --mode-timeout or what time.monotonic() `until` leaves after `reserve` s for each later child."""
    args, rows = build_parser().parse_args(argv), []
    runnable = [m for m in modes if not cannot_run(Mode.parse(m), torch.device(args.device))]
    for mode in modes:
        row = {"profile": args.profile, "mode": Mode.parse(mode).name, "device": args.device,
               "load_average_start": load_average(), "status": "skipped"}
        if reason := cannot_run(Mode.parse(mode), torch.device(args.device)):  # no child needed to say so
            rows.append(row | {"reason": reason, "expected": True})
        else:
            later = len(runnable) - runnable.index(mode) - 1
            timeout = max(5, int(min(args.mode_timeout, until - time.monotonic() - reserve * later)))
            try:
                rows.append(common.run_child([__file__, *argv, "--child", mode], timeout))
            except TimeoutError:
                rows.append(row | {"reason": f"did not finish within --mode-timeout {timeout} s (on "
                                             f"{os.cpu_count()} cores; compilation is the slow part)"})
            except RuntimeError as exc:
                rows.append(row | {"reason": str(exc)})
        common.print_cells(record({}, rows[-1:], ""))
    return rows


def section_name(profile: str, device: str, threads: int = 0) -> str:
    return common.section_name(f"train_speed-{profile}", device, threads)


def record(info: dict[str, Any], rows: list[dict[str, Any]], command: str,
           gpu_pending: bool = False) -> dict[str, Any]:
    """This script's RESULTS.json record of one (profile, device) section: figures and table cells."""
    profile, device = (rows[0]["profile"], rows[0]["device"]) if rows else ("?", "cpu")
    on_gpu, ok = device.startswith("cuda"), [r for r in rows if r.get("status") == "ok"]
    batch, w = (ok[0]["batch_size"], ok[0]["loss_weights"]) if ok else (DEFAULT_BATCH.get(profile, "?"), None)
    memory = ("`torch.cuda.max_memory_allocated` / `max_memory_reserved` over the process" if on_gpu else
              "the process's peak RSS (VmHWM), torch itself included; 'RSS at start' = after importing torch "
              "and dgnet")
    text = [f"One joint DG-Net iteration as `train_dgnet` runs it (`build_joint_step`: a D step, then the "
            f"joint G + E_a step), batch {batch} per stream, at iteration {TIMED_ITERATION:,} of the paper's "
            "schedule, every loss on" + (f" (code {w['code_appearance']:g}, cycle {w['cycle']:g}, "
                                         f"lambda_prim {w['primary']:g}, fine {w['fine']:g})" if w else "")
            + ". Synthetic batches made once: data loading excluded, the host-to-device copy included. Each "
            "mode in a fresh process; median, p90 and min over the timed iterations; '100k' = median x "
            f"{PAPER_ITERATIONS:,}; 'first' = the first iteration (compilation, cudnn autotuning). Peak "
            f"memory: {memory}. Load: 1-minute load average at the mode's start / end."]
    text += [f"Paper-profile target on one GPU: {TARGET}."] if profile == "paper" else []
    text += [f"GPU figures of the paper profile: pending (target {TARGET}). On a CUDA machine: "
             f"`{PAPER_GPU_COMMAND}`."] if gpu_pending else []
    columns = ["mode", "median s/iter", "p90 s/iter", "min s/iter", "it/s", "100k iterations (h)",
               "first (s)", *(["peak allocated (GB)", "peak reserved (GB)"] if on_gpu
                              else ["peak RSS (MB)", "RSS at start (MB)"]),
               "load", *(["paper target"] if on_gpu else [])]
    table = []
    for r in rows:
        if r.get("status") != "ok":
            table.append([r["mode"], f"skipped: {r.get('reason', '?')}", *[""] * (len(columns) - 2)])
            continue
        load = " / ".join("-" if not x else f"{x[0]:.2f}" for x in (r.get("load_average_start"),
                                                                      r.get("load_average_end")))
        cells = [r["mode"], *(f"{r[k]:.3f}" for k in ("median_s", "p90_s", "min_s")), f"{r['it_per_s']:.2f}",
                 f"{r['projected_100k_h']:.1f}", f"{r['first_iteration_s']:.1f}"]
        if on_gpu:
            met = r["median_s"] <= TARGET_S_PER_ITER and r["peak_reserved_mb"] / 1024 <= TARGET_PEAK_GB
            cells += [f"{r['peak_allocated_mb'] / 1024:.2f}", f"{r['peak_reserved_mb'] / 1024:.2f}", load,
                      ("met" if met else "not met") if profile == "paper" else ""]
        else:
            cells += [f"{r.get(k) or 0:,.0f}" for k in ("peak_rss_mb", "rss_at_start_mb")] + [load]
        table.append(cells)
    title = f"Training speed, {profile} profile, {device}" + (
        "" if on_gpu else f", {info.get('torch_threads')} torch thread(s)") + " (`benchmarks/train_speed.py`)"
    return {"title": title, "command": command, "machine": info, "rows": rows, "text": text,
            "columns": columns, "table": table}


# --by-network: where one iteration's time goes, per network, forward and backward (torch.profiler)

SCOPE = "net:"


def _scoped(name: str, module: torch.nn.Module) -> None:
    """Wrap `module.forward` in a profiler scope named `net:<name>` (nested calls keep the outer)."""
    forward = module.forward

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(SCOPE + name):
            return forward(*args, **kwargs)

    module.forward = wrapped  # type: ignore[method-assign]


def attribute(events: Any) -> dict[str, dict[str, float]]:
    """Seconds per network: forward ops inside its scope, backward ops linked to those forward ops by
    the profiler's autograd sequence numbers."""

    def scope_of(event: Any) -> str | None:  # the innermost scope the op ran in
        while event is not None and not event.name.startswith(SCOPE):
            event = event.cpu_parent
        return None if event is None else event.name[len(SCOPE):]

    owner: dict[int, str] = {}
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for e in events:
        if e.name.startswith(SCOPE):
            totals[e.name[len(SCOPE):]]["forward"] += e.cpu_time_total / 1e6
        elif e.sequence_nr >= 0 and e.name.startswith("aten::") \
                and (name := scope_of(e)) is not None:  # a forward op with a graph node
            owner.setdefault(e.sequence_nr, name)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            totals[owner.get(e.sequence_nr, "other")]["backward"] += e.cpu_time_total / 1e6
    return dict(totals)


def by_network(profile: str, mode: str, iterations: int, command: str) -> dict[str, Any]:
    """The CPU step of `mode` under torch.profiler after one warm-up: seconds per network and iteration."""
    device, model_cfg = torch.device("cpu"), get_profile(profile, pretrained=False)
    cfg = DGNetTrainConfig(amp=resolve_amp(device, Mode.parse(mode).amp), num_workers=0)
    ctx = DistContext(0, 1, 0, device, False)
    built = build_joint_step(model_cfg, cfg, ctx, load_teacher(model_cfg, device))
    for name in ("appearance_encoder", "structure_encoder", "decoder", "discriminator"):
        _scoped(name, getattr(built.model, name))
    _scoped("teacher", built.teacher)
    batch = synthetic_batch(model_cfg.image_height, model_cfg.image_width, cfg.batch_size,
                            model_cfg.num_classes, device)
    built.step(TIMED_ITERATION, batch)  # warm-up
    with profile_ops(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for k in range(iterations):
            built.step(TIMED_ITERATION + 1 + k, batch)
        wall = (time.perf_counter() - started) / iterations
    networks = sorted(((k, {p: v / iterations for p, v in d.items()})
                       for k, d in attribute(prof.events()).items()),
                      key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"]))
    rest = wall - sum(v["forward"] + v["backward"] for _, v in networks)
    return {"title": f"Where an iteration's time goes, {profile} profile, {torch.get_num_threads()} torch "
                     "threads (`benchmarks/train_speed.py --by-network`)",
            "command": command, "machine": machine(), "wall_s_per_iteration": wall, "amp": cfg.amp,
            "networks": dict(networks), "rest_s": rest,
            "text": [f"The trainer's own step at iteration {TIMED_ITERATION:,} (every loss on), amp "
                     f"{cfg.amp}, batch {cfg.batch_size} per stream, under torch.profiler (which slows it: "
                     f"{wall:.3f} s an iteration). Each network's backward ops are charged to it through the "
                     "autograd sequence numbers."],
            "columns": ["network", "forward (s)", "backward (s)", "share"],
            "table": [*([k, f"{v['forward']:.3f}", f"{v['backward']:.3f}",
                         f"{(v['forward'] + v['backward']) / wall:.1%}"] for k, v in networks),
                      ["rest (optimisers, loss arithmetic, Python)", "", "", f"{rest / wall:.1%}"]]}


def build_parser() -> argparse.ArgumentParser:
    """The command line (benchmarks/gpu_check.py runs the modes through it too)."""
    parser = common.parser(__doc__)
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--modes", default="fp32,bf16,fp16,compile,bf16+compile",
                        help="comma-separated: fp32|bf16|fp16, +compile, +cl (channels-last)")
    parser.add_argument("--iterations", type=int, default=15, help="timed iterations per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compile, autotune)")
    parser.add_argument("--batch-size", type=int, default=0, help="per stream (default: the profile's)")
    parser.add_argument("--mode-timeout", type=int, default=3600, help="seconds before a mode is given up")
    parser.add_argument("--by-network", action="store_true",
                        help="the first mode's CPU step under torch.profiler: seconds per network")
    parser.add_argument("--write", action="store_true", help="write its section of --results")
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a ModelConfig field of the profile changed (YAML value), e.g. "
                             "backbone_width=32; repeatable; the section's name then ends with the changes")
    parser.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    rss_at_start = common.proc_memory_mb("VmRSS")  # after importing torch and dgnet: the children's baseline
    args = common.parse(build_parser(), argv, "train_speed.py")
    overrides = apply_assignments({}, args.model_set)  # a bad field fails before minutes of measuring
    get_profile(args.profile, pretrained=False, **overrides)
    if args.child:
        print(json.dumps(measure(args.profile, args.device, args.child, args.iterations, args.warmup,
                                 args.batch_size or None, rss_at_start, overrides)))
        return
    modes = [m for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        Mode.parse(mode)  # so does a typo
    if args.by_network:
        result = by_network(args.profile, modes[0], args.iterations, args.command)
        print("\n".join(" | ".join(str(c) for c in row) for row in [result["columns"], *result["table"]]))
        name = f"profile_iteration-{args.profile}-{torch.get_num_threads()}thread"
    else:
        info = machine()
        print(f"{args.profile} profile on {args.device}: {info['cpu']}, {info['cores']} cores, "
              f"torch {info['torch']}, load average {info['load_average']}", flush=True)
        rows = run_modes([*args.argv, "--device", args.device], modes)
        info["load_average_end"] = load_average()
        name = section_name(args.profile, args.device, args.threads)
        if args.model_set:
            name += "-" + re.sub(r"[^A-Za-z0-9_.=]+", "", "-".join(args.model_set))
        gpu_pending = not args.device.startswith("cuda") and "train_speed-paper-cuda" not in common.recorded(
            args.results)
        result = record(info, rows, args.command, gpu_pending)
    if args.write:
        common.write_results(args.results, name, result)


if __name__ == "__main__":
    main()
