"""The colour-histogram re-ID baseline: HSV conversion, stripe histograms, ranking."""

from __future__ import annotations

import colorsys

import pandas as pd
import pytest
import torch
from PIL import Image

from dgnet.evaluation.handcrafted import (
    HSV_BINS,
    STRIPES,
    colour_histogram_reid,
    rgb_to_hsv,
    stripe_histograms,
)


def test_rgb_to_hsv_matches_colorsys():
    pixels = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    pixels[0, :, 0, 0] = 0.5  # a gray pixel: hue and saturation 0
    hsv = rgb_to_hsv(pixels)
    for y in range(5):
        for x in range(7):
            expected = colorsys.rgb_to_hsv(*pixels[0, :, y, x].tolist())
            assert hsv[0, :, y, x].tolist() == pytest.approx(expected, abs=1e-5)


def test_stripe_histograms_count_each_stripe_separately():
    top_red = torch.zeros(2, 3, 6, 4)
    top_red[0, 0, :2] = 1.0  # image 0: red top stripe, black below
    top_red[1, 0, 4:] = 1.0  # image 1: red bottom stripe: same colours, other place
    hist = stripe_histograms(top_red)
    cells = HSV_BINS[0] * HSV_BINS[1] * HSV_BINS[2]
    assert hist.shape == (2, STRIPES * cells)
    assert torch.allclose(hist.norm(dim=1), torch.ones(2))
    assert float(hist[0] @ hist[1]) < 0.99  # where the colour is matters
    assert float(hist[0] @ hist[0]) == pytest.approx(1.0)


def test_colour_histogram_reid_finds_a_person_by_colour(tmp_path):
    colours = {1: (200, 30, 30), 2: (30, 200, 30), 3: (30, 30, 200)}
    rows = []
    for pid, rgb in colours.items():
        for camera, split in ((1, "query"), (2, "gallery")):
            path = tmp_path / f"{pid}_{camera}.png"
            Image.new("RGB", (16, 32), rgb).save(path)
            rows.append({"path": str(path), "split": split, "person_id": pid, "camera_id": camera})
    metrics = colour_histogram_reid(pd.DataFrame(rows), (32, 16))
    assert metrics["rank1"] == 1.0 and metrics["mAP"] == 1.0
