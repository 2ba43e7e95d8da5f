"""Where one joint DG-Net iteration spends its time: per network, forward and backward.

    python benchmarks/profile_iteration.py --profile cpu --iterations 5 [--amp bf16] [--threads 2]

Runs the trainer's own step (`make_joint_step`, built by benchmarks/common.py's `build_joint_step`
as benchmarks/train_speed.py builds it, at iteration 40,000 of the paper's schedule: every loss on)
under torch.profiler. Each network's forward is wrapped in a named scope; a backward op is charged
to the network whose forward op created it (the profiler's autograd sequence numbers link the two).
What is left is the optimisers, the loss arithmetic and the Python between ops. Prints one table,
seconds per iteration (mean over the profiled iterations, after one warm-up), and with --out writes
it as JSON; --write puts it in benchmarks/RESULTS.md (its own section, with the machine and the
command) and its figures in RESULTS.json.
Imports only dgnet, torch and the standard library.
"""

from __future__ import annotations

import argparse
import bisect
import json
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from dgnet.models.config import get_profile
from dgnet.training.runtime import DistContext, resolve_amp
from dgnet.training.trainer import DGNetTrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported by path
import common

SCOPE = "net:"


def _scoped(name: str, module: torch.nn.Module) -> None:
    """Wrap `module.forward` in a profiler scope named `net:<name>` (nested calls keep the outer)."""
    forward = module.forward

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(SCOPE + name):
            return forward(*args, **kwargs)

    module.forward = wrapped  # type: ignore[method-assign]


def attribute(events: Any) -> dict[str, dict[str, float]]:
    """Seconds per network: forward ops inside its scope, backward ops linked to those ops."""
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
        elif e.sequence_nr >= 0 and e.name.startswith("aten::"):  # a forward op that made a graph node
            name = scope_of(e.time_range.start)
            if name is not None:
                owner.setdefault(e.sequence_nr, name)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            totals[owner.get(e.sequence_nr, "other")]["backward"] += e.cpu_time_total / 1e6
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write", action="store_true", help="write its section of --results")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = common.load_average()
    device = torch.device("cpu")
    model_cfg = get_profile(args.profile, pretrained=False)
    cfg = DGNetTrainConfig(amp=resolve_amp(device, args.amp), num_workers=0)
    built = common.build_joint_step(model_cfg, cfg, DistContext(0, 1, 0, device, False))
    for name in ("appearance_encoder", "structure_encoder", "decoder", "discriminator"):
        _scoped(name, getattr(built.model, name))
    _scoped("teacher", built.teacher)
    step = built.step
    batch = common.synthetic_batch(model_cfg.image_height, model_cfg.image_width, cfg.batch_size,
                            model_cfg.num_classes, device)
    step(common.TIMED_ITERATION, batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for k in range(args.iterations):
            step(common.TIMED_ITERATION + 1 + k, batch)
        wall = (time.perf_counter() - started) / args.iterations
    per_it = {k: {p: v / args.iterations for p, v in d.items()} for k, d in attribute(prof.events()).items()}
    accounted = sum(v["forward"] + v["backward"] for v in per_it.values())
    result = {"profile": args.profile, "amp": cfg.amp, "threads": torch.get_num_threads(),
              "batch_size": cfg.batch_size, "wall_s_per_iteration": wall, "networks": per_it,
              "rest_s": wall - accounted}
    print(f"{args.profile}, amp {cfg.amp}, {result['threads']} threads: {wall:.3f} s an iteration (profiled)")
    print(f"{'network':<20} {'forward s':>10} {'backward s':>11} {'share':>7}")
    for name, v in sorted(per_it.items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"])):
        share = (v["forward"] + v["backward"]) / wall
        print(f"{name:<20} {v['forward']:>10.3f} {v['backward']:>11.3f} {share:>7.1%}")
    print(f"{'rest (optimisers, loss arithmetic, Python)':<43} {result['rest_s']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.write:
        given = argv if argv is not None else sys.argv[1:]
        command = "python benchmarks/profile_iteration.py " + shlex.join(given)
        write_section(args.results, result, command, load_start)
    return 0


def write_section(results: Path, result: dict[str, Any], command: str, load_start: Any) -> None:
    """This script's section of RESULTS.md (one per profile and thread count)."""
    info = common.machine()
    name = f"profile_iteration-{result['profile']}-{result['threads']}thread"
    wall = result["wall_s_per_iteration"]
    rows = sorted(result["networks"].items(), key=lambda kv: -(kv[1]["forward"] + kv[1]["backward"]))
    lines = [
        f"<!-- BEGIN {name} -->",
        f"## Where an iteration's time goes, {result['profile']} profile, {result['threads']} torch "
        f"threads (`benchmarks/profile_iteration.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `{command}`.",
        f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}; load average "
        f"{load_start} at the start, {info['load_average']} at the end.",
        "",
        f"The trainer's own step (`make_joint_step`) at iteration 40,000 of the paper's schedule (every "
        f"loss on), amp {result['amp']}, batch {result['batch_size']} per stream, under torch.profiler "
        f"(which slows it: {wall:.3f} s an iteration here, against train_speed.py's unprofiled "
        f"figures). Each network's backward ops are charged to it through the autograd sequence numbers.",
        "",
        "| network | forward (s) | backward (s) | share |",
        "| --- | ---: | ---: | ---: |",
        *[f"| {k} | {v['forward']:.3f} | {v['backward']:.3f} | {(v['forward'] + v['backward']) / wall:.1%} |"
          for k, v in rows],
        f"| rest (optimisers, loss arithmetic, Python) | | | {result['rest_s'] / wall:.1%} |",
        "",
        f"<!-- END {name} -->",
        "",
    ]
    common.write_results(results, name, "\n".join(lines), {"command": command, "machine": info, **result})
    print(f"wrote {results} ({name})")


if __name__ == "__main__":
    raise SystemExit(main())
