"""scripts/swap_error_sources.py's masked scores: zero error and SSIM 1 for identical images, and
luma vs chroma kept apart (a pure brightness change is luma error only)."""

import importlib.util
from pathlib import Path

import torch

_SPEC = importlib.util.spec_from_file_location(
    "swap_error_sources", Path(__file__).resolve().parents[1] / "scripts" / "swap_error_sources.py")
swap_error_sources = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(swap_error_sources)


def test_identical_images_score_no_error() -> None:
    images = torch.rand(3, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(3, 32, 16, dtype=torch.bool)
    mask[:, 8:24, 4:12] = True
    scores = swap_error_sources.masked_scores(images, images, mask)
    assert scores["l1"] == scores["luma_l1"] == scores["chroma_l1"] == scores["mean_colour"] == 0.0
    assert scores["ssim"] == 1.0


def test_grey_shift_is_luma_error_only() -> None:
    images = torch.full((2, 3, 32, 16), 0.4)
    mask = torch.ones(2, 32, 16, dtype=torch.bool)
    scores = swap_error_sources.masked_scores(images + 0.2, images, mask)
    assert abs(scores["luma_l1"] - 0.2) < 1e-4 and scores["chroma_l1"] < 1e-4
    assert abs(scores["mean_colour"] - 0.2) < 1e-4
