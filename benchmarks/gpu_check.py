"""The GPU path in one prepared run: the paper profile's speed, memory, precisions, evaluation and DDP.

    bash benchmarks/gpu_check.sh --device cuda --profile paper --out /tmp/gpu_check   # <= 10 min, one GPU
    bash benchmarks/gpu_check.sh --device cpu --profile tiny --out /tmp/gpu_check_cpu  # <= 3 min, 2 cores

Steps (STEPS), each in a child process with its own timeout: a hanging one is killed, a failing one
recorded, the others still run. Each returns figures (benchmarks/RESULTS.md, "GPU check", says what they
show); --out gets summary.json (per step: status, wall time, figures, error; the machine), the Markdown
rendered from it (RESULTS.section.md) and a folder per step. Exit code 0 when every step passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import string
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dgnet.data.synthetic import generate_dataset
from dgnet.data.validated import validate_dataset
from dgnet.evaluation.benchmark import benchmark_model
from dgnet.inference.extract import idle_cores
from dgnet.models.backbone import cached_imagenet_checkpoint
from dgnet.models.persist import save_model
from dgnet.models.teacher import ReidBaseline
from dgnet.training.cli import FileLogHook
from dgnet.training.hooks import LossCurve
from dgnet.training.objective import NonFiniteLossError
from dgnet.training.runtime import DistContext, select_device
from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher
from dgnet.training.trainer import train_dgnet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported by path
import common
import eval_speed
import gpu_check_joint
import train_speed
from common import clock, finite, loss_curves_picture, run_logged
from gpu_check_joint import amp_for, joint_training, train_config, validated

SCRIPT = "benchmarks/gpu_check.sh"
STEPS = ("setup", "train_speed", "train", "eval", "fp16", "ddp")
NEEDS_SETUP = ("train", "fp16", "ddp")
SPEED_MODES = ("fp32", "bf16", "fp16", "bf16+cl", "bf16+compile")  # compilation last: the slow one
LEFT_OUT_ON_CPU = ("left out of the CPU run's default --speed-modes: compiling takes minutes on a few "
                   "cores (over 280 s measured on 2 busy ones); add it with --speed-modes")
# Counts (on cuda, on cpu). The GPU run is the issue's; the CPU run the same code shrunk to fit 3 minutes
# on 2 cores (a smoke test of the script itself, not a measurement of the method).
COUNTS = {"ids": (120, 24), "cameras": (6, 3), "teacher_iterations": (100, 10),  # 0: an untrained teacher
          "speed_iterations": (15, 3), "speed_warmup": (3, 1), "train_iterations": (1500, 30),
          "fp16_iterations": (200, 10), "ddp_iterations": (10, 3), "eval_repeats": (3, 1),
          "num_swaps": (512, 64), "num_recon": (2048, 64), "workers": (8, 0), "budget": (600, 420)}
# Seconds per step. CUDA: they add up to the 10 minutes a lent GPU allows. CPU: twice what 2 idle cores need.
TIMEOUTS = {"cuda": {"setup": 60, "train_speed": 170, "train": 190, "eval": 30, "fp16": 50, "ddp": 80},
            "cpu": {"setup": 45, "train_speed": 90, "train": 90, "eval": 45, "fp16": 45, "ddp": 90}}
# The train step's time besides its iterations (start-up, evaluation, benchmark_model), and how much
# slower a training iteration may be than train_speed's (data loading, logging).
TRAIN_OVERHEAD_S, TRAIN_SLOWDOWN = 50, 1.2
# Rank metrics on the device must equal the CPU's to 0.01 points (sums in another order may swap ties).
PARITY_TOLERANCE = 1e-4
# A GradScaler starts at 2^16 and halves on each overflow: up to 16 skipped steps can be its calibration.
SKIP_FLOOR, SKIP_FRACTION = 16, 0.1
Figures = tuple[dict[str, Any], list[str]]  # what a step returns: its figures, its problems (none: passed)


def step_dir(opts: argparse.Namespace, step: str) -> Path:
    (path := Path(opts.out) / step).mkdir(parents=True, exist_ok=True)
    return path


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None


def step_deadline(margin: float) -> float:
    """time.monotonic() at which this step must wrap up: `margin` s before the parent kills it."""
    kill_at = float(os.environ.get("GPU_CHECK_KILL_AT", time.time() + 600))  # wall clock, set by the parent
    return time.monotonic() + (kill_at - time.time()) - margin


# The steps, each run in its own child process


def step_setup(opts: argparse.Namespace) -> Figures:
    """Synthetic dataset -> validated manifest + report -> a short teacher."""
    start = time.perf_counter()
    table = generate_dataset(opts.data, seed=0, num_ids=opts.ids, num_cameras=opts.cameras)
    render_s = time.perf_counter() - start
    validate_dataset(opts.data, report=opts.report, manifest=opts.manifest)
    frame, model_cfg, label_map = validated(opts)
    imagenet = cached_imagenet_checkpoint(model_cfg.backbone) if model_cfg.pretrained else None
    f = {"images": len(table), "train_ids": len(label_map), "render_s": round(render_s, 1),
         "splits": frame["split"].value_counts().to_dict(), "teacher_iterations": opts.teacher_iterations,
         "imagenet_weights": str(imagenet) if imagenet else None}
    if opts.teacher_iterations == 0:  # an untrained teacher: near-uniform soft labels cost the check nothing
        save_model(opts.teacher, ReidBaseline(model_cfg), "teacher", model_cfg, {"label_map": label_map})
        return f, []
    cfg = dataclasses.replace(
        TeacherTrainConfig().scaled_to(opts.teacher_iterations), batch_size=4 * opts.batch_size,
        device=opts.device, amp=amp_for(select_device(opts.device)), num_workers=opts.workers, eval_every=0,
        checkpoint_every=0, log_every=max(1, opts.teacher_iterations // 10))
    started = time.perf_counter()
    metrics = train_teacher(frame, model_cfg, cfg, Path(opts.teacher).parent, resume=False,
                            hooks=[FileLogHook(step_dir(opts, "setup") / "teacher")]).metrics
    return f | {"teacher_s": round(time.perf_counter() - started, 1), "teacher_rank1": metrics.get("rank1"),
                "teacher_mAP": metrics.get("mAP")}, []


def step_train_speed(opts: argparse.Namespace) -> Figures:
    """train_speed.py's per-mode measurement, each mode in its own process, within this step's time."""
    info = common.machine()  # each later mode keeps 25 s on a GPU, 10 on a CPU:
    rows = train_speed.run_modes(opts.speed_argv, opts.speed_modes, step_deadline(margin=8),
                                 25 if opts.on_cuda else 10)
    rows += [{"profile": opts.profile, "device": opts.device, "mode": m, "status": "skipped",
              "expected": True, "reason": LEFT_OUT_ON_CPU}
             for m in SPEED_MODES if not opts.on_cuda and m not in opts.speed_modes]
    info["load_average_end"] = common.load_average()
    problems = [f"{r['mode']}: {r.get('reason')}" for r in rows  # expected: what the device cannot run
                if r["status"] != "ok" and not r.get("expected") and (opts.on_cuda or "torch.compile failed"
                                                                      not in r.get("reason", ""))]
    return {"modes": {r["mode"]: r for r in rows}, "machine": info}, problems


def fit_train_iterations(opts: argparse.Namespace, speed: dict | None, timeout: float) -> int | None:
    """On a GPU: fewer training iterations when train_speed's bf16 figure says the asked-for number would
    not finish within the step's timeout (a cut run still gives curves, grid and recon_l1; a killed one
    gives nothing); None when they fit or nothing was measured."""
    bf16 = ((speed or {}).get("figures", {}).get("modes", {})).get("bf16", {})
    if not opts.on_cuda or not finite(bf16.get("median_s")):
        return None
    fit = int((timeout - TRAIN_OVERHEAD_S) / (bf16["median_s"] * TRAIN_SLOWDOWN))
    return max(10, fit) if fit < opts.train_iterations else None


def step_train(opts: argparse.Namespace) -> Figures:
    """A short paper-profile DG-Net training (compressed schedule), then recon_l1 and the swap grid."""
    device, (frame, model_cfg, _), out = select_device(opts.device), validated(opts), step_dir(opts, "train")
    speed = Path(opts.out) / "train_speed" / "result.json"
    fit = fit_train_iterations(opts, json.loads(speed.read_text()) if speed.is_file() else None,
                               step_deadline(margin=0) - time.monotonic())
    n = fit or opts.train_iterations
    cfg = train_config(opts, n, amp=amp_for(device), log_every=max(1, n // 60), eval_every=0,
                       image_every=max(1, n // 3), checkpoint_every=0)
    (out / "log.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    result = train_dgnet(frame, model_cfg, cfg, [opts.teacher], Path(opts.work) / "train",
                         hooks=[FileLogHook(out), LossCurve(out / "losses.csv")], resume=False)
    train_s, peak = time.perf_counter() - started, _peak_gb(device)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "event"} for r in records if r["event"] == "iteration"]
    loss_curves_picture(rows, f"DG-Net {opts.profile} profile, {n} iterations, {cfg.amp}, {device}").save(
        out / "loss_curves.png")
    bench = benchmark_model(result.model_path, frame, name="gpu_check", device=device, alphas=(0.5,),
                            data_root=opts.data, num_swaps=opts.num_swaps, num_recon=opts.num_recon,
                            batch_size=64, num_workers=min(opts.workers, 4))
    bench.pictures["swap_grid"].save(out / "swap_grid.png")
    # After the first window (cudnn autotuning, loader start-up): the steady time of an iteration.
    steady = [row["time/iteration"] for row in rows[1:] or rows]
    f = {"iterations": n, "iterations_reduced_from": opts.train_iterations if fit else None, "amp": cfg.amp,
         "batch_size": cfg.batch_size, "train_s": round(train_s, 1),
         "s_per_iteration": statistics.median(steady) if steady else None,
         "data_s_per_iteration": statistics.median([row["time/data"] for row in rows]) if rows else None,
         "peak_reserved_gb": peak, "logged_points": len(rows),  # the losses: losses.csv
         **{k: bench.generation.get(k) for k in ("recon_l1", "swap_l1_person", "swap_ssim_person")},
         "baselines": bench.generation.get("baselines"),
         "reid": bench.reid.get("alpha_0.5"), "schedule": dataclasses.asdict(cfg.schedule)}
    # A ramped loss is absent from the log until its weight switches on; a logged one must be finite.
    problems = [f"{k} at {row['iteration']}" for row in rows for k, v in row.items()
                if k.startswith("loss/") and not finite(v)][:5] + ([] if rows else ["no loss was logged"])
    recon = f["recon_l1"]
    return f, problems + ([] if finite(recon) and 0 < recon < 1 else [f"recon_l1 {recon!r} is not in (0, 1)"])


def step_eval(opts: argparse.Namespace) -> Figures:
    """eval_speed.py's Market-size ranking on the device, and the same ranking on the CPU: equal metrics."""
    kinds, parity = {}, {}
    for kind in ("trained", "random") if opts.on_cuda else ("trained",):
        row = kinds[kind] = eval_speed.measure("market", kind, opts.device, opts.eval_repeats, 256)
        reference = eval_speed.measure("market", kind, "cpu", 1, chunk_size=256)  # on a CPU: repeatability
        parity[kind] = {"cpu_total_s": reference["total_s"],
                        **{f"{m}_diff": abs(row[m] - reference[m]) for m in ("rank1", "mAP", "mINP")}}
    worst = max(v for p in parity.values() for k, v in p.items() if k.endswith("_diff"))
    f = {"kinds": kinds, "parity": parity, "max_diff": worst, "tolerance": PARITY_TOLERANCE,
         "machine": common.machine() | {"load_average_end": common.load_average()}}
    return f, [f"device and CPU metrics differ by {worst:.2e} (tolerance {PARITY_TOLERANCE:g})"
               ] if worst > PARITY_TOLERANCE else []


