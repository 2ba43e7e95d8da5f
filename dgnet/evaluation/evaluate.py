"""Re-ID evaluation of a model on a manifest's query and gallery splits (docs/method.md section 5)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dgnet.data.datasets import EvalImages
from dgnet.errors import DatasetError
from dgnet.evaluation.features import extract_features
from dgnet.evaluation.rank import rank_metrics_from_features, scalar_metrics


def has_eval_splits(frame: pd.DataFrame) -> bool:
    """True when the manifest has both query and gallery images."""
    return {"query", "gallery"} <= set(frame["split"].unique())


def evaluate_reid(
    model: nn.Module,
    frame: pd.DataFrame,
    image_size: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    query_alpha: float | None = None,
    num_workers: int = 0,
) -> dict[str, float]:
    """rank1, rank5, rank10, mAP, mAP_finite, mINP (fractions) and query counts of `model` (a DGNet,
    its appearance encoder or a ReidBaseline) on `frame`'s test splits. `query_alpha` weights the
    queries' fine-grained half (0.5 in the published numbers; ignored for a single-head model)."""
    # DG-Net's E_a has a primary and a fine-grained head; the teacher baseline has one.
    two_headed = hasattr(getattr(model, "appearance_encoder", model), "fine_head")

    def features_of(images: EvalImages, split: str) -> torch.Tensor:
        loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=torch.device(device).type == "cuda")
        alpha = query_alpha if two_headed and split == "query" else None
        return extract_features(model, loader, device=device, query_alpha=alpha)

    return rank_test_splits(frame, image_size, features_of)


def query_and_gallery(frame: pd.DataFrame, image_size: tuple[int, int]) -> tuple[EvalImages, EvalImages]:
    """The query and gallery images of `frame`."""
    if not has_eval_splits(frame):
        raise DatasetError("evaluation: the manifest has no query and gallery images (split column)")
    return EvalImages(frame[frame["split"] == "query"], image_size), \
        EvalImages(frame[frame["split"] == "gallery"], image_size)


def rank_test_splits(
    frame: pd.DataFrame,
    image_size: tuple[int, int],
    features_of: Callable[[EvalImages, str], torch.Tensor],
) -> dict[str, float]:
    """`evaluate_reid`'s metrics of the features that `features_of(images, split)` gives for `frame`'s
    query and gallery images."""
    query, gallery = query_and_gallery(frame, image_size)
    features = features_of(query, "query"), features_of(gallery, "gallery")
    return scalar_metrics(rank_metrics_from_features(*features, query.person_ids, query.cameras,
                                                     gallery.person_ids, gallery.cameras))
