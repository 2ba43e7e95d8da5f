"""Seconds per iteration and peak memory of the joint DG-Net training loop, per precision / compile mode.

    python benchmarks/train_speed.py --profile cpu --device cpu --modes fp32,bf16,compile --write
    python benchmarks/train_speed.py --profile paper --device cuda \\
        --modes fp32,bf16,fp16,compile,bf16+compile --iterations 30 --warmup 5 --write
    python benchmarks/train_speed.py --profile cpu --modes bf16 --iterations 5 --by-network --write

What is timed: the trainer's own iteration (`dgnet.training.trainer.build_joint_step`): one D step on
the detached cross-identity fakes, then the joint G + E_a step, with its learning rates, loss weights,
gradient scalers and host-to-device copy of the batch, at iteration 40,000 of the paper's schedule
(every ramp complete: the most expensive iteration). The teacher is an untrained `ReidBaseline` of
the profile, loaded the way training loads it. Batches are synthetic, made once: data loading is not
included (in training it runs in loader workers, beside the step).

Modes (comma-separated; tokens joined by "+"): fp32 | bf16 | fp16 (the trainer's `amp`), `compile`
(E_a, E_s and the decoder; D stays eager for R1's double backward), `cl` (channels-last). A mode the
device cannot run (fp16 on the CPU, a compile that fails or runs past --mode-timeout) is reported as
skipped with the reason. Each mode runs in a fresh child process, so that neither its peak memory
(CUDA: max allocated / reserved; CPU: the child's VmHWM) nor its compile caches leak into the next.
`--by-network` profiles the first mode's CPU step instead: seconds per network, forward and backward.
`--write` replaces this script's section of benchmarks/RESULTS.md and its record in RESULTS.json.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.profiler import ProfilerActivity, record_function
from torch.profiler import profile as profile_ops

from dgnet.errors import ConfigError
from dgnet.profiles import PROFILES, get_profile
from dgnet.training.runtime import DistContext, determinism, resolve_amp, select_device
from dgnet.training.schedule import loss_weights_at
from dgnet.training.trainer import DGNetTrainConfig, build_joint_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported by path
from common import (
    RESULTS,
    TIMED_ITERATION,
    load_average,
    load_teacher,
    machine,
    proc_memory_mb,
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
        flags = [flag for flag, on in (("compile", self.compile), ("cl", self.channels_last)) if on]
        return "+".join([next(k for k, v in PRECISIONS.items() if v == self.amp), *flags])


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
    except ConfigError as exc:
        return {**row, "device": device, "status": "skipped", "reason": str(exc)}
    row["device"] = str(dev)
    if reason := cannot_run(parsed, dev):
        return {**row, "status": "skipped", "reason": reason}

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
        step = build_joint_step(model_cfg, cfg, ctx, load_teacher(model_cfg, dev)).step
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
        "median_s": median, "min_s": min(times), "it_per_s": 1.0 / median,
        # inclusive: within the observed range even for a few values
        "p90_s": statistics.quantiles(times, n=10, method="inclusive")[8] if len(times) > 1 else times[0],
        "projected_100k_h": median * PAPER_ITERATIONS / 3600,
        "load_average_end": load_average(),
    })
    if dev.type == "cuda":
        row["peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["peak_reserved_mb"] = torch.cuda.max_memory_reserved(dev) / 2**20
        row["gpu"] = torch.cuda.get_device_name(dev)
    else:
        row["peak_rss_mb"] = proc_memory_mb("VmHWM")
        row["rss_at_start_mb"] = rss_at_start_mb
    return row


def cannot_run(mode: Mode, dev: torch.device) -> str | None:
    """Why `dev` cannot run `mode` (the trainer would refuse it or fail), the reason shown in the table."""
    if mode.amp == "fp16" and dev.type != "cuda":
        return "fp16 autocast needs CUDA (the trainer refuses it on the CPU; use bf16)"
    if mode.amp == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported on {torch.cuda.get_device_name(dev)}"
    if mode.compile and not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    return None


def model_overrides(assignments: list[str]) -> dict[str, Any]:
    """`--model-set KEY=VALUE` assignments as ModelConfig overrides (values parsed as YAML)."""
    overrides = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--model-set {assignment!r}: expected KEY=VALUE, e.g. backbone_width=32")
        overrides[key] = yaml.safe_load(text)
    return overrides


def run_child(argv: list[str], mode: str, timeout: float) -> dict[str, Any]:
    """One mode in a fresh interpreter (this script's command line `argv` and `--child MODE`), so that
    its peak memory and compile caches are its own."""
    args = build_parser().parse_args(argv)
    row = {"profile": args.profile, "mode": Mode.parse(mode, args.channels_last).name, "device": args.device,
           "load_average_start": load_average(), "status": "skipped"}
    if reason := cannot_run(Mode.parse(mode), torch.device(args.device)):  # no child needed to say so
        return row | {"reason": reason}
    try:
        out = subprocess.run([sys.executable, __file__, *argv, "--child", mode], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return row | {"reason": f"did not finish within --mode-timeout {timeout} s (on {os.cpu_count()} "
                                "cores; compilation is the slow part)"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return row | {"reason": f"child exited {out.returncode}: {tail}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_modes(argv: list[str], modes: list[str], until: float = math.inf, reserve: float = 0.0) -> list[dict]:
    """run_child per mode, each printed as it ends; a mode gets the --mode-timeout or what time.monotonic()
    `until` leaves after `reserve` s for each later mode that needs a child."""
    args, rows = build_parser().parse_args(argv), []
    runnable = [m for m in modes if not cannot_run(Mode.parse(m), torch.device(args.device))]
    for mode in modes:
        later = len(runnable) - runnable.index(mode) - 1 if mode in runnable else 0
        rows.append(run_child(argv, mode, max(5, int(min(args.mode_timeout,
                                                          until - time.monotonic() - reserve * later)))))
        print_row(rows[-1])
    return rows


def section_name(profile: str, device: str, threads: int = 0) -> str:
    """One section per (profile, device kind), and per --threads when given."""
    name = f"train_speed-{profile}-{'cuda' if device.startswith('cuda') else 'cpu'}"
    return name + (f"-{threads}thread{'s' if threads > 1 else ''}" if threads else "")


def _load(r: dict[str, Any]) -> str:
    return " / ".join("-" if not x else f"{x[0]:.2f}" for x in (r.get("load_average_start"),
                                                                  r.get("load_average_end")))


def record(info: dict[str, Any], rows: list[dict[str, Any]], command: str,
           gpu_pending: bool = False) -> dict[str, Any]:
    """This script's RESULTS.json record of one (profile, device) section: figures and table cells."""
    profile, device = (rows[0]["profile"], rows[0]["device"]) if rows else ("?", "cpu")
    on_gpu = device.startswith("cuda")
    ok = [r for r in rows if r.get("status") == "ok"]
    batch = ok[0]["batch_size"] if ok else DEFAULT_BATCH.get(profile, "?")
    w = ok[0]["loss_weights"] if ok else None
    memory = ("`torch.cuda.max_memory_allocated` / `max_memory_reserved` over the process" if on_gpu else
              "the process's peak RSS (VmHWM), torch itself included; 'RSS at start' = after importing torch "
              "and dgnet")
    target = (f"<= {TARGET_S_PER_ITER} s per iteration (100k iterations in under 3 hours) with peak GPU "
              f"memory <= {TARGET_PEAK_GB:g} GB (reserved); the published code needed 1.2-1.9 s per "
              "iteration and >= 10 GB in fp16")
    text = [f"One joint DG-Net iteration as `train_dgnet` runs it (`build_joint_step`: a D step, then the "
            f"joint G + E_a step), batch {batch} per stream, at iteration {TIMED_ITERATION:,} of the paper's "
            "schedule, every loss on" + (f" (code {w['code_appearance']:g}, cycle {w['cycle']:g}, "
                                         f"lambda_prim {w['primary']:g}, fine {w['fine']:g})" if w else "")
            + ". Synthetic batches made once: data loading excluded, the host-to-device copy included. Each "
            "mode in a fresh process; median, p90 and min over the timed iterations; '100k' = median x "
            f"{PAPER_ITERATIONS:,}; 'first' = the first iteration (compilation, cudnn autotuning). Peak "
            f"memory: {memory}. Load: 1-minute load average at the mode's start / end."]
    if profile == "paper":
        text.append(f"Paper-profile target on one GPU: {target}.")
    if gpu_pending:
        text.append(f"GPU figures of the paper profile: pending (target {target}). On a CUDA machine: "
                    f"`{PAPER_GPU_COMMAND}`.")
    columns = ["mode", "median s/iter", "p90 s/iter", "min s/iter", "it/s", "100k iterations (h)",
               "first (s)", *(["peak allocated (GB)", "peak reserved (GB)"] if on_gpu
                              else ["peak RSS (MB)", "RSS at start (MB)"]),
               "load", *(["paper target"] if on_gpu else [])]
    table = []
    for r in rows:
        if r.get("status") != "ok":
            table.append([r["mode"], f"skipped: {r.get('reason', '?')}", *[""] * (len(columns) - 2)])
            continue
        cells = [r["mode"], *(f"{r[k]:.3f}" for k in ("median_s", "p90_s", "min_s")), f"{r['it_per_s']:.2f}",
                 f"{r['projected_100k_h']:.1f}", f"{r['first_iteration_s']:.1f}"]
        if on_gpu:
            met = r["median_s"] <= TARGET_S_PER_ITER and r["peak_reserved_mb"] / 1024 <= TARGET_PEAK_GB
            cells += [f"{r['peak_allocated_mb'] / 1024:.2f}", f"{r['peak_reserved_mb'] / 1024:.2f}", _load(r),
                      ("met" if met else "not met") if profile == "paper" else ""]
        else:
            cells += [f"{r.get(k) or 0:,.0f}" for k in ("peak_rss_mb", "rss_at_start_mb")] + [_load(r)]
        table.append(cells)
    title = f"Training speed, {profile} profile, {device}" + (
        "" if on_gpu else f", {info.get('torch_threads')} torch thread(s)") + " (`benchmarks/train_speed.py`)"
    return {"title": title, "command": command, "machine": info, "rows": rows, "text": text,
            "columns": columns, "table": table}


def print_row(row: dict[str, Any]) -> None:
    """One mode's figures as its RESULTS.md row shows them, each beside its column's name."""
    section = record({}, [row], "")
    cells = zip(section["columns"], section["table"][0], strict=True)
    print("; ".join(f"{c} {v}" for c, v in cells if v != ""), flush=True)


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
    scopes = sorted((e.time_range.start, e.time_range.end, e.name[len(SCOPE):])
                    for e in events if e.name.startswith(SCOPE))
    starts = [s[0] for s in scopes]

    def scope_of(t: float) -> str | None:
        i = bisect.bisect_right(starts, t) - 1
        while i >= 0:  # the innermost scope that contains t
            if scopes[i][0] <= t <= scopes[i][1]:
                return scopes[i][2]
            i -= 1
        return None

    owner: dict[int, str] = {}
    totals: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for e in events:
        if e.name.startswith(SCOPE):
            totals[e.name[len(SCOPE):]]["forward"] += e.cpu_time_total / 1e6
        elif e.sequence_nr >= 0 and e.name.startswith("aten::") \
                and (name := scope_of(e.time_range.start)) is not None:  # a forward op with a graph node
            owner.setdefault(e.sequence_nr, name)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            totals[owner.get(e.sequence_nr, "other")]["backward"] += e.cpu_time_total / 1e6
    return dict(totals)


def by_network(profile: str, mode: str, iterations: int, command: str) -> dict[str, Any]:
    """The CPU step of `mode` under torch.profiler after one warm-up: seconds per network and iteration."""
    device, parsed = torch.device("cpu"), Mode.parse(mode)
    model_cfg = get_profile(profile, pretrained=False)
    cfg = DGNetTrainConfig(amp=resolve_amp(device, parsed.amp), num_workers=0)
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
    parser.add_argument("--by-network", action="store_true",
                        help="the first mode's CPU step under torch.profiler: seconds per network")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--write", action="store_true", help="write its section of --results")
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a ModelConfig field of the profile changed (YAML value), e.g. "
                             "backbone_width=32; repeatable; the section's name then ends with the changes")
    parser.add_argument("--child", metavar="MODE", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    rss_at_start = proc_memory_mb("VmRSS")  # after importing torch and dgnet: the children's baseline
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
    command = "python benchmarks/train_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    modes = [m for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        Mode.parse(mode)  # a typo fails before minutes of measuring
    if args.by_network:
        result = by_network(args.profile, modes[0], args.iterations, command)
        print("\n".join(" | ".join(str(c) for c in row) for row in [result["columns"], *result["table"]]))
        name = f"profile_iteration-{args.profile}-{torch.get_num_threads()}thread"
    else:
        get_profile(args.profile, pretrained=False, **model_overrides(args.model_set))  # so does a bad field
        info = machine()
        print(f"{args.profile} profile on {args.device}: {info['cpu']}, {info['cores']} cores, "
              f"torch {info['torch']}, load average {info['load_average']}", flush=True)
        rows = run_modes([*(argv if argv is not None else sys.argv[1:]), "--device", args.device], modes)
        info["load_average_end"] = load_average()
        name = section_name(args.profile, args.device, args.threads)
        if args.model_set:
            name += "-" + re.sub(r"[^A-Za-z0-9_.=]+", "", "-".join(args.model_set))
        existing = args.results.read_text() if args.results.exists() else ""
        gpu_pending = not args.device.startswith("cuda") and "BEGIN train_speed-paper-cuda" not in existing
        result = record(info, rows, command, gpu_pending)
    if args.write:
        write_results(args.results, name, result)
        print(f"wrote {args.results} ({name})")


if __name__ == "__main__":
    main()
