"""The test-time re-ID feature (docs/method.md section 5).

For DG-Net: each id head's post-BN embedding, L2-normalised, concatenated (primary half first,
fine-grained half second: 1024-d in the paper); summed with the horizontally flipped image's
feature and each half re-normalised. Queries weight the fine-grained half by `query_alpha` (0.5 in
the published numbers); gallery features are left as they are. Similarity is the dot product.
A single-head model (the teacher baseline) gives its one normalised embedding, flip-averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dgnet.models.appearance import AppearanceOutput


def _normalised_parts(output: Any) -> list[torch.Tensor]:
    """The L2-normalised embeddings of one forward: [primary, fine] for E_a, [embedding] for a baseline."""
    if isinstance(output, AppearanceOutput):
        parts = [output.primary_embedding, output.fine_embedding]
    elif isinstance(output, tuple | list) and len(output) == 2:  # (logits, embedding) of a ReidBaseline
        parts = [output[1]]
    else:
        raise TypeError(f"extract_features: cannot find embeddings in a {type(output).__name__} output")
    return [F.normalize(part.float(), dim=1) for part in parts]


def features_of_batch(encoder: nn.Module, images: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """Feature of one batch (the encoder must already be in eval mode): per-half normalised, flip-summed."""
    parts = _normalised_parts(encoder(images))
    if flip:
        flipped = _normalised_parts(encoder(images.flip(3)))
        parts = [F.normalize(p + q, dim=1) for p, q in zip(parts, flipped, strict=True)]
    return torch.cat(parts, dim=1)


def scale_fine_half(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Multiply the second (fine-grained) half of each feature by alpha: the query-side weighting."""
    half = features.shape[1] // 2
    return torch.cat([features[:, :half], alpha * features[:, half:]], dim=1)


def _images_of(batch: Any) -> torch.Tensor:
    """A batch's images: the batch itself, its "image" (a dict) or its first item (a tuple/list)."""
    if isinstance(batch, Mapping):
        return batch["image"]
    return batch[0] if isinstance(batch, tuple | list) else batch


def extract_features(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 128,
    flip: bool = True,
    query_alpha: float | None = None,
) -> torch.Tensor:
    """Features (N x D, float32, on the CPU) of every image of `data`, in eval mode (the model's mode
    is restored after). `model`: a DGNet, an AppearanceEncoder or a ReidBaseline. `data`: an
    (N, 3, H, W) tensor or an iterable of batches (see `_images_of`). `query_alpha`: for queries only.
    """
    encoder = getattr(model, "appearance_encoder", model)  # a DGNet's E_a gives the embeddings
    device = next(encoder.parameters()).device if device is None else device
    batches = data.split(batch_size) if isinstance(data, torch.Tensor) else map(_images_of, data)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            chunks = [features_of_batch(encoder, images.to(device), flip).cpu() for images in batches]
    finally:
        encoder.train(was_training)
    if not chunks:
        raise ValueError("extract_features: no images")
    features = torch.cat(chunks)
    return scale_fine_half(features, query_alpha) if query_alpha is not None else features
