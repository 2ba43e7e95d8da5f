"""The GPU path in one prepared run: the paper profile's speed, memory, precisions, evaluation and DDP.

    bash benchmarks/gpu_check.sh --device cuda --profile paper --out /tmp/gpu_check   # <= 10 min, one H200
    bash benchmarks/gpu_check.sh --device cpu --profile tiny --out /tmp/gpu_check_cpu  # <= 3 min, 2 cores

Steps, each in a fresh child process with its own timeout (the device time is limited: a step that
hangs is killed and the others still run; a failing one is recorded with its error):
  setup        render the synthetic dataset, validate it (the manifest + report `dgnet train
               --manifest` reads), train a short teacher (`train_teacher`);
  train_speed  benchmarks/train_speed.py per mode: fp32, bf16, fp16, bf16+cl, bf16+compile;
  train        `train_dgnet` in bf16, the paper's schedule compressed to the run: loss curves, the
               test swap grid and recon_l1 beside its trivial baselines (`benchmark_model`);
  eval         benchmarks/eval_speed.py's Market-size ranking on the device and its parity with the CPU;
  fp16         fp16 iterations with the GradScalers (R1's double backward included): skipped steps
               and non-finite losses, counted, not raised;
  ddp          two ranks on the one device started by torchrun (torch.distributed.run), the trainer's
               step with gradient averaging: NCCL first, gloo when NCCL refuses two ranks on one GPU;
               both ranks must end with identical weights after seeing different images.
On a CPU (`--device cpu --profile tiny`, the slow-tier test) the counts are smaller, fp16 runs as fp32
under enabled GradScalers (dgnet refuses fp16 autocast on a CPU) and bf16+compile is left out
(compiling takes minutes on a few cores); the results say so. Everything goes into --out:
summary.json (per step: status, wall time, figures, error; the machine), RESULTS.section.md (rendered
from summary.json alone: the benchmarks/RESULTS.md sections, each figure beside its baseline or target)
and a folder per step (log, pictures). Exit code 0 when every step passed (or was skipped for a reason
that holds on this device), else 1. Imports torch, torchvision, numpy, pandas, pillow and dgnet only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported by path
import common
import eval_speed
import gpu_steps
import train_speed
from gpu_steps import SPEED_MODES, _finite, _run, step_dir

STEPS = ("setup", "train_speed", "train", "eval", "fp16", "ddp")
NEEDS_SETUP = ("train", "fp16", "ddp")
CPU_SPEED_MODES = ("fp32", "bf16", "fp16", "bf16+cl")
# option: (help, on cuda, on cpu). The GPU run is the issue's; the CPU run the same code shrunk to fit
# 3 minutes on 2 cores (a smoke test of the script itself, not a measurement of the method).
COUNTS: dict[str, tuple[str, Any, Any]] = {
    "ids": ("synthetic identities", 120, 24), "cameras": ("synthetic cameras", 6, 3),
    "teacher_iterations": ("0: an untrained teacher", 100, 10),
    "speed_iterations": ("timed iterations per mode", 15, 3),
    "speed_warmup": ("untimed iterations per mode", 3, 1),
    "train_iterations": ("the bf16 training", 1500, 30), "fp16_iterations": ("fp16 + GradScaler", 200, 10),
    "ddp_iterations": ("two-rank iterations", 10, 3), "eval_repeats": ("best of N on the device", 3, 1),
    "num_swaps": ("test swap pairs scored", 512, 64), "num_recon": ("test images behind recon_l1", 2048, 64),
    "workers": ("data loader workers", 8, 0), "budget": ("seconds for the whole check", 600, 420),
}
DEFAULTS = {kind: {k: v[1 + n] for k, v in COUNTS.items()} | {"eval_size": "market"}
            for n, kind in enumerate(("cuda", "cpu"))}
DEFAULTS["cuda"]["eval_kinds"], DEFAULTS["cpu"]["eval_kinds"] = ("trained", "random"), ("trained",)
# Seconds per step. CUDA: they add up to the 10 minutes a lent GPU allows. CPU: twice what 2 idle cores need.
TIMEOUTS = {"cuda": {"setup": 60, "train_speed": 170, "train": 190, "eval": 30, "fp16": 50, "ddp": 80},
            "cpu": {"setup": 45, "train_speed": 90, "train": 90, "eval": 45, "fp16": 45, "ddp": 90}}
PUBLISHED_S_PER_ITER, PUBLISHED_GB = (1.2, 1.9), 10.0  # the published implementation, fp16 on one GPU
# The train step's time besides its iterations (start-up, evaluation, benchmark_model), and how much
# slower a training iteration may be than train_speed's (data loading, logging).
TRAIN_OVERHEAD_S, TRAIN_SLOWDOWN = 50, 1.2


def run_step(opts: argparse.Namespace, name: str, timeout: float) -> dict[str, Any]:
    """One step in a child process; its result.json, or why there is none."""
    folder = step_dir(opts, name)
    (folder / "result.json").unlink(missing_ok=True)
    started = time.monotonic()
    code = _run([sys.executable, gpu_steps.__file__, "--run-step", name, "--options",
                 str(Path(opts.out) / "options.json")],
                folder / "log.txt", timeout, {**os.environ, "GPU_CHECK_KILL_AT": str(time.time() + timeout)})
    if code is None:
        result = {"status": "timeout", "error": f"did not finish within its {timeout:.0f} s"}
    elif (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
    else:
        last = ((folder / "log.txt").read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        result = {"status": "failed", "error": f"exited {code}: {last[:500]}"}
    return result | {"wall_s": round(time.monotonic() - started, 1), "timeout_s": round(timeout),
                     "log": str(folder / "log.txt")}


# The one renderer: summary.json -> RESULTS.section.md. A (result, beside) template pair per step,
# filled from the step's figures; a missing or non-numeric figure shows as "-".
LINES = {
    "setup": ("{images} images, {train_ids} train ids, validated; teacher {teacher_iterations} iterations "
              "(mAP {teacher_mAP:.1%}); {weights}", "-"),
    "train": ("{iterations} iterations {amp}, {s_per_iteration:.3f} s/it{memory}; recon_l1 "
              "{recon_l1:.3f}; swap L1 (person) {swap_l1_person:.3f}, SSIM (person) {swap_ssim_person:.3f}",
              "recon: mean image {baselines[recon_mean_image]:.3f}, blur4 {baselines[recon_blur4]:.3f}; "
              "swap L1 "
              "(person) copy-structure {baselines[copy_structure][swap_l1_person]:.3f} / copy-appearance "
              "{baselines[copy_appearance][swap_l1_person]:.3f}; {target}"),
    "eval": ("{queries:,} x {gallery:,}: {device[trained][total_s]:.3f} s on {on}; largest metric difference "
             "from the CPU {max_diff:.1e}", "CPU, same run: {parity[trained][cpu_total_s]:.3f} s{cpu_eval}"),
    "fp16": ("{iterations} of {asked} iterations ({precision}): skipped steps D "
             "{skipped_steps[discriminator]} / G+E_a {skipped_steps[joint]} (limit {skip_limit}), "
             "non-finite losses {non_finite_losses}, final "
             "scales {final_scale}", "the published code's fp16 (apex) overflowed"),
    "ddp": ("backend {backend} (torchrun), {iterations} iterations, {s_per_iteration:.3f} s/it; "
            "tensors differing "
            "between the ranks at the end: {differing_after} ({moved} of {tensors} moved)",
            "{attempts_text}"),
    "train_speed": ("{modes_text}", "{target}{cpu_speed}"),
}


class _Lenient(string.Formatter):
    def get_field(self, name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        try:
            return super().get_field(name, args, kwargs)
        except (KeyError, IndexError, TypeError, AttributeError):
            return None, name

    def format_field(self, value: Any, spec: str) -> str:
        try:
            return "-" if value is None else format(value, spec)
        except (TypeError, ValueError):
            return "-"


def step_line(name: str, result: dict[str, Any], opts: argparse.Namespace) -> tuple[str, str]:
    """(what the step measured, what it stands beside) for the summary table."""
    f = dict(result.get("figures") or {})
    cpu_bf16 = [r for r in common.recorded_rows("train_speed-cpu-cpu")
                if r.get("mode") == "bf16" and "median_s" in r]
    cpu_eval = [r for r in common.recorded_rows("eval_speed-cpu") if (r.get("size"),
                                                                      r.get("kind")) == ("market",
                                                                                                       "trained")]
    parts = [f"{m} skipped ({e.get('reason')})" if e.get("status") != "ok"
             else f"{m} {e['median_s']:.3f} s/it"
             + (f", {e['peak_reserved_gb']:.1f} GB (target {'met' if e['target_met'] else 'not met'})"
                if "peak_reserved_gb" in e else "") for m, e in f.get("modes", {}).items()]
    f |= {"on": opts.device,
          "memory": f", {f['peak_reserved_gb']:.1f} GB" if _finite(f.get("peak_reserved_gb")) else "",
          "modes_text": "; ".join(parts) or "-",
          "weights": "ImageNet weights found" if f.get("imagenet_weights")
          else "no ImageNet weights: random init",
          "attempts_text": "; ".join(f"{k}: {v}" for k, v in f.get("attempts", {}).items()),
          "target": f"paper profile on one GPU: target <= {train_speed.TARGET_S_PER_ITER} s/it, <= "
                    f"{train_speed.TARGET_PEAK_GB:g} GB; published "
                    f"{PUBLISHED_S_PER_ITER[0]}-{PUBLISHED_S_PER_ITER[1]} "
                    f"s/it, >= {PUBLISHED_GB:g} GB (fp16)",
          "cpu_speed": f"; CPU: cpu profile (ResNet-18, 64x32) {cpu_bf16[0]['median_s']:.3f} s/it bf16 "
                       "on 2 cores"
                       if cpu_bf16 else "",
          "cpu_eval": f"; 2 CPU cores (RESULTS.json): {cpu_eval[0]['total_s']:.2f} s" if cpu_eval else ""}
    return tuple(_Lenient().format(template, **f) for template in LINES.get(name, ("-",
                                                                                   "-")))  # type: ignore[return-value]


def render_markdown(summary: dict[str, Any]) -> str:
    """RESULTS.section.md: this check's table, then the train_speed and eval_speed sections, rendered
    by those scripts' own render_section from the rows the steps recorded (each between its markers)."""
    opts, info, steps = argparse.Namespace(**summary["options"]), summary["machine"], summary["steps"]
    name = f"gpu_check-{opts.profile}-{'cuda' if opts.on_cuda else 'cpu'}"
    gpu = f", GPU {info['gpu']} ({info.get('gpu_memory_gib', 0):.0f} GiB, CUDA {info.get('cuda_build')})" \
        if opts.on_cuda and "gpu" in info else ""
    passed = sum(r["status"] in ("ok", "skipped") for r in steps.values())
    lines = [f"<!-- BEGIN {name} -->", f"## GPU check, {opts.profile} profile, {opts.device} "
             "(`benchmarks/gpu_check.sh`)", "", f"Measured {summary['started'][:10]} with `{opts.command}`.",
             f"Machine: {info['cpu']}, {info['cores']} cores{gpu}; torch {info['torch']}, "
             f"Python {info['python']}; load average {(info.get('load_average') or ['-'])[0]} at the start. "
             f"Total {summary['wall_s']:.0f} s "
             f"(budget {opts.budget} s); {passed} of {len(steps)} steps passed.", "",
             "| step | status | wall (s) | result | beside |", "| --- | --- | --- | --- | --- |"]
    for step, result in steps.items():
        text, beside = step_line(step, result, opts)
        error = str(result.get("error", "?"))
        if result["status"] not in ("ok", "skipped") and error[:60] not in text:
            text = error[:300] + ("" if text == "-" else f" ({text})")
        cells = [step, result["status"], result.get("wall_s", "-"), text, beside]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines += ["", "Pictures: `train/loss_curves.png`, `train/swap_grid.png` (test images, row = appearance, "
              "column = structure), `fp16/loss_curves.png`.", "", f"<!-- END {name} -->", ""]
    for step, render in (("train_speed", train_speed.render_section), ("eval", eval_speed.render_section)):
        if (r := steps.get(step, {})).get("rows"):
            lines += ["", render(r["section"], r["machine"], r["rows"], r["command"])]
    return "\n".join(lines)


