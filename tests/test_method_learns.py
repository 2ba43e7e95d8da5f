"""Slow tier: a short deterministic CPU training of the generator really learns.

Not a smoke test: self-reconstruction on held-out test images must end well below what a generator
that learnt nothing scores (the mean training image), and below where it started.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dgnet.data.datasets import EvalImages
from dgnet.data.manifest import build_manifest
from dgnet.data.synthetic import generate_dataset
from dgnet.data.transforms import denormalize
from dgnet.evaluation.generation import image_l1, mean_image, mean_image_l1
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model
from dgnet.profiles import get_profile
from dgnet.training.schedule import ScheduleConfig
from dgnet.training.trainer import DGNetTrainConfig, train_dgnet

pytestmark = pytest.mark.slow


def load(frame, splits: tuple[str, ...], size: tuple[int, int]) -> torch.Tensor:
    rows = frame[frame["split"].isin(splits) & (frame["person_id"] > 0)].reset_index(drop=True)
    images = EvalImages(rows, size)
    return torch.stack([images[i]["image"] for i in range(len(images))])


@torch.no_grad()
def recon_l1(model: DGNet, images: torch.Tensor) -> float:
    model.eval()
    return image_l1(denormalize(model(images)), denormalize(images))


def test_short_training_reconstructs_well_below_the_mean_image(tmp_path) -> None:
    torch.set_num_threads(1)  # deterministic, and no thread contention on a 2-core CI machine
    root = tmp_path / "data"
    generate_dataset(root, seed=0, num_ids=24, num_cameras=3)
    frame = build_manifest(root)
    model_cfg = get_profile("cpu", pretrained=False)
    size = (model_cfg.image_height, model_cfg.image_width)
    test = load(frame, ("query", "gallery"), size)
    mean = mean_image([denormalize(load(frame, ("train",), size))])
    baseline = mean_image_l1(mean, denormalize(test))

    # The generator alone learns here (warm-up past the run: no teacher, no cycle, no re-ID on fakes).
    cfg = DGNetTrainConfig(iterations=150, batch_size=4, lr_generator=1e-3, log_every=50, eval_every=0,
                           image_every=0, checkpoint_every=0, num_workers=0, device="cpu",
                           deterministic=True, schedule=ScheduleConfig(warmup_start=10**9))
    torch.manual_seed(cfg.seed)
    untrained = DGNet(dataclasses.replace(model_cfg, num_classes=12))
    before = recon_l1(untrained, test)
    result = train_dgnet(frame, model_cfg, cfg, [], tmp_path / "run")
    model, _ = load_model(result.model_path)
    after = recon_l1(model, test)
    print(f"\nself-reconstruction L1 on {len(test)} test images: untrained {before:.3f}, after "
          f"{cfg.iterations} iterations {after:.3f}; mean training image {baseline:.3f}")
    # Measured: untrained 0.194, trained 0.103, mean image 0.160 (deterministic on one thread).
    assert after < 0.7 * baseline
    assert after < 0.6 * before
