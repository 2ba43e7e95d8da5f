"""Why does (or doesn't) the generator learn? Train DG-Net once and look inside it.

    python scripts/diagnose_generator.py --out /tmp/diag [--iterations 600] [--set lr_generator=0.002 ...]

Trains the params.yaml `train` section (with `--set` overrides, values in YAML syntax) on
data/manifest.csv with the teacher of the teacher stage, through the same `train_dgnet` as the
pipeline, and writes to --out:
- losses.csv: every logged loss and weight per iteration (the loss curves);
- probes.json: at initialisation and at the end: the AdaIN scales and biases the mapping gives on
  real images (mean, std, mean |.|), the decoder's output range against the input's, and each loss
  term's gradient norm per module group at the final iteration's weights (which loss drives which
  network, and how hard);
- the test-set generation figures of `benchmark_model` beside their trivial baselines (mean image,
  blur, copy-structure, copy-appearance).
It needs the MLOps packages only for reading params.yaml the way the stage does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dgnet.data.datasets import TrainImages
from dgnet.data.manifest import read_manifest
from dgnet.evaluation.benchmark import benchmark_model
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model
from dgnet.profiles import apply_assignments, resolve_params, run_config
from dgnet.training.hooks import TrainingHooks
from dgnet.training.loop import training_labels
from dgnet.training.objective import DGNetBatch, generator_objective
from dgnet.training.schedule import LossWeights, loss_weights_at
from dgnet.training.trainer import DGNetTrainConfig, load_teachers, train_dgnet
from dgnet_pipeline.common import load_params, repo_root, section
from dgnet_pipeline.workspace import model_config


class LossLog(TrainingHooks):
    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_iteration(self, iteration: int, logs: dict[str, float]) -> None:
        self.rows.append({"iteration": iteration, **logs})


def module_groups(model: DGNet) -> dict[str, list[torch.nn.Parameter]]:
    encoder = model.appearance_encoder
    return {"structure_encoder": list(model.structure_encoder.parameters()),
            "decoder": model.decoder.body_parameters(), "mapping": list(model.decoder.mapping.parameters()),
            "trunk": list(encoder.trunk.parameters()),
            "id_heads": [*encoder.primary_head.parameters(), *encoder.fine_head.parameters()]}


def probe_batch(frame: pd.DataFrame, size: tuple[int, int], n: int, seed: int) -> DGNetBatch:
    """A fixed batch of n (a, b) pairs of different people, positives, no augmentation."""
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    images = TrainImages(train, size, dataclasses.replace(DGNetTrainConfig().augmentation, flip=False,
                                                          padding=0, erasing_p=0.0))
    g = torch.Generator().manual_seed(seed)
    labels = images.labels
    a_idx = torch.randperm(len(images), generator=g)[:n]
    b_idx = torch.tensor([int(torch.nonzero(labels != labels[i])[0]) for i in a_idx.tolist()])

    def positive(i: int) -> int:
        same = torch.nonzero(labels == labels[i]).flatten().tolist()
        return next((j for j in same if j != i), i)

    def stack(indices: list[int]) -> torch.Tensor:
        return torch.stack([images[(i, 0)]["image"] for i in indices])

    a, b = a_idx.tolist(), b_idx.tolist()
    return DGNetBatch(stack(a), labels[a_idx], stack(b), labels[b_idx], stack([positive(i) for i in a]),
                      stack([positive(i) for i in b]))


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """sqrt(sum ||grad||^2) over the parameters that have a gradient (0 when none has)."""
    return sum(float(p.grad.float().pow(2).sum()) for p in params if p.grad is not None) ** 0.5


def term_gradients(model: DGNet, teacher: Any, batch: DGNetBatch, weights: LossWeights) -> dict[str, Any]:
    """Each loss term alone, at its weight: the gradient norm it puts on each module group."""
    out = {}
    fields = [f.name for f in dataclasses.fields(LossWeights)]
    for term in fields:
        weight = getattr(weights, term)
        if weight == 0:
            continue
        alone = LossWeights(**{name: (weight if name == term else 0.0) for name in fields})
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        total, _ = generator_objective(model, teacher, batch, alone, reencode_structure=False)
        if not total.requires_grad:
            continue
        total.backward()
        out[term] = {name: round(grad_norm(params), 5) for name, params in module_groups(model).items()}
    model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def adain_and_range(model: DGNet, batch: DGNetBatch) -> dict[str, Any]:
    was = model.training
    model.eval()
    structure, appearance = model.encode(batch.a)
    params = model.decoder.mapping(appearance.code)
    out: dict[str, Any] = {}
    for k, (scales, biases) in enumerate(params):
        out[f"block{k}"] = {"scale_mean": float(scales.mean()), "scale_std": float(scales.std()),
                            "scale_abs": float(scales.abs().mean()), "bias_mean": float(biases.mean()),
                            "bias_std": float(biases.std()),
                            # how much the scales vary between people (what carries appearance)
                            "scale_std_across_images": float(scales.std(0).mean())}
    recon = model.decode(structure, appearance.code)
    out["output"] = {"min": float(recon.min()), "max": float(recon.max()), "mean": float(recon.mean()),
                     "std": float(recon.std())}
    out["input"] = {"min": float(batch.a.min()), "max": float(batch.a.max()), "mean": float(batch.a.mean()),
                    "std": float(batch.a.std())}
    out["structure_code"] = {"mean_abs": float(structure.abs().mean()), "std": float(structure.std())}
    model.train(was)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                        help="model profile overrides, e.g. decoder_widths=[64,32]")
    parser.add_argument("--teacher", type=Path, default=Path("outputs/teacher/seed0/model.pt"))
    args = parser.parse_args(argv)
    root = repo_root()
    params = resolve_params(load_params(root))
    values = section(params, "train")
    if args.iterations:
        values = {**values, "iterations": args.iterations}
    values = apply_assignments(values, args.assignments, "train")
    cfg = run_config({**params, "train": values}, "train")  # the stage keys (seeds, teachers) set aside
    frame = read_manifest(root / "data/manifest.csv", "run `dvc repro validate`")
    model_params = dict(params["model"])
    model_params = apply_assignments(model_params, args.model_set, "model")
    model_cfg = model_config({**params, "model": model_params}, frame)
    args.out.mkdir(parents=True, exist_ok=True)
    size = (model_cfg.image_height, model_cfg.image_width)
    batch = probe_batch(frame, size, cfg.batch_size, seed=1)
    label_map = training_labels(frame)
    model_cfg = dataclasses.replace(model_cfg, num_classes=len(label_map))
    teacher = load_teachers([root / args.teacher], label_map, model_cfg, torch.device("cpu"))
    weights = loss_weights_at(cfg.iterations - 1, cfg.schedule)

    torch.manual_seed(cfg.seed)
    initial = DGNet(model_cfg).train()
    if cfg.init_appearance_from_teacher:
        from dgnet.training.trainer import init_from_teacher
        init_from_teacher(initial, teacher)
    probes: dict[str, Any] = {"config": {"train": values, "model": model_params},
                              "init": {"adain": adain_and_range(initial, batch),
                                       "gradients": term_gradients(initial, teacher, batch, weights)}}
    log = LossLog()
    started = time.monotonic()
    result = train_dgnet(frame, model_cfg, cfg, [root / args.teacher], args.out / "run", hooks=[log],
                         resume=False)
    probes["train_seconds"] = round(time.monotonic() - started, 1)
    pd.DataFrame(log.rows).to_csv(args.out / "losses.csv", index=False)
    model, _ = load_model(result.model_path)
    model.train()
    probes["final"] = {"adain": adain_and_range(model, batch),
                       "gradients": term_gradients(model, teacher, batch, weights)}
    bench = benchmark_model(result.model_path, frame, name="dgnet", alphas=(0.5,),
                            data_root=root / "data/synthetic",
                            num_swaps=512)
    probes["reid"] = bench.reid
    probes["generation"] = bench.generation
    bench.pictures["swap_grid"].save(args.out / "swap_grid.png")
    (args.out / "probes.json").write_text(json.dumps(probes, indent=1, default=str))
    gen = bench.generation
    print(json.dumps({"train_seconds": probes["train_seconds"], "reid": bench.reid["alpha_0.5"],
                      **{k: v for k, v in gen.items() if "recon" in k or "swap_l1_person" in k or
                         "swap_ssim_person" in k or k == "baselines"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