def step_fp16(opts: argparse.Namespace) -> Figures:
    """fp16 training iterations with the GradScalers; count skipped steps and non-finite losses."""
    n, device, deadline = opts.fp16_iterations, select_device(opts.device), step_deadline(margin=8)
    scalers = {name: torch.amp.GradScaler(device.type) for name in ("discriminator", "joint")}
    rows, non_finite, skipped = [], [], {name: [] for name in scalers}
    # dgnet refuses fp16 autocast on a CPU: there fp32 under enabled GradScalers (their logic, not fp16's).
    amp, single = "fp16" if opts.on_cuda else "off", DistContext(0, 1, 0, device, False)
    with joint_training(opts, single, amp, n, opts.workers, scalers) as (built, _, batches):
        started = time.perf_counter()
        for iteration, batch in enumerate(batches, 1):
            if time.monotonic() > deadline:  # stop in time: what ran is reported, not lost to the kill
                break
            before = {name: scaler.get_scale() for name, scaler in scalers.items()}
            try:
                logs = built.step(iteration - 1, batch)
            except NonFiniteLossError as exc:  # recorded, and training goes on: how often is the question
                non_finite.append({"iteration": iteration, "error": str(exc)})
                continue
            for name, scaler in scalers.items():  # update() backs off only after an inf/NaN gradient
                skipped[name] += [iteration] if scaler.get_scale() < before[name] else []
            rows.append({"iteration": iteration, **logs, **{f"scale/{k}": s.get_scale() for k, s in
                                                            scalers.items()}})
        wall = clock(device) - started
    out = step_dir(opts, "fp16")
    loss_curves_picture(rows, f"fp16 + GradScaler, {n} iterations, {device}").save(out / "loss_curves.png")
    (out / "iterations.json").write_text(json.dumps(rows))
    limit, done = max(SKIP_FLOOR, int(SKIP_FRACTION * n)), len(rows) + len(non_finite)
    r1 = [row["loss/d_r1"] for row in rows if "loss/d_r1" in row]
    f = {"iterations": done, "asked": n, "precision": "fp16" if amp == "fp16" else
         "fp32 + GradScaler (CPU stand-in)", "s_per_iteration": wall / max(done, 1),
         "skipped_steps": {k: len(v) for k, v in skipped.items()},
         "skipped_at": {k: v[:20] for k, v in skipped.items()},
         "skip_limit": limit, "non_finite_losses": len(non_finite), "non_finite": non_finite[:10],
         "final_scale": {name: scaler.get_scale() for name, scaler in scalers.items()},
         "d_r1_range": [min(r1), max(r1)] if r1 else None, "peak_reserved_gb": _peak_gb(device),
         "last_losses": {k: v for k, v in rows[-1].items() if k.startswith("loss/")} if rows else {}}
    return f, [f"{len(non_finite)} non-finite loss(es), first: {e['error']}" for e in non_finite[:1]] + [
        f"{k} skipped {len(v)} of {n} steps (limit {limit})" for k, v in skipped.items() if len(v) > limit]


