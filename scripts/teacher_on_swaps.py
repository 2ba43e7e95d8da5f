"""What do the teacher's soft labels on generated images say? (primary feature learning's targets)

    python scripts/teacher_on_swaps.py --model DGNET.pt --teacher TEACHER.pt [--pairs 256]

Primary feature learning (L_prim) trains E_a to match the teacher's softmax on x_ij = G(s_j, a_i).
Those targets help only if the teacher recognises person i in x_ij. This decodes x_ij for random
training pairs of different people, in batches of the training batch size, and prints, for real x_i
and for x_ij, with the teacher's BatchNorm on batch statistics (published `train_bn`) and on running
statistics: how often the teacher's top class is i (appearance) or j (structure), the mean
probability it puts on i and on j, and its entropy; and the same for the trained E_a's primary head.
Reads data/manifest.csv of this checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dgnet.data.manifest import read_manifest
from dgnet.data.transforms import load_image, normalize
from dgnet.models.persist import load_model
from dgnet.training.loop import training_labels
from dgnet.training.trainer import load_teachers


def summary(probabilities: torch.Tensor, label_i: torch.Tensor, label_j: torch.Tensor) -> dict[str, float]:
    rows = torch.arange(len(label_i))
    top = probabilities.argmax(1)
    entropy = -(probabilities.clamp_min(1e-12).log() * probabilities).sum(1)
    return {"top1_is_i": float((top == label_i).float().mean()),
            "top1_is_j": float((top == label_j).float().mean()),
            "p_i": float(probabilities[rows, label_i].mean()),
            "p_j": float(probabilities[rows, label_j].mean()),
            "entropy": float(entropy.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    frame = read_manifest(root / "data/manifest.csv", "run `dvc repro validate`")
    label_map = training_labels(frame)
    model, _ = load_model(args.model, kind="dgnet")
    model.eval()
    cfg = model.cfg
    teacher = load_teachers([args.teacher], label_map, cfg, torch.device("cpu"))
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    rng = np.random.default_rng(args.seed)
    size = (cfg.image_height, cfg.image_width)
    results: dict[str, list[dict[str, float]]] = {}
    with torch.no_grad():
        for _ in range(args.pairs // args.batch_size):
            a = rng.choice(len(train), args.batch_size, replace=False)
            b = np.array([rng.choice(np.flatnonzero(train["person_id"] != train["person_id"][k])) for k in a])
            x_i, x_j = (torch.stack([normalize(load_image(str(root / "data" / p), size))
                                     for p in train["path"][rows]]) for rows in (a, b))
            label_i = torch.tensor([label_map[int(p)] for p in train["person_id"][a]])
            label_j = torch.tensor([label_map[int(p)] for p in train["person_id"][b]])
            appearance_i = model.appearance_encoder(x_i)
            x_ij = model.decode(model.structure_encoder(x_j), appearance_i.code)
            views = {"teacher, real x_i, batch statistics": teacher.soft_labels(x_i, batch_statistics=True),
                     "teacher, x_ij, batch statistics": teacher.soft_labels(x_ij, batch_statistics=True),
                     "teacher, x_ij, running statistics": teacher.soft_labels(x_ij, batch_statistics=False),
                     "E_a (eval), real x_i": appearance_i.primary_logits.softmax(1),
                     "E_a (eval), x_ij": model.appearance_encoder(x_ij).primary_logits.softmax(1)}
            for name, probabilities in views.items():
                results.setdefault(name, []).append(summary(probabilities, label_i, label_j))
    table = {name: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
             for name, rows in results.items()}
    print(json.dumps({"pairs": args.pairs // args.batch_size * args.batch_size,
                      "classes": len(label_map), "chance": round(1 / len(label_map), 4), **table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