def write_summary(summary: dict[str, Any]) -> None:
    out = Path(summary["options"]["out"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "RESULTS.section.md").write_text(render_markdown(summary))


def machine(device: str) -> dict[str, Any]:
    """What the check ran on: the benchmarks' machine description (GPU, CUDA, cuDNN, NCCL, driver)."""
    return common.machine() | {"device": device, "cuda_build": torch.version.cuda,
                               "cuda_available": torch.cuda.is_available()}


def fit_train_iterations(opts: argparse.Namespace, speed: dict[str, Any] | None,
                         timeout: float) -> int | None:
    """On a GPU: fewer training iterations when train_speed's bf16 figure says the asked-for number would
    not finish within the step's timeout (a cut run still gives curves, grid and recon_l1; a killed one
    gives nothing); None when they fit or nothing was measured."""
    bf16 = ((speed or {}).get("figures", {}).get("modes", {})).get("bf16", {})
    if not opts.on_cuda or not _finite(bf16.get("median_s")):
        return None
    fit = int((timeout - TRAIN_OVERHEAD_S) / (bf16["median_s"] * TRAIN_SLOWDOWN))
    return max(10, fit) if fit < opts.train_iterations else None


def default_threads() -> int:
    """Every core the 1-minute load average leaves idle, at least one (torch threads beyond the free cores
    wait on each other: a tiny-profile iteration took 6.5 s with 2 threads on 2 busy cores, 0.8 s with 1)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, cores - round(os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)))


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags, the counts defaulted per device kind (see --help); JSON-able, for the children."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog=f"Step timeouts (s): cuda {TIMEOUTS['cuda']}; cpu {TIMEOUTS['cpu']}.")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--profile", default="paper", choices=sorted(train_speed.PROFILES))
    parser.add_argument("--out", type=Path, required=True,
                        help="summary.json, RESULTS.section.md, a folder per step")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"comma-separated subset of {','.join(STEPS)}")
    for key, (text, cuda, cpu) in COUNTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int,
                            help=f"{text} (default {cuda} on cuda, {cpu} on cpu)")
    parser.add_argument("--speed-modes",
                        help=f"default {','.join(SPEED_MODES)} on cuda, {','.join(CPU_SPEED_MODES)} on cpu")
    parser.add_argument("--eval-size", choices=sorted(eval_speed.SIZES), help="default market")
    parser.add_argument("--eval-kinds",
                        help="comma-separated: trained and/or random (default both on cuda, trained on cpu)")
    parser.add_argument("--batch-size", type=int, help="per stream (default: the profile's, 8 for paper)")
    parser.add_argument("--threads", type=int, help="CPU runs: torch threads (default: the idle cores)")
    parser.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                        help="one step's (repeatable)")
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work (data, teacher, models)")
    args = parser.parse_args(argv)
    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available here (torch {torch.__version__}, CUDA build "
                     f"{torch.version.cuda}); use --device cpu --profile tiny")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    if unknown := [s for s in split(args.steps) if s not in STEPS]:
        parser.error(f"--steps: unknown {unknown}; choose from {','.join(STEPS)}")
    timeouts = dict(TIMEOUTS[kind])
    for item in args.timeout:
        step, _, seconds = item.partition("=")
        if step not in STEPS or not seconds.isdigit():
            parser.error(f"--timeout {item!r}: expected STEP=SECONDS with STEP one of {','.join(STEPS)}")
        timeouts[step] = int(seconds)
    modes = split(args.speed_modes or ",".join(SPEED_MODES if kind == "cuda" else CPU_SPEED_MODES))
    for mode in modes:
        train_speed.Mode.parse(mode)  # a typo fails now, not after minutes
    values = {k: v if (v := getattr(args, k)) is not None else d for k, d in DEFAULTS[kind].items()}
    work = Path(args.out).resolve() / "work"
    return argparse.Namespace(**values | {
        "eval_kinds": split(args.eval_kinds) if args.eval_kinds else list(DEFAULTS[kind]["eval_kinds"]),
        "device": device, "on_cuda": kind == "cuda", "profile": args.profile, "out": str(work.parent),
        "steps": split(args.steps), "speed_modes": modes, "timeouts": timeouts, "keep_work": args.keep_work,
        "batch_size": args.batch_size or train_speed.DEFAULT_BATCH.get(args.profile, 8),
        "threads": args.threads or default_threads(), "work": str(work), "data": str(work / "data"),
        "manifest": str(work / "manifest.csv"), "report": str(work / "validation.json"),
        "teacher": str(work / "teacher" / "model.pt"),
        "command": "bash benchmarks/gpu_check.sh " + shlex.join(sys.argv[1:] if argv is None else argv)})


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps(vars(opts), indent=1))
    summary: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"),
                               "command": opts.command,
                               "options": dict(vars(opts)), "machine": machine(opts.device), "steps": {}}
    where = summary["machine"].get("gpu", summary["machine"]["cpu"])
    print(f"gpu_check: {opts.profile} profile on {opts.device} ({where}), "
          f"torch {torch.__version__}; steps {', '.join(opts.steps)}; out {out}", flush=True)
    begin = time.monotonic()
    for name in opts.steps:
        left, setup = opts.budget - (time.monotonic() - begin), summary["steps"].get("setup")
        if name in NEEDS_SETUP and setup is not None and setup["status"] != "ok":
            result = {"status": "failed", "error": "setup failed: no validated data or teacher", "wall_s": 0}
        elif left < 5:
            result = {"status": "failed", "error": f"not run: the --budget of {opts.budget} s was spent",
                      "wall_s": 0}
        else:
            timeout = min(opts.timeouts[name], left)
            reduced = fit_train_iterations(opts, summary["steps"].get("train_speed"),
                                           timeout) if name == "train" else None
            if reduced is not None:
                print(f"gpu_check: train: {reduced} iterations instead of {opts.train_iterations}: at the "
                      "measured "
                      f"bf16 speed, {opts.train_iterations} would not fit in {timeout:.0f} s", flush=True)
                opts.train_iterations = reduced
                (out / "options.json").write_text(json.dumps(vars(opts), indent=1))
            print(f"gpu_check: {name} (timeout {timeout:.0f} s) ...", flush=True)
            result = run_step(opts, name, timeout)
            if reduced is not None:
                result["iterations_reduced_from"] = summary["options"]["train_iterations"]
        summary["steps"][name] = result
        summary["wall_s"] = time.monotonic() - begin
        summary["passed"] = all(r["status"] in ("ok", "skipped") for r in summary["steps"].values())
        write_summary(summary)  # after every step: a killed run still leaves what it measured
        shown = step_line(name, result, opts)[0] if result["status"] in ("ok",
                                                                         "skipped") else result.get("error",
                                                                                                    "")
        print(f"gpu_check: {name}: {result['status']} in {result['wall_s']} s: {shown}", flush=True)
    summary["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    write_summary(summary)
    if not opts.keep_work:
        shutil.rmtree(opts.work, ignore_errors=True)
    print(f"gpu_check: {'PASSED' if summary['passed'] else 'FAILED'} in {summary['wall_s']:.0f} s; "
          f"{out / 'summary.json'}, {out / 'RESULTS.section.md'}", flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