def step_ddp(opts: argparse.Namespace) -> Figures:
    """Two torchrun ranks on the one device: NCCL where it allows it, else gloo; lockstep weights."""
    folder, deadline = step_dir(opts, "ddp"), step_deadline(margin=15)  # torchrun's 10 s to stop its ranks
    backends, attempts = ["nccl", "gloo"] if opts.on_cuda and dist.is_nccl_available() else ["gloo"], {}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for k, backend in enumerate(backends):  # NCCL gets half the time: it refuses two ranks on one GPU
        left, log = deadline - time.monotonic(), folder / f"{backend}.log"
        code = run_logged([*torchrun, gpu_check_joint.__file__, backend, opts.out], log,
                          left / 2 if k < len(backends) - 1 else left, session=False)
        lines = log.read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line] or lines or ["(no output)"]
        attempts[backend] = "ok" if code == 0 else f"{backend}: " + (
            f"the ranks did not finish within {left:.0f} s" if code is None else errors[-1][:300])
        if code == 0:
            break
    else:
        return {"attempts": attempts}, list(attempts.values())
    first, second = [json.loads((folder / f"{backend}_rank{r}.json").read_text()) for r in range(2)]
    names, n = first["final"].keys(), opts.batch_size
    moved = sum(first["final"][k] != first["initial"][k] for k in names)
    different = [k for k in names if first["final"][k] != second["final"][k]]
    start_differs = [k for k in names if first["initial"][k] != second["initial"][k]]
    shared = [it + 1 for it, (s0, s1) in enumerate(zip(first["seen"], second["seen"], strict=True))
              if set(s0[:n]) & set(s1[:n]) or set(s0[2 * n:3 * n]) & set(s1[2 * n:3 * n])]
    f = {"backend": backend, "attempts": attempts, "device": first["device"], "tensors": len(names),
         "iterations": len(first["times"]), "moved": moved, "differing_after": len(different),
         "differing_at_start": len(start_differs), "batches_sharing_images": shared,
         "s_per_iteration": statistics.median(first["times"][1:] or first["times"]),
         "last_losses": first["last_logs"]}
    return f, [text for text, bad in (
        (f"the ranks' weights differ after training in {len(different)} tensors: {different[:1]}", different),
        (f"the ranks started from different weights ({len(start_differs)} tensors)", start_differs),
        (f"training moved only {moved} of {len(names)} tensors: nothing is proven", moved <= len(names) // 2),
        (f"the ranks saw the same images at iterations {shared[:5]}", shared)) if bad]


def run_step_here(opts: argparse.Namespace, name: str) -> None:
    """A child's whole job: run one step, write its result (an exception becomes a failed result)."""
    if not opts.on_cuda:
        torch.set_num_threads(opts.threads)
    try:
        figures, problems = globals()[f"step_{name}"](opts)
        result = {"status": "failed" if problems else "ok", "figures": figures, "error": "; ".join(problems)}
    except BaseException as exc:
        print(trace := traceback.format_exc(), file=sys.stderr)
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": trace[-4000:]}
    (step_dir(opts, name) / "result.json").write_text(json.dumps(result, indent=1, default=str))


def run_step(opts: argparse.Namespace, name: str, timeout: float) -> dict[str, Any]:
    """One step in a child process; its result.json, or why there is none."""
    folder, started = step_dir(opts, name), time.monotonic()
    (folder / "result.json").unlink(missing_ok=True)
    print(f"gpu_check: {name} (timeout {timeout:.0f} s) ...", flush=True)
    code = run_logged([sys.executable, __file__, "--run-step", name, opts.out], folder / "log.txt", timeout,
                      {**os.environ, "GPU_CHECK_KILL_AT": str(time.time() + timeout)})
    if code is None:
        result = {"status": "timeout", "error": f"did not finish within its {timeout:.0f} s"}
    elif (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
    else:
        last = ((folder / "log.txt").read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1]
        result = {"status": "failed", "error": f"exited {code}: {last[:500]}"}
    return result | {"wall_s": round(time.monotonic() - started, 1), "timeout_s": round(timeout),
                     "log": str(folder / "log.txt")}


# The one renderer: summary.json -> RESULTS.section.md. A step's cell in its table, from its figures (the
# train_speed and eval steps also get their scripts' own sections: every row and figure in them).
CELLS = {
    "setup": "{images} images, {train_ids} train ids, validated; teacher {teacher_iterations} iterations "
             "(mAP {teacher_mAP:.1%}); ImageNet weights {imagenet_weights} (-: random init)",
    "train_speed": "s/it: " + ", ".join(f"{m} {{modes[{m}][median_s]:.3f}}" for m in SPEED_MODES)
                   + "; bf16 peak reserved {modes[bf16][peak_reserved_mb]:,.0f} MB",
    "train": "{iterations} iterations {amp}, {s_per_iteration:.3f} s/it, {peak_reserved_gb:.1f} GB; "
             "recon_l1 {recon_l1:.3f} (mean image {baselines[recon_mean_image]:.3f}, blur4 "
             "{baselines[recon_blur4]:.3f}); swap L1 (person) {swap_l1_person:.3f} (copy-structure "
             "{baselines[copy_structure][swap_l1_person]:.3f}, copy-appearance "
             "{baselines[copy_appearance][swap_l1_person]:.3f}), SSIM (person) {swap_ssim_person:.3f}",
    "eval": "{kinds[trained][queries]:,} x {kinds[trained][gallery]:,}: {kinds[trained][total_s]:.3f} s on "
            "{kinds[trained][device]}, {parity[trained][cpu_total_s]:.3f} s on the CPU; largest metric "
            "difference {max_diff:.1e}",
    "fp16": "{iterations} of {asked} iterations ({precision}): skipped steps D "
            "{skipped_steps[discriminator]} / G+E_a {skipped_steps[joint]} (limit {skip_limit}), non-finite "
            "losses {non_finite_losses}, final scales {final_scale}",
    "ddp": "backend {backend} (torchrun; tried {attempts}), {iterations} iterations, {s_per_iteration:.3f} "
           "s/it; tensors differing between the ranks at the end: {differing_after} ({moved} of {tensors} "
           "moved)",
}


class Cells(string.Formatter):
    """str.format on a step's figures, "-" for one that is missing or None (a mode not run, no GPU)."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        try:
            return super().get_field(field_name, args, kwargs)
        except (KeyError, IndexError, TypeError):
            return None, field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        return "-" if value is None else super().format_field(value, format_spec)


def render_markdown(summary: dict[str, Any]) -> str:
    """RESULTS.section.md from summary.json: this check's table, then the train_speed and eval_speed
    sections of the figures those steps left, all by the benchmarks' one renderer, `common.render`."""
    opts, steps, table = argparse.Namespace(**summary["options"]), summary["steps"], []
    for step, result in steps.items():
        text = Cells().format(CELLS[step], **result["figures"]) if "figures" in result else ""
        if result["status"] != "ok":
            text = str(result.get("error", "?"))[:300] + (f" ({text})" if text else "")
        table.append([step, result["status"], result.get("wall_s", "-"), text or "-"])
    passed = sum(r["status"] == "ok" for r in steps.values())
    record = {"title": f"GPU check, {opts.profile} profile, {opts.device} (`{SCRIPT}`)",
              "measured": summary["started"][:10], "command": opts.command, "machine": summary["machine"],
              "text": [f"Total {summary['wall_s']:.0f} s (budget {opts.budget} s); {passed} of {len(steps)} "
                       "steps passed. Pictures: `train/loss_curves.png`, `train/swap_grid.png` (test images, "
                       "row = appearance, column = structure), `fp16/loss_curves.png`. In brackets: recon_l1 "
                       "of the mean image and of a 4x blur, swap L1 of copying the structure or appearance "
                       f"image. Paper-profile target on one GPU: {train_speed.TARGET}; that fp16 (apex) "
                       "overflowed."],
              "columns": ["step", "status", "wall (s)", "result"], "table": table}
    sections = [common.render(common.section_name(f"gpu_check-{opts.profile}", opts.device), record)]
    speed = train_speed.section_name(opts.profile, opts.device, opts.speed_threads)
    scripts = {"train_speed": (train_speed, speed, "modes", f"train_speed.py {shlex.join(opts.speed_argv)} "
                               f"--modes {','.join(opts.speed_modes)}"),
               "eval": (eval_speed, common.section_name("eval_speed", opts.device), "kinds",
                        f"eval_speed.py --sizes market --device {opts.device} --repeats {opts.eval_repeats}")}
    for step, (module, section, key, command) in scripts.items():
        if rows := list(steps.get(step, {}).get("figures", {}).get(key, {}).values()):
            made = module.record(steps[step]["figures"]["machine"], rows,
                                 f"python benchmarks/{command} (run by {SCRIPT})")
            sections.append(common.render(section, {"measured": record["measured"], **made}))
    return "\n".join(sections)


def _step_timeout(text: str) -> tuple[str, int]:
    step, _, seconds = text.partition("=")
    if step not in STEPS or not seconds.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected STEP=SECONDS, STEP one of {','.join(STEPS)}")
    return step, int(seconds)


def parse_options(argv: list[str]) -> argparse.Namespace:
    """The flags, the counts defaulted per device kind (see --help); JSON-able, for the children."""
    parser = argparse.ArgumentParser(prog=SCRIPT, description=__doc__, epilog=f"Step timeouts: {TIMEOUTS}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (cuda when available)")
    parser.add_argument("--profile", default="paper", choices=sorted(train_speed.PROFILES))
    parser.add_argument("--out", type=Path, required=True, help="for summary.json and the rest")
    for key, (cuda, cpu) in COUNTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"{cuda} on cuda, {cpu} on cpu")
    parser.add_argument("--speed-modes", type=lambda s: s.split(","),
                        help=f"default {','.join(SPEED_MODES)} on cuda, all but bf16+compile on cpu")
    parser.add_argument("--threads", type=int, help="CPU runs: torch threads (default: the idle cores)")
    parser.add_argument("--timeout", type=_step_timeout, action="append", default=[], metavar="STEP=SECONDS",
                        help="one step's (repeatable)")
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work (data, teacher, models)")
    opts = parser.parse_args(argv)
    opts.device = opts.device if opts.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if (on_cuda := opts.device.startswith("cuda")) and not torch.cuda.is_available():
        parser.error(f"--device {opts.device}: CUDA is not available here (torch {torch.__version__}, CUDA "
                     f"build {torch.version.cuda}); use --device cpu --profile tiny")
    vars(opts).update({key: counts[0 if on_cuda else 1] for key, counts in COUNTS.items()
                       if getattr(opts, key) is None})  # the counts not given: this device kind's defaults
    opts.speed_modes = opts.speed_modes or [m for m in SPEED_MODES if on_cuda or m != "bf16+compile"]
    for mode in opts.speed_modes:
        train_speed.Mode.parse(mode)  # a typo fails now, not after minutes
    # Torch threads: the cores the load average leaves idle (threads beyond them wait on each other: a
    # tiny-profile iteration took 6.5 s with 2 threads on 2 busy cores, 0.8 s with 1).
    work, threads = opts.out.resolve() / "work", opts.threads or idle_cores()
    batch_size, speed_threads = train_speed.DEFAULT_BATCH.get(opts.profile, 8), 0 if on_cuda else threads
    vars(opts).update(
        on_cuda=on_cuda, timeouts=TIMEOUTS["cuda" if on_cuda else "cpu"] | dict(vars(opts).pop("timeout")),
        batch_size=batch_size, out=str(work.parent), work=str(work), threads=threads, data=str(work / "data"),
        manifest=str(work / "manifest.csv"), report=str(work / "validation.json"),
        teacher=str(work / "teacher" / "model.pt"), command=shlex.join(["bash", SCRIPT, *argv]),
        speed_threads=speed_threads, speed_argv=[  # train_speed.py's command line, less --modes
            "--profile", opts.profile, "--device", opts.device, "--iterations", str(opts.speed_iterations),
            "--warmup", str(opts.speed_warmup), "--batch-size", str(batch_size),
            "--threads", str(speed_threads)])
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-step"]:  # a step's child process
        run_step_here(argparse.Namespace(**json.loads((Path(argv[2]) / "options.json").read_text())), argv[1])
        return 0
    opts = parse_options(argv)
    (out := Path(opts.out)).mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps(vars(opts), indent=1))
    info = common.machine() | {"device": opts.device, "cuda_build": torch.version.cuda,
                               "cuda_available": torch.cuda.is_available()}
    summary: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"), "steps": {},
                               "command": opts.command, "options": vars(opts).copy(), "machine": info}
    print(f"gpu_check: {opts.profile} profile on {opts.device} ({info.get('gpu', info['cpu'])}), "
          f"torch {torch.__version__}; out {out}", flush=True)
    begin, steps = time.monotonic(), summary["steps"]
    for name in STEPS:
        left = opts.budget - (time.monotonic() - begin)
        setup_failed = name in NEEDS_SETUP and steps["setup"]["status"] != "ok"
        why = ("setup failed: no validated data or teacher" if setup_failed else
               f"not run: the --budget of {opts.budget} s was spent" if left < 5 else None)
        steps[name] = result = ({"status": "failed", "error": why, "wall_s": 0} if why
                                else run_step(opts, name, min(opts.timeouts[name], left)))
        summary |= {"wall_s": time.monotonic() - begin, "passed": all(r["status"] == "ok" for r in
                                                                      steps.values())}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "RESULTS.section.md").write_text(render_markdown(summary))  # a killed run keeps what it did
        shown = Cells().format(CELLS[name], **result["figures"]) if result["status"] == "ok" else \
            result["error"]
        print(f"gpu_check: {name}: {result['status']} in {result['wall_s']} s: {shown}", flush=True)
    summary["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if not opts.keep_work:
        shutil.rmtree(opts.work, ignore_errors=True)
    print(f"gpu_check: {'PASSED' if summary['passed'] else 'FAILED'} in {summary['wall_s']:.0f} s; "
          f"{out / 'summary.json'}, {out / 'RESULTS.section.md'}", flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
