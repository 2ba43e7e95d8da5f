"""A trivial re-ID baseline with no learning: HSV colour histograms of three horizontal stripes.

It is what a dataset's difficulty is measured with: if clothing colour alone finds the person, a
learnt model's rank-1 says little. Cosine similarity between L2-normalised, concatenated stripe
histograms; the same ranking protocol (junk rule, AP convention) as every model.
"""

from __future__ import annotations

import pandas as pd
import torch

from dgnet.data.datasets import EvalImages
from dgnet.data.transforms import denormalize
from dgnet.evaluation.evaluate import rank_test_splits

HSV_BINS = (8, 4, 4)  # hue, saturation, value
STRIPES = 3


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, each channel in [0, 1] (hue 0 for gray pixels)."""
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    chroma = value - images.min(1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    hue = hue.gather(1, argmax[:, None]).squeeze(1) / 6
    hue = torch.where(chroma > 0, hue, torch.zeros_like(hue))
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)),
                             torch.zeros_like(value))
    return torch.stack([hue, saturation, value], 1)


def stripe_histograms(images: torch.Tensor, bins: tuple[int, int, int] = HSV_BINS,
                      stripes: int = STRIPES) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, stripes * prod(bins)): each stripe's joint HSV histogram,
    as a fraction of its pixels, the whole vector L2-normalised."""
    hsv = rgb_to_hsv(images.float())
    index = torch.zeros_like(hsv[:, 0], dtype=torch.long)
    for channel, count in enumerate(bins):
        index = index * count + (hsv[:, channel] * count).long().clamp(0, count - 1)
    cells = bins[0] * bins[1] * bins[2]
    out = []
    for band in index.tensor_split(stripes, dim=1):  # top to bottom
        flat = band.flatten(1)
        hist = torch.zeros(len(flat), cells).scatter_add_(1, flat, torch.ones(flat.shape))
        out.append(hist / flat.shape[1])
    return torch.nn.functional.normalize(torch.cat(out, 1), dim=1)


def colour_histogram_reid(frame: pd.DataFrame, image_size: tuple[int, int]) -> dict[str, float]:
    """rank1, rank5, rank10, mAP, mAP_finite, mINP of the HSV stripe-histogram baseline on `frame`'s
    test splits."""

    def features_of(images: EvalImages, split: str) -> torch.Tensor:
        return stripe_histograms(denormalize(torch.stack([images[i]["image"] for i in range(len(images))])))

    return rank_test_splits(frame, image_size, features_of)
