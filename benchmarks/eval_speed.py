"""Speed and peak memory of the re-ID evaluation: distances + ranking at Market-1501 and MSMT17 size.

    python benchmarks/eval_speed.py                     # market and msmt, both feature kinds
    python benchmarks/eval_speed.py --sizes market --repeats 5 --no-write

Timed: `rank_metrics_from_features` (both AP conventions) from given L2-normalised 1024-d features,
i.e. the chunked query x gallery products and the exact ranking (CMC, mAP, mINP); the products alone
too, so that "ranking" = total - distances. Feature extraction is not included. The features are
synthetic, with Market-like (or MSMT-like) id and camera layouts, distractors (id 0) and junk (id -1):
`trained` = an id centre plus noise (mAP near a trained model's), `random` = pure noise (mAP ~0).
Each measurement runs in a fresh child process: peak RSS on the CPU (features included: their size
is listed beside it), `torch.cuda.max_memory_allocated` during the evaluation on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dgnet.evaluation.rank import pairwise_distance, rank_metrics_from_features

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module, also when imported by path
import common
from common import clock, proc_memory_mb

# name: (queries, gallery, ids, cameras, images per id, distractors (id 0)); the rest of the
# gallery is junk (id -1): about 2,600 at Market size (the real Market-1501 has 3,819 on top).
SIZES = {
    "market": (3368, 15913, 751, 6, 14, 2798),
    "msmt": (11659, 82161, 3060, 15, 26, 400),
    "tiny": (300, 1500, 60, 6, 14, 200),  # a smoke run
}
# Noise per feature dimension for "trained" features, tuned per size so that mAP ~75-85%.
TRAINED_NOISE = {"market": 0.07, "msmt": 0.075, "tiny": 0.07}


def make_problem(size: str, kind: str, seed: int = 0, dim: int = 1024):
    """Features and labels of a synthetic evaluation problem: (qf, gf, q_pids, q_cams, g_pids, g_cams)."""
    num_q, num_g, num_ids, num_cams, per_id, num_distractors = SIZES[size]
    rng = np.random.default_rng(seed)
    # Each id is seen by 2..num_cams cameras; its gallery images spread over those cameras.
    g_pids, g_cams, seen = [], [], []
    for pid in range(1, num_ids + 1):
        cams = rng.choice(np.arange(1, num_cams + 1), size=int(rng.integers(2, min(num_cams, 6) + 1)),
                          replace=False)
        count = max(len(cams), int(rng.poisson(per_id)))
        g_pids += [pid] * count
        g_cams += list(rng.choice(cams, size=count))
        seen += [(pid, int(c)) for c in cams]
    num_junk = num_g - len(g_pids) - num_distractors
    if num_junk < 0:
        raise ValueError(f"{size}: {len(g_pids)} id images + {num_distractors} distractors > {num_g}")
    g_pids += [0] * num_distractors + [-1] * num_junk
    g_cams += list(rng.integers(1, num_cams + 1, size=num_distractors + num_junk))
    order = rng.permutation(num_g)  # interleave, as file names would
    g_pids, g_cams = np.asarray(g_pids)[order], np.asarray(g_cams)[order]
    # One query per (id, camera) seen, repeated or cut to the wanted number.
    pick = rng.choice(len(seen), size=num_q, replace=num_q > len(seen))
    q_pids, q_cams = np.asarray(seen)[pick].T.copy()  # contiguous rows, as torch.searchsorted wants

    gen = torch.Generator().manual_seed(seed)
    if kind not in ("trained", "random"):
        raise ValueError(f"kind must be 'trained' or 'random', not {kind!r}")
    # Id centres on the unit sphere; distractors and junk are other people: centres of their own.
    centres = torch.nn.functional.normalize(torch.randn(num_ids + 1, dim, generator=gen), dim=1)

    def features(pids: np.ndarray, block: int = 4096) -> torch.Tensor:
        # Block by block, in place: the features are the only large allocation (peak RSS is theirs).
        out = torch.empty(len(pids), dim)
        for s in range(0, len(pids), block):
            part = out[s:s + block]
            torch.randn(part.shape, generator=gen, out=part)
            p = torch.as_tensor(pids[s:s + block])
            if kind == "trained":
                # Per-image noise levels spread log-normally: most images easy, some hard.
                scale = TRAINED_NOISE[size] * torch.exp(0.35 * torch.randn(len(p), 1, generator=gen))
                part.mul_(torch.where(p[:, None] > 0, scale, torch.ones_like(scale)))
                part.add_(centres[p.clamp(min=0)] * (p[:, None] > 0))
            part.div_(part.norm(dim=1, keepdim=True))
        return out

    return features(q_pids), features(g_pids), q_pids, q_cams, g_pids, g_cams


def measure(size: str, kind: str, device: str, repeats: int, chunk_size: int) -> dict:
    """One measurement, in this process: best-of-`repeats` timings and peak memory."""
    qf, gf, q_pids, q_cams, g_pids, g_cams = make_problem(size, kind)
    dev = torch.device(device)
    qf, gf = qf.to(dev), gf.to(dev)
    features_mb = (qf.numel() + gf.numel()) * qf.element_size() / 2**20
    keep = torch.as_tensor(g_pids != -1, device=dev)
    gallery = gf[keep]  # what rank_metrics_from_features multiplies by, for the distances-only loop
    rss_before = proc_memory_mb("VmRSS")
    base_gpu = 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base_gpu = torch.cuda.memory_allocated(dev)

    totals, dists, metrics = [], [], {}
    for _ in range(repeats):  # interleaved, so that a busy spell of the machine hits both alike
        start = clock(dev)
        metrics = rank_metrics_from_features(qf, gf, q_pids, q_cams, g_pids, g_cams, chunk_size=chunk_size)
        totals.append(clock(dev) - start)
        if len(totals) == 1:  # the evaluation's peak, before the distances-only loop adds its own
            peak_rss = proc_memory_mb("VmHWM")
            peak_gpu = torch.cuda.max_memory_allocated(dev) - base_gpu if dev.type == "cuda" else None
        start = clock(dev)
        with torch.no_grad():
            for s in range(0, len(qf), chunk_size):
                pairwise_distance(qf[s:s + chunk_size], gallery)
        dists.append(clock(dev) - start)
    return {
        "size": size, "kind": kind, "device": str(dev), "queries": len(qf), "gallery": len(gf),
        "total_s": min(totals), "distances_s": min(dists),
        "ranking_s": max(min(totals) - min(dists), 0.0),  # noise can make the difference negative
        "all_totals_s": [round(x, 3) for x in totals], "features_mb": features_mb,
        **{m: metrics[m] for m in ("rank1", "mAP", "mINP")},
        **({} if peak_gpu is None else {"peak_gpu_mb": peak_gpu / 2**20}),
        "peak_rss_mb": peak_rss, "rss_before_eval_mb": rss_before}


def record(info: dict, rows: list[dict], command: str) -> dict:
    """This script's RESULTS.json record of one section: figures and table cells."""
    return {
        "title": f"Evaluation speed, {rows[0]['device'] if rows else 'cpu'}, {info.get('torch_threads')} "
                 "torch thread(s) (`benchmarks/eval_speed.py`)",
        "command": command, "machine": info, "rows": rows,
        "text": ["`rank_metrics_from_features` (mAP and mAP_finite), 1024-d L2-normalised features given; "
                 "total = distances (chunked matrix product) + exact ranking; best of the repeats (MSMT "
                 "size: at most two). Peak memory: the child's peak RSS on the CPU ('before' = RSS just "
                 "before the evaluation), the peak of `torch.cuda.max_memory_allocated` on a GPU."],
        "columns": ["problem", "features", "queries x gallery", "total (s)", "distances (s)", "ranking (s)",
                    "peak memory (MB)", "before (MB)", "features (MB)", "rank-1", "mAP"],
        "table": [[r["size"], r["kind"], f"{r['queries']:,} x {r['gallery']:,}", f"{r['total_s']:.2f}",
                   f"{r['distances_s']:.2f}", f"{r['ranking_s']:.2f}",
                   f"{r.get('peak_gpu_mb', r['peak_rss_mb']):,.0f}",
                   "-" if "peak_gpu_mb" in r or r["rss_before_eval_mb"] is None
                   else f"{r['rss_before_eval_mb']:,.0f}",
                   f"{r['features_mb']:,.0f}", f"{100 * r['rank1']:.1f}", f"{100 * r['mAP']:.1f}"]
                  for r in rows]}


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=["market", "msmt"], choices=sorted(SIZES))
    parser.add_argument("--kinds", nargs="+", default=["trained", "random"], choices=["trained", "random"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (MSMT size: at most 2)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "KIND"), help=argparse.SUPPRESS)
    args = common.parse(parser, argv, "eval_speed.py")
    if args.child:
        print(json.dumps(measure(*args.child, args.device, args.repeats, args.chunk_size)))
        return
    info, rows = common.machine(), []
    for size in args.sizes:
        for kind in args.kinds:  # each in a fresh interpreter, so that its peak RSS is its own
            repeats = args.repeats if size != "msmt" else min(args.repeats, 2)
            rows.append(common.run_child([__file__, "--child", size, kind, "--device", args.device,
                                          "--repeats", str(repeats), "--chunk-size", str(args.chunk_size),
                                          "--threads", str(args.threads)]))
            common.print_cells(record(info, rows[-1:], ""))
    info["load_average_end"] = common.load_average()
    if not args.no_write:  # a thread count of its own: its own section
        common.write_results(args.results, common.section_name("eval_speed", args.device, args.threads),
                             record(info, rows, args.command))


if __name__ == "__main__":
    main()
