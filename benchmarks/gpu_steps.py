"""What each step of benchmarks/gpu_check.py runs, in its own child process (see gpu_check.py).

    python benchmarks/gpu_steps.py --run-step STEP --options OUT/options.json   # started by gpu_check.py
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/gpu_steps.py \
        --ddp-rank BACKEND --options OUT/options.json                            # started by the ddp step

Each step writes OUT/STEP/result.json ({"status", "figures", "error", ...}; an exception becomes a
failed result); its pictures and logs go beside it. The joint step is benchmarks/common.py's
`build_joint_step`, as in train_speed.py and profile_iteration.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import signal
import statistics
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
from dgnet.training.trainer import DGNetTrainConfig, make_scalers

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
    figures: dict[str, Any] = {"images": len(table), "train_ids": len(label_map), "render_s": round(render_s,
                                                                                                    1),
                               "splits": frame["split"].value_counts().to_dict(),
                               "imagenet_weights": str(imagenet) if imagenet else None,
                               "teacher_iterations": opts.teacher_iterations}
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
    rows += [{"mode": m, "status": "skipped",
              "reason": LEFT_OUT_ON_CPU} for m in left_out]  # said, not forgotten
    rows = [{"profile": opts.profile, "device": opts.device, **r,
             "mode": train_speed.Mode.parse(r["mode"]).name}
            for r in rows]
    info["load_average_end"] = common.load_average()
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

    device, (frame, model_cfg, _), out, n = select_device(opts.device), _validated(opts), step_dir(opts,
                                                                                                   "train"), \
        opts.train_iterations
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
    device, (frame, model_cfg,
             label_map), n = select_device(opts.device), _validated(opts), opts.fp16_iterations
    # dgnet refuses fp16 autocast on a CPU: there fp32 under enabled GradScalers (their logic, not fp16's).
    cfg = _train_config(opts, n, amp="fp16" if opts.on_cuda else "off")
    scalers = make_scalers(device, "fp16") if opts.on_cuda else \
        {name: torch.amp.GradScaler("cpu") for name in ("discriminator", "joint")}
    rows, non_finite, skipped = [], [], {name: [] for name in scalers}
    with determinism(cfg.seed, False):
        step = common.build_joint_step(model_cfg, cfg, DistContext(0, 1, 0, device, False), [opts.teacher],
                                       label_map, scalers).step
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
            rows.append({"iteration": iteration + 1, **logs, **{f"scale/{k}": s.get_scale() for k,
                                                                s in scalers.items()}})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - started
    out = step_dir(opts, "fp16")
    loss_curves_picture(rows, f"fp16 + GradScaler, {n} iterations, {device}").save(out / "loss_curves.png")
    (out / "iterations.json").write_text(json.dumps(rows))
    limit, r1 = max(SKIP_FLOOR,
                    int(SKIP_FRACTION * n)), [row["loss/d_r1"] for row in rows if "loss/d_r1" in row]
    figures = {
        "iterations": len(rows) + len(non_finite), "asked": n,
        "precision": "fp16" if opts.on_cuda else "fp32 + GradScaler (CPU stand-in)",
        "s_per_iteration": wall / max(len(rows) + len(non_finite), 1),
        "skipped_steps": {k: len(v) for k, v in skipped.items()}, "skipped_at": {k: v[:20] for k,
                                                                                 v in skipped.items()},
        "skip_limit": limit, "non_finite_losses": len(non_finite), "non_finite": non_finite[:10],
        "final_scale": {name: scaler.get_scale() for name, scaler in scalers.items()},
        "d_r1_range": [min(r1), max(r1)] if r1 else None, "peak_reserved_gb": _peak_gb(device),
        "last_losses": {k: v for k, v in rows[-1].items() if k.startswith("loss/")} if rows else {}}
    problems = [f"{len(non_finite)} non-finite loss(es), first: {non_finite[0]['error']}"] \
        if non_finite else []
    problems += [f"{k} skipped {len(v)} of {n} steps (limit {limit})" for k,
                 v in skipped.items() if len(v) > limit]
    return _verdict(figures, problems)


def _digests(module: torch.nn.Module) -> dict[str, str]:
    """SHA-256 of every parameter and buffer's bytes: equal digests are bit-identical weights."""
    return {name: hashlib.sha256(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
            .hexdigest()
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
            built = common.build_joint_step(model_cfg, cfg, ctx, [opts.teacher], label_map)
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
                  "seen": seen,
                  "initial": initial, "final": _digests(built.model), "last_logs": logs}
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
               "iterations": len(first["times"]),
               "tensors": len(names), "moved": moved, "differing_after": len(different),
               "differing_at_start": len(start_differs), "batches_sharing_images": shared,
               "s_per_iteration": statistics.median(first["times"][1:] or first["times"]),
               "last_losses": first["last_logs"]}
    problems = [f"the ranks' weights differ after training in {len(different)} tensors, "
                f"e.g. {different[0]}"] \
        if different else []
    problems += [f"the ranks started from different weights ({len(start_differs)} tensors)"] \
        if start_differs else []
    problems += [f"training moved only {moved} of {len(names)} tensors: nothing is proven"] \
        if moved <= len(names) // 2 else []
    return _verdict(figures,
                    problems + ([f"the ranks saw the same images at iterations {shared[:5]}"]
                                if shared else []))


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


def main(argv: list[str] | None = None) -> int:
    """`--run-step STEP --options FILE` (a step's child), `--ddp-rank BACKEND --options FILE` (a rank)."""
    role, name, _, options = sys.argv[1:5] if argv is None else argv[:4]
    opts = argparse.Namespace(**json.loads(Path(options).read_text()))
    if role == "--run-step":
        run_step_here(opts, name)
    else:
        ddp_rank(opts, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
