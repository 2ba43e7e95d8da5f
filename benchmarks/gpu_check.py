"""The GPU path in one prepared run: the paper profile's speed, memory, precisions, evaluation and DDP.

    bash benchmarks/gpu_check.sh --device cuda --profile paper --out /tmp/gpu_check   # <= 10 min, one GPU
    bash benchmarks/gpu_check.sh --device cpu --profile tiny --out /tmp/gpu_check_cpu  # <= 3 min, 2 cores

Steps, each in a fresh child process with its own timeout (a step that hangs is killed, a failing one
is recorded with its error, and the others still run):
  setup        the synthetic dataset, validated as `dgnet train --manifest` reads it; a short teacher;
  train_speed  benchmarks/train_speed.py per mode (fp32, bf16, fp16, bf16+cl, bf16+compile);
  train        `train_dgnet` in bf16, the schedule compressed: loss curves, the test swap grid and
               recon_l1 beside their trivial baselines (`benchmark_model`);
  eval         benchmarks/eval_speed.py's Market-size ranking on the device, and its parity with the CPU;
  fp16         fp16 iterations with the GradScalers: skipped steps and non-finite losses, counted;
  ddp          two torchrun ranks on the one device running the trainer's step (NCCL, else gloo): they
               must end with identical weights after seeing different images.
On a CPU the counts are smaller, fp16 runs as fp32 under enabled GradScalers and bf16+compile is left
out; the results say so. --out gets summary.json (per step: status, wall time, figures, error; the
machine), RESULTS.section.md (rendered from summary.json) and a folder per step (log, pictures).
Exit code 0 when every step passed (or was skipped for a reason that holds on this device), else 1.
Child roles: `--run-step STEP --options OUT/options.json`, `--ddp-rank BACKEND --options ...` (torchrun).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import string
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image, ImageDraw, ImageFont

from dgnet.data.datasets import TrainImages
from dgnet.data.samplers import ImagePairSampler
from dgnet.data.validated import read_validated_manifest
from dgnet.models.config import get_profile
from dgnet.training.loop import make_loader, training_labels
from dgnet.training.objective import NonFiniteLossError
from dgnet.training.runtime import DistContext, determinism, init_distributed, resolve_amp, select_device
from dgnet.training.trainer import DGNetTrainConfig, build_joint_step

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when imported by path
import common
import eval_speed
import train_speed

SPEED_MODES = ("fp32", "bf16", "fp16", "bf16+cl", "bf16+compile")  # compilation last: the slow one
LEFT_OUT_ON_CPU = ("left out of the CPU run's default --speed-modes: compiling takes minutes on a few "
                   "cores (over 280 s measured on 2 busy ones); add it with --speed-modes")
# Rank metrics on the device must equal the CPU's to 0.01 points (sums in another order may swap ties).
PARITY_TOLERANCE = 1e-4
# A GradScaler starts at 2^16 and halves on each overflow: up to 16 skipped steps can be its calibration.
SKIP_FLOOR, SKIP_FRACTION = 16, 0.1


def step_dir(opts: argparse.Namespace, step: str) -> Path:
    (path := Path(opts.out) / step).mkdir(parents=True, exist_ok=True)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None


def _amp(device: torch.device) -> str:
    """bf16 on a GPU (the paper profile's precision); on a CPU bf16 only where it runs in hardware."""
    return resolve_amp(device, "bf16" if device.type == "cuda" else "auto")


def _verdict(figures: dict[str, Any], problems: list[str], **extra: Any) -> dict[str, Any]:
    result = {"status": "failed" if problems else "ok", "figures": figures, **extra}
    return result | ({"error": "; ".join(problems)} if problems else {})


def _validated(opts: argparse.Namespace) -> tuple[Any, Any, dict[int, int]]:
    """The manifest as `dgnet train --manifest` reads it, the profile sized to it, the label map."""
    if not Path(opts.manifest).is_file() or not Path(opts.teacher).is_file():
        raise RuntimeError(f"setup did not leave {opts.manifest} and {opts.teacher}; see the setup step")
    frame = read_validated_manifest(opts.manifest, opts.report)
    label_map = training_labels(frame)
    # Without ImageNet weights in the torch cache (no network on GPU machines): random init.
    return frame, get_profile(opts.profile, require_pretrained=False, num_classes=len(label_map)), label_map


def _train_config(opts: argparse.Namespace, iterations: int, **fields: Any) -> DGNetTrainConfig:
    """The paper's DGNetTrainConfig compressed to `iterations` (warm-up from 30%, LR steps at 60%/90%)."""
    return dataclasses.replace(DGNetTrainConfig().scaled_to(iterations), **{
        "batch_size": opts.batch_size, "device": opts.device, "num_workers": opts.workers, **fields})


def step_deadline(margin: float) -> float:
    """time.monotonic() at which this step must wrap up: `margin` s before the parent kills it."""
    kill_at = float(os.environ.get("GPU_CHECK_KILL_AT", time.time() + 600))  # wall clock, set by the parent
    return time.monotonic() + (kill_at - time.time()) - margin


def loss_curves_picture(rows: list[dict[str, Any]], title: str) -> Image.Image:
    """Small multiples of every `loss/*` series of a training log, one panel each, own y-range."""
    names = sorted({k for row in rows for k in row if k.startswith("loss/")})
    cols, w, h = 4, 300, 170
    sheet = Image.new("RGB", (cols * w, 36 + max(1, math.ceil(len(names) / cols)) * h), "white")
    draw, font, grey = ImageDraw.Draw(sheet), ImageFont.load_default(), (90, 90, 90)
    draw.text((10, 10), title, fill="black", font=font)
    for n, name in enumerate(names):
        x0, y0 = (n % cols) * w, 36 + (n // cols) * h
        points = [(row["iteration"], row[name]) for row in rows if _finite(row.get(name))]
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
        if len(line) > 1:
            draw.line(line, fill=(31, 119, 180), width=2)
        else:
            draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=(31, 119,
                                                                                                 180))
    return sheet


# The steps: each runs in its own child process and returns {"status", "figures", ...}


def step_setup(opts: argparse.Namespace) -> dict[str, Any]:
    """Synthetic dataset -> validated manifest + report -> a short teacher."""
    from dgnet.data.synthetic import generate_dataset
    from dgnet.data.validated import validate_dataset
    from dgnet.models.backbone import cached_imagenet_checkpoint
    from dgnet.models.persist import save_model
    from dgnet.models.teacher import ReidBaseline
    from dgnet.training.cli import FileLogHook
    from dgnet.training.teacher_trainer import TeacherTrainConfig, train_teacher

    start = time.perf_counter()
    table = generate_dataset(opts.data, seed=0, num_ids=opts.ids, num_cameras=opts.cameras)
    render_s = time.perf_counter() - start
    frame = validate_dataset(opts.data, report=opts.report, manifest=opts.manifest)
    label_map = training_labels(frame)
    model_cfg = get_profile(opts.profile, require_pretrained=False, num_classes=len(label_map))
    imagenet = cached_imagenet_checkpoint(model_cfg.backbone) if model_cfg.pretrained else None
    figures: dict[str, Any] = {
        "images": len(table), "train_ids": len(label_map), "render_s": round(render_s, 1),
        "splits": frame["split"].value_counts().to_dict(), "teacher_iterations": opts.teacher_iterations,
        "imagenet_weights": str(imagenet) if imagenet else None}
    if opts.teacher_iterations > 0:
        cfg = dataclasses.replace(
            TeacherTrainConfig().scaled_to(opts.teacher_iterations), batch_size=4 * opts.batch_size,
            device=opts.device, amp=_amp(select_device(opts.device)), num_workers=opts.workers, eval_every=0,
            checkpoint_every=0, log_every=max(1, opts.teacher_iterations // 10))
        started = time.perf_counter()
        result = train_teacher(frame, model_cfg, cfg, Path(opts.teacher).parent,
                               hooks=[FileLogHook(step_dir(opts, "setup") / "teacher")], resume=False)
        figures |= {"teacher_s": round(time.perf_counter() - started, 1),
                    "teacher_rank1": result.metrics.get("rank1"), "teacher_mAP": result.metrics.get("mAP")}
    else:  # an untrained teacher: its soft labels are near-uniform, which costs the check nothing
        save_model(opts.teacher, ReidBaseline(model_cfg), "teacher", model_cfg,
                   extra={"label_map": label_map})
    return {"status": "ok", "figures": figures}


def _expected_skip(row: dict[str, Any], on_cuda: bool) -> bool:
    """A mode this device cannot run (train_speed's own reasons), or a compiler missing on a CPU."""
    reason = str(row.get("reason", ""))
    cannot = ("fp16 autocast needs CUDA", "is not supported on", "has no torch.compile", LEFT_OUT_ON_CPU)
    return any(text in reason for text in cannot) or (not on_cuda and "torch.compile failed" in reason)


def step_train_speed(opts: argparse.Namespace) -> dict[str, Any]:
    """train_speed.py's per-mode measurement, each mode in its own process, within this step's time."""
    deadline, reserve = step_deadline(margin=8), 25 if opts.on_cuda else 10  # s left to each later mode
    threads = 0 if opts.on_cuda else opts.threads
    args = train_speed.build_parser().parse_args(  # train_speed's own defaults for what its children read
        ["--profile", opts.profile, "--device", opts.device, "--iterations", str(opts.speed_iterations),
         "--warmup", str(opts.speed_warmup), "--batch-size", str(opts.batch_size), "--threads", str(threads)])
    info, rows, cannot = common.machine(), [], {}
    for mode in opts.speed_modes:  # a mode this device cannot run is skipped without a child to say so
        try:
            train_speed._check_mode(train_speed.Mode.parse(mode), torch.device(opts.device))
        except train_speed.Skipped as exc:
            cannot[mode] = str(exc)
    runnable = [m for m in opts.speed_modes if m not in cannot]
    for mode in opts.speed_modes:
        if mode in cannot:
            rows.append({"mode": mode, "status": "skipped", "reason": cannot[mode]})
            continue
        later = len(runnable) - runnable.index(mode) - 1
        args.mode_timeout = max(5, int(deadline - time.monotonic() - reserve * later))
        rows.append(train_speed.run_child(args, mode))
        train_speed._print_row(rows[-1])
    left_out = [] if opts.on_cuda else [m for m in SPEED_MODES if m not in opts.speed_modes]
    rows += [{"mode": m, "status": "skipped", "reason": LEFT_OUT_ON_CPU} for m in left_out]  # said
    rows = [{"profile": opts.profile, "device": opts.device, **r,
             "mode": train_speed.Mode.parse(r["mode"]).name} for r in rows]
    info["load_average_end"] = common.load_average()
    modes = {r["mode"]: {k: r.get(k) for k in ("status", "reason", "median_s", "first_iteration_s",
                                                 "peak_reserved_mb", "peak_rss_mb")} for r in rows}
    for entry in modes.values():
        if entry["peak_reserved_mb"] is not None:
            entry["peak_reserved_gb"] = gb = entry["peak_reserved_mb"] / 1024
            entry["target_met"] = (entry["median_s"] <= train_speed.TARGET_S_PER_ITER
                                   and gb <= train_speed.TARGET_PEAK_GB)
    command = (f"python benchmarks/train_speed.py --profile {opts.profile} --device {opts.device} --modes "
               f"{','.join(opts.speed_modes)} --iterations {opts.speed_iterations} "
               f"--warmup {opts.speed_warmup}"
               + ("" if opts.on_cuda else f" --threads {opts.threads}") + " (run by benchmarks/gpu_check.sh)")
    problems = [f"{r['mode']}: {r.get('reason')}" for r in rows
                if r.get("status") != "ok" and not _expected_skip(r, opts.on_cuda)]
    return _verdict({"modes": modes}, problems, rows=rows, machine=info, command=command,
                    section=train_speed.section_name(opts.profile, opts.device, threads))


def step_train(opts: argparse.Namespace) -> dict[str, Any]:
    """A short paper-profile DG-Net training (compressed schedule), then recon_l1 and the swap grid."""
    from dgnet.evaluation.benchmark import benchmark_model
    from dgnet.training.cli import FileLogHook
    from dgnet.training.trainer import train_dgnet

    device, (frame, model_cfg, _), out = select_device(opts.device), _validated(opts), step_dir(opts, "train")
    n = opts.train_iterations
    cfg = _train_config(opts, n, amp=_amp(device), log_every=max(1, n // 60), eval_every=0,
                        image_every=max(1, n // 3), checkpoint_every=0)
    (out / "log.jsonl").unlink(missing_ok=True)
    started = time.perf_counter()
    result = train_dgnet(frame, model_cfg, cfg, [opts.teacher], Path(opts.work) / "train",
                         hooks=[FileLogHook(out)], resume=False)
    train_s, peak = time.perf_counter() - started, _peak_gb(device)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "event"} for r in records if r["event"] == "iteration"]
    losses = sorted({k for row in rows for k in row if k.startswith("loss/")})
    columns = ["iteration", *sorted({k for row in rows for k in row} - {"iteration"})]
    (out / "losses.csv").write_text("".join(",".join(str(row.get(c, "")) for c in columns) + "\n"
                                            for row in [dict(zip(columns, columns, strict=True)), *rows]))
    loss_curves_picture(rows, f"DG-Net {opts.profile} profile, {n} iterations, {cfg.amp}, {device}").save(
        out / "loss_curves.png")
    # After the first window (cudnn autotuning, loader start-up): the steady time of an iteration.
    steady = [row["time/iteration"] for row in rows[1:] or rows]
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
        "first_losses": {k: rows[0].get(k) for k in losses} if rows else {},
        "last_losses": {k: rows[-1].get(k) for k in losses} if rows else {},
        "recon_l1": recon, "baselines": gen.get("baselines"), "swap_l1_person": gen.get("swap_l1_person"),
        "swap_ssim_person": gen.get("swap_ssim_person"), "reid": bench.reid.get("alpha_0.5"),
        "schedule": dataclasses.asdict(cfg.schedule)}
    # A ramped loss is absent from the log until its weight switches on; a logged one must be finite.
    problems = [f"{k} at {row['iteration']}" for row in rows for k in losses
                if k in row and not _finite(row[k])][:5]
    problems += [] if _finite(recon) and 0 < recon < 1 else [f"recon_l1 {recon!r} is not in (0, 1)"]
    return _verdict(figures, problems + ([] if rows else ["no loss was logged"]))


def step_eval(opts: argparse.Namespace) -> dict[str, Any]:
    """eval_speed.py's Market-size ranking on the device, and the same ranking on the CPU: equal metrics."""
    rows, parity = [], {}
    for kind in opts.eval_kinds:
        row = eval_speed.measure(opts.eval_size, kind, opts.device, opts.eval_repeats, chunk_size=256)
        reference = eval_speed.measure(opts.eval_size, kind, "cpu", 1,
                                       chunk_size=256)  # on a CPU: repeatability
        rows.append(row)
        parity[kind] = {"cpu_total_s": reference["total_s"],
                        **{f"{m}_diff": abs(row[m] - reference[m]) for m in ("rank1", "mAP", "mINP")}}
        print(f"{kind}: {row['device']} {row['total_s']:.3f} s, cpu {reference['total_s']:.3f} s, "
              f"mAP {row['mAP']:.4f} vs {reference['mAP']:.4f}", flush=True)
    info = eval_speed.machine() | {"load_average_end": common.load_average()}
    worst = max(v for p in parity.values() for k, v in p.items() if k.endswith("_diff"))
    keys = ("total_s", "distances_s", "rank1", "mAP", "peak_gpu_mb")
    figures = {"size": opts.eval_size, "queries": rows[0]["queries"], "gallery": rows[0]["gallery"],
               "device": {r["kind"]: {k: r.get(k) for k in keys} for r in rows},
               "parity": parity, "max_diff": worst, "tolerance": PARITY_TOLERANCE}
    problems = [f"device and CPU metrics differ by {worst:.2e} (tolerance {PARITY_TOLERANCE:g})"] \
        if worst > PARITY_TOLERANCE else []
    command = (f"python benchmarks/eval_speed.py --sizes {opts.eval_size} --device {opts.device} "
               f"--repeats {opts.eval_repeats} (run by benchmarks/gpu_check.sh)")
    return _verdict(figures, problems, rows=rows, machine=info, command=command,
                    section=f"eval_speed-{'cuda' if opts.on_cuda else 'cpu'}")


def step_fp16(opts: argparse.Namespace) -> dict[str, Any]:
    """fp16 training iterations with the GradScalers; count skipped steps and non-finite losses."""
    (frame, model_cfg, label_map), n = _validated(opts), opts.fp16_iterations
    device = select_device(opts.device)
    # dgnet refuses fp16 autocast on a CPU: there fp32 under enabled GradScalers (their logic, not fp16's).
    cfg = _train_config(opts, n, amp="fp16" if opts.on_cuda else "off")
    scalers = {name: torch.amp.GradScaler(device.type) for name in ("discriminator", "joint")}
    rows, non_finite, skipped = [], [], {name: [] for name in scalers}
    with determinism(cfg.seed, False):
        teacher = common.load_teacher(model_cfg, device, [opts.teacher], label_map)
        ctx = DistContext(0, 1, 0, device, False)
        step = build_joint_step(model_cfg, cfg, ctx, teacher, scalers=scalers).step
        dataset = TrainImages(frame, (model_cfg.image_height, model_cfg.image_width), cfg.augmentation)
        sampler = ImagePairSampler(dataset.labels.numpy(), cfg.batch_size, cfg.seed)
        started, deadline = time.perf_counter(), step_deadline(margin=8)
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
                         **{f"scale/{k}": s.get_scale() for k, s in scalers.items()}})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - started
    out = step_dir(opts, "fp16")
    loss_curves_picture(rows, f"fp16 + GradScaler, {n} iterations, {device}").save(out / "loss_curves.png")
    (out / "iterations.json").write_text(json.dumps(rows))
    limit = max(SKIP_FLOOR, int(SKIP_FRACTION * n))
    r1 = [row["loss/d_r1"] for row in rows if "loss/d_r1" in row]
    figures = {
        "iterations": len(rows) + len(non_finite), "asked": n,
        "precision": "fp16" if opts.on_cuda else "fp32 + GradScaler (CPU stand-in)",
        "s_per_iteration": wall / max(len(rows) + len(non_finite), 1),
        "skipped_steps": {k: len(v) for k, v in skipped.items()},
        "skipped_at": {k: v[:20] for k, v in skipped.items()},
        "skip_limit": limit, "non_finite_losses": len(non_finite), "non_finite": non_finite[:10],
        "final_scale": {name: scaler.get_scale() for name, scaler in scalers.items()},
        "d_r1_range": [min(r1), max(r1)] if r1 else None, "peak_reserved_gb": _peak_gb(device),
        "last_losses": {k: v for k, v in rows[-1].items() if k.startswith("loss/")} if rows else {}}
    problems = [f"{len(non_finite)} non-finite loss(es), first: {e['error']}" for e in non_finite[:1]]
    problems += [f"{k} skipped {len(v)} of {n} steps (limit {limit})"
                 for k, v in skipped.items() if len(v) > limit]
    return _verdict(figures, problems)


def _digests(module: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer's bytes: equal digests are bit-identical weights."""
    return {name: hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
            for name, t in module.state_dict().items()}


def ddp_rank(opts: argparse.Namespace, backend: str) -> None:
    """One torchrun rank: the trainer's step (gradient and BN averaging) on this rank's share of each
    global batch; writes the weights' digests and what it saw to ddp/BACKEND_rankN.json."""
    device = select_device(opts.device)  # cuda:0 for both ranks (LOCAL_RANK 1 has no GPU of its own)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, opts.threads // 2))
    dist.init_process_group(backend, timeout=dt.timedelta(seconds=60))  # torchrun's rendezvous (env://)
    try:
        ctx = init_distributed(str(device))  # the trainer's context on the group: torchrun's RANK, WORLD_SIZE
        dist.all_reduce(torch.ones(1, device=ctx.device))  # an unusable backend fails here, before the set-up
        frame, model_cfg, label_map = _validated(opts)
        cfg = _train_config(opts, opts.ddp_iterations, amp=_amp(ctx.device), num_workers=0)
        times, seen = [], []
        with determinism(cfg.seed, False):
            torch.manual_seed(cfg.seed + ctx.rank)  # different weights per rank: the broadcast must fix it
            teacher = common.load_teacher(model_cfg, ctx.device, [opts.teacher], label_map)
            built = build_joint_step(model_cfg, cfg, ctx, teacher)
            initial = _digests(built.model)
            dataset = TrainImages(frame, (model_cfg.image_height, model_cfg.image_width), cfg.augmentation)
            sampler = ImagePairSampler(dataset.labels.numpy(), cfg.batch_size, cfg.seed, ctx.rank,
                                       ctx.world_size)
            for iteration, batch in enumerate(make_loader(dataset, sampler, 0, opts.ddp_iterations, 0,
                                                          ctx.device)):
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                start = time.perf_counter()
                logs = built.step(iteration, batch)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                times.append(time.perf_counter() - start)
                seen.append(sampler.batch(iteration).indices.tolist())
        record = {"rank": ctx.rank, "backend": backend, "device": str(ctx.device), "times": times,
                  "seen": seen, "initial": initial, "final": _digests(built.model), "last_logs": logs}
        (step_dir(opts, "ddp") / f"{backend}_rank{ctx.rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> int | None:
    """`cmd` in its own session (a timeout kills its children too), output to `log`; None on a timeout."""
    with open(log, "w", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def step_ddp(opts: argparse.Namespace) -> dict[str, Any]:
    """Two torchrun ranks on the one device: NCCL where it allows it, else gloo; lockstep weights."""
    folder, deadline = step_dir(opts, "ddp"), step_deadline(margin=5)
    backends = ["nccl", "gloo"] if opts.on_cuda and dist.is_nccl_available() else ["gloo"]
    attempts: dict[str, str] = {}
    for k, backend in enumerate(backends):
        left = deadline - time.monotonic()  # NCCL gets half: it refuses two ranks on one GPU at once
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               __file__, "--ddp-rank", backend, "--options", str(Path(opts.out) / "options.json")]
        code = _run(cmd, folder / f"{backend}.log", left / 2 if k < len(backends) - 1 else left)
        lines = (folder / f"{backend}.log").read_text(errors="replace").strip().splitlines()
        errors = [line for line in lines if "Error" in line or "error" in line] or lines or ["(no output)"]
        attempts[backend] = ("ok" if code == 0 else f"{backend}: " + (
            f"the ranks did not finish within {left:.0f} s" if code is None else errors[-1][:300]))
        if code == 0:
            break
    else:
        return {"status": "failed", "error": "; ".join(attempts.values()), "figures": {"attempts": attempts}}
    first, second = [json.loads((folder / f"{backend}_rank{r}.json").read_text()) for r in range(2)]
    names, n = first["final"].keys(), opts.batch_size
    moved = sum(first["final"][k] != first["initial"][k] for k in names)
    different = [k for k in names if first["final"][k] != second["final"][k]]
    start_differs = [k for k in names if first["initial"][k] != second["initial"][k]]
    shared = [it + 1 for it, (s0, s1) in enumerate(zip(first["seen"], second["seen"], strict=True))
              if set(s0[:n]) & set(s1[:n]) or set(s0[2 * n:3 * n]) & set(s1[2 * n:3 * n])]
    figures = {"backend": backend, "attempts": attempts, "device": first["device"],
               "iterations": len(first["times"]), "tensors": len(names), "moved": moved,
               "differing_after": len(different),
               "differing_at_start": len(start_differs), "batches_sharing_images": shared,
               "s_per_iteration": statistics.median(first["times"][1:] or first["times"]),
               "last_losses": first["last_logs"]}
    problems = [text for text, bad in (
        (f"the ranks' weights differ after training in {len(different)} tensors, e.g. {different[:1]}",
         different),
        (f"the ranks started from different weights ({len(start_differs)} tensors)", start_differs),
        (f"training moved only {moved} of {len(names)} tensors: nothing is proven", moved <= len(names) // 2),
        (f"the ranks saw the same images at iterations {shared[:5]}", shared)) if bad]
    return _verdict(figures, problems)


STEP_FUNCTIONS = {"setup": step_setup, "train_speed": step_train_speed, "train": step_train,
                  "eval": step_eval, "fp16": step_fp16, "ddp": step_ddp}


def run_step_here(opts: argparse.Namespace, name: str) -> None:
    """A child's whole job: run one step, write its result (an exception becomes a failed result)."""
    if not opts.on_cuda:
        torch.set_num_threads(opts.threads)
    try:
        result = STEP_FUNCTIONS[name](opts)
    except BaseException as exc:
        trace = traceback.format_exc()
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": trace[-4000:]}
        print(trace, file=sys.stderr)
    (step_dir(opts, name) / "result.json").write_text(json.dumps(result, indent=1, default=str))



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
    code = _run([sys.executable, __file__, "--run-step", name, "--options",
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
              "swap L1 (person) copy-structure {baselines[copy_structure][swap_l1_person]:.3f} / "
              "copy-appearance "
              "{baselines[copy_appearance][swap_l1_person]:.3f}; {target}"),
    "eval": ("{queries:,} x {gallery:,}: {device[trained][total_s]:.3f} s on {on}; largest metric difference "
             "from the CPU {max_diff:.1e}", "CPU, same run: {parity[trained][cpu_total_s]:.3f} s{cpu_eval}"),
    "fp16": ("{iterations} of {asked} iterations ({precision}): skipped steps D "
             "{skipped_steps[discriminator]} / G+E_a {skipped_steps[joint]} (limit {skip_limit}), "
             "non-finite losses {non_finite_losses}, final scales {final_scale}",
             "the published code's fp16 (apex) overflowed"),
    "ddp": ("backend {backend} (torchrun), {iterations} iterations, {s_per_iteration:.3f} s/it; tensors "
            "differing between the ranks at the end: {differing_after} ({moved} of {tensors} moved)",
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
    cpu_eval = [r for r in common.recorded_rows("eval_speed-cpu")
                if (r.get("size"), r.get("kind")) == ("market", "trained")]
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
                       "on 2 cores" if cpu_bf16 else "",
          "cpu_eval": f"; 2 CPU cores (RESULTS.json): {cpu_eval[0]['total_s']:.2f} s" if cpu_eval else ""}
    return tuple(_Lenient().format(template, **f)  # type: ignore[return-value]
                 for template in LINES.get(name, ("-", "-")))


def render_markdown(summary: dict[str, Any]) -> str:
    """RESULTS.section.md: this check's table, then the train_speed and eval_speed sections (the
    benchmarks' one renderer, `common.render`, on the records the steps left)."""
    opts, steps = argparse.Namespace(**summary["options"]), summary["steps"]
    passed = sum(r["status"] in ("ok", "skipped") for r in steps.values())
    table = []
    for step, result in steps.items():
        text, beside = step_line(step, result, opts)
        error = str(result.get("error", "?"))
        if result["status"] not in ("ok", "skipped") and error[:60] not in text:
            text = error[:300] + ("" if text == "-" else f" ({text})")
        table.append([step, result["status"], result.get("wall_s", "-"), text, beside])
    record = {"title": f"GPU check, {opts.profile} profile, {opts.device} (`benchmarks/gpu_check.sh`)",
              "measured": summary["started"][:10], "command": opts.command, "machine": summary["machine"],
              "text": [f"Total {summary['wall_s']:.0f} s (budget {opts.budget} s); {passed} of {len(steps)} "
                       "steps passed. Pictures: `train/loss_curves.png`, `train/swap_grid.png` (test images, "
                       "row = appearance, column = structure), `fp16/loss_curves.png`."],
              "columns": ["step", "status", "wall (s)", "result", "beside"], "table": table}
    sections = [common.render(f"gpu_check-{opts.profile}-{'cuda' if opts.on_cuda else 'cpu'}", record)]
    for step, make in (("train_speed", train_speed.record), ("eval", eval_speed.record)):
        if (r := steps.get(step, {})).get("rows"):
            sections.append(common.render(r["section"], {"measured": record["measured"],
                                                          **make(r["machine"], r["rows"], r["command"])}))
    return "\n".join(sections)


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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--run-step"], ["--ddp-rank"]):  # a step's child process, or one torchrun rank
        opts = argparse.Namespace(**json.loads(Path(argv[3]).read_text()))
        run_step_here(opts, argv[1]) if argv[0] == "--run-step" else ddp_rank(opts, argv[1])
        return 0
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
                      f"measured bf16 speed, {opts.train_iterations} would not fit in {timeout:.0f} s",
                      flush=True)
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
        ok = result["status"] in ("ok", "skipped")
        shown = step_line(name, result, opts)[0] if ok else result.get("error", "")
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
