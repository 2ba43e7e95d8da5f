"""How fast can E_s + the decoder learn to reconstruct on their own? The architecture's own pace.

    python scripts/calibrate_reconstruction.py [--iterations 600] [--beta1 0.9] \
        [--model-set decoder_widths=[64,32]] [--background-saturation 0] [--background-blur 2]

The calibration of docs/generator_diagnosis.md. It trains the profile's structure encoder and
decoder on one loss, self-reconstruction L1. The appearance code comes from the teacher's trunk,
frozen, so E_a does not learn. The optimiser is Adam at the params.yaml betas unless `--beta1` is
given. Every `--eval-every` iterations it prints recon L1 on [0, 1] over every other test image
(test, and train with `--train-too`).

This separates what the joint objective costs (compare `scripts/diagnose_generator.py`) from what
the architecture and the data allow. `--background-saturation` and `--background-blur` re-render
the default synthetic set with its camera scenes desaturated (0: grayscale) or defocused (Gaussian
sigma in pixels), into a temporary folder. They ask whether the scenes are what makes
reconstruction hard.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import dgnet.data.synthetic as synthetic
from dgnet.data.datasets import Augmentation, EvalImages, TrainImages
from dgnet.data.manifest import read_manifest
from dgnet.data.transforms import denormalize
from dgnet.evaluation.generation import image_l1
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model
from dgnet.profiles import apply_assignments, resolve_params
from dgnet_pipeline.common import load_params, repo_root, section
from dgnet_pipeline.workspace import model_config


def rendered_variant(out: Path, saturation: float, blur: float) -> Path:
    """The default synthetic set with every camera scene desaturated and/or blurred; its manifest.

    Same seed, so the same file names, people and poses: only the scenes' pixels differ.
    """
    plain = synthetic._scene.__wrapped__

    def scene(kind: str, scene_seed: int) -> tuple[np.ndarray, np.ndarray]:
        big, _ = plain(kind, scene_seed)
        gray = big.mean(axis=2, keepdims=True)
        big = gray + saturation * (big - gray)
        if blur > 0:
            big = synthetic._gaussian_blur(big.astype(np.float32), blur * synthetic.SS)
        big = big.astype(np.float32)
        small = synthetic._downsample(big).astype(np.float32)
        big.flags.writeable = small.flags.writeable = False
        return big, small

    synthetic._scene = functools.lru_cache(maxsize=64)(scene)
    try:
        synthetic.generate_dataset(out / "synthetic", seed=0)
    finally:
        synthetic._scene = functools.lru_cache(maxsize=64)(plain)
    shutil.copy(repo_root() / "data" / "manifest.csv", out / "manifest.csv")
    return out / "manifest.csv"


def stacked(frame: pd.DataFrame, size: tuple[int, int]) -> torch.Tensor:
    images = EvalImages(frame.reset_index(drop=True), size)
    return torch.stack([images[i]["image"] for i in range(0, len(images), 2)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta1", type=float, help="Adam beta1 (default: params.yaml train.adam_betas)")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--background-saturation", type=float, default=1.0)
    parser.add_argument("--background-blur", type=float, default=0.0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--train-too", action="store_true", help="also measure on train images")
    parser.add_argument("--teacher", type=Path, default=Path("outputs/teacher/seed0/model.pt"))
    args = parser.parse_args(argv)

    params = resolve_params(load_params(repo_root()))
    model_params = dict(section(params, "model"))
    model_params = apply_assignments(model_params, args.model_set, "model")
    betas = tuple(section(params, "train").get("adam_betas", (0.0, 0.999)))
    if args.beta1 is not None:
        betas = (args.beta1, betas[1])
    manifest = repo_root() / "data" / "manifest.csv"
    scratch = None
    if args.background_saturation != 1.0 or args.background_blur > 0:
        scratch = Path(tempfile.mkdtemp(prefix="dgnet-calibration-"))
        manifest = rendered_variant(scratch, args.background_saturation, args.background_blur)
    try:
        frame = read_manifest(manifest, "run `dvc repro validate` first")
        train = frame[frame["split"] == "train"]
        cfg = model_config({**params, "model": model_params}, frame)
        size = (cfg.image_height, cfg.image_width)
        test = stacked(frame[frame["split"].isin(["query", "gallery"]) & (frame["person_id"] > 0)], size)
        train_eval = stacked(train, size) if args.train_too else None

        torch.manual_seed(0)
        model = DGNet(cfg)
        teacher, _ = load_model(args.teacher)
        model.appearance_encoder.trunk.load_state_dict(teacher.trunk.state_dict())
        model.appearance_encoder.eval()
        images = TrainImages(train.reset_index(drop=True), size, Augmentation(erasing_p=0.0))
        trained = [*model.structure_encoder.parameters(), *model.decoder.parameters()]
        adam = torch.optim.Adam(trained, lr=args.lr, betas=betas, weight_decay=args.weight_decay)
        draw = torch.Generator().manual_seed(0)

        @torch.no_grad()
        def recon_l1(x: torch.Tensor) -> float:
            fake = model.decoder(model.structure_encoder(x), model.appearance_encoder(x).code)
            return round(image_l1(denormalize(fake), denormalize(x)), 4)

        start, curve = time.time(), {}
        for it in range(1, args.iterations + 1):
            rows = torch.randint(0, len(images), (args.batch_size,), generator=draw).tolist()
            x = torch.stack([images[(row, it * 1000 + row)]["image"] for row in rows])
            with torch.no_grad():
                code = model.appearance_encoder(x).code
            loss = (model.decoder(model.structure_encoder(x), code) - x).abs().mean()
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            if it % args.eval_every == 0 or it == args.iterations:
                curve[it] = {"test": recon_l1(test)}
                if train_eval is not None:
                    curve[it]["train"] = recon_l1(train_eval)
                print(f"iteration {it}: recon L1 {curve[it]}", file=sys.stderr)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"args": vars(args) | {"teacher": str(args.teacher)}, "betas": betas,
                      "seconds": round(time.time() - start), "recon_l1": curve}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
