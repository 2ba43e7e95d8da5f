"""The test-time feature: 2 x embedding, per-half unit norm after flip averaging, query alpha, eval mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dgnet.evaluation.features import extract_features, scale_fine_half
from dgnet.models.dgnet import DGNet
from dgnet.models.teacher import ReidBaseline
from dgnet.profiles import get_profile


@pytest.fixture(scope="module")
def model() -> DGNet:
    torch.manual_seed(0)
    return DGNet(get_profile("tiny"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))


def test_feature_is_two_normalised_halves(model: DGNet, images: torch.Tensor) -> None:
    features = extract_features(model, images, batch_size=2)
    dim = model.cfg.embedding_dim
    assert features.shape == (5, 2 * dim)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.allclose(features[:, :dim].norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(features[:, dim:].norm(dim=1), torch.ones(5), atol=1e-5)


def test_flip_averaging_matches_the_definition(model: DGNet, images: torch.Tensor) -> None:
    encoder = model.appearance_encoder.eval()
    with torch.no_grad():
        out, out_flip = encoder(images), encoder(images.flip(3))
    halves = []
    for plain, flipped in ((out.primary_embedding, out_flip.primary_embedding),
                           (out.fine_embedding, out_flip.fine_embedding)):  # fmt: skip
        halves.append(F.normalize(F.normalize(plain, dim=1) + F.normalize(flipped, dim=1), dim=1))
    expected = torch.cat(halves, dim=1)
    assert torch.allclose(extract_features(model, images), expected, atol=1e-5)
    # Flip-averaged features are invariant to flipping the input.
    assert torch.allclose(extract_features(model, images.flip(3)), expected, atol=1e-5)
    no_flip = extract_features(model, images, flip=False)
    assert not torch.allclose(no_flip, expected, atol=1e-3)


def test_query_alpha_scales_the_fine_half_of_queries_only(model: DGNet, images: torch.Tensor) -> None:
    dim = model.cfg.embedding_dim
    gallery = extract_features(model, images)
    query = extract_features(model, images, query_alpha=0.5)
    assert torch.allclose(query[:, :dim], gallery[:, :dim])
    assert torch.allclose(query[:, dim:], 0.5 * gallery[:, dim:])
    assert torch.allclose(scale_fine_half(gallery, 0.5), query)
    # Similarity: dot product = primary cosine + alpha * fine cosine.
    sim = query @ gallery.T
    expected = gallery[:, :dim] @ gallery[:, :dim].T + 0.5 * gallery[:, dim:] @ gallery[:, dim:].T
    assert torch.allclose(sim, expected, atol=1e-5)


def test_eval_mode_is_forced_and_restored(model: DGNet, images: torch.Tensor) -> None:
    model.train()
    first = extract_features(model, images)
    second = extract_features(model, images)
    assert torch.equal(first, second)  # no dropout, running BN stats
    model.eval()
    assert torch.allclose(extract_features(model, images), first)
    model.train()
    extract_features(model, images)
    assert model.appearance_encoder.training  # mode restored


def test_loader_batches_and_single_head_models(model: DGNet, images: torch.Tensor) -> None:
    loader = DataLoader(TensorDataset(images, torch.arange(5)), batch_size=2)
    assert torch.allclose(extract_features(model, loader), extract_features(model, images), atol=1e-6)
    assert torch.allclose(
        extract_features(model.appearance_encoder, [{"image": images[:3]}, {"image": images[3:]}]),
        extract_features(model, images),
        atol=1e-6,
    )
    torch.manual_seed(0)
    teacher = ReidBaseline(get_profile("tiny"))
    features = extract_features(teacher, images)
    assert features.shape == (5, get_profile("tiny").embedding_dim)
    assert torch.allclose(features.norm(dim=1), torch.ones(5), atol=1e-5)
