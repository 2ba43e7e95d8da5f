"""Samplers and transforms: batches and augmentation are pure functions of (seed, iteration)."""

import numpy as np
import pytest
import torch

from dgnet.data.samplers import IdentityPairSampler, IterationBatchSampler, RandomImageSampler
from dgnet.data.transforms import denormalize, normalize, pad_random_crop, random_erasing, random_flip
from dgnet.errors import DatasetError


def _labels(num_ids: int = 20, per_id: int = 4) -> np.ndarray:
    return np.repeat(np.arange(num_ids), per_id)


def test_pair_batch_layout_and_identities():
    labels = _labels()
    batch = IdentityPairSampler(labels, batch_size=4, seed=1).batch(7)
    a, pos_a, b, pos_b = np.split(labels[batch.indices], 4)
    assert (a == pos_a).all() and (b == pos_b).all()
    assert len(set(a) | set(b)) == 8, "streams a and b hold 8 distinct identities"
    anchors, positives = np.split(batch.indices, 2 * 2)[0::2], np.split(batch.indices, 4)[1::2]
    assert all((x != y).all() for x, y in zip(anchors, positives, strict=True)), "positive = other image"


def test_batches_depend_only_on_seed_and_iteration():
    labels = _labels()
    first = IdentityPairSampler(labels, 4, seed=3)
    second = IdentityPairSampler(labels, 4, seed=3)
    assert np.array_equal(first.batch(5).indices, second.batch(5).indices)
    assert np.array_equal(first.batch(5).seeds, second.batch(5).seeds)
    assert not np.array_equal(first.batch(5).indices, first.batch(6).indices)
    resumed = [b for b in IterationBatchSampler(second, 3, 6)]
    straight = [b for b in IterationBatchSampler(first, 0, 6)][3:]
    assert resumed == straight


def test_ranks_get_disjoint_identities_that_cover_the_global_batch():
    labels = _labels(num_ids=40)
    ranks = [IdentityPairSampler(labels, 4, seed=0, rank=r, world_size=2).batch(11) for r in range(2)]
    ids = [set(labels[b.indices]) for b in ranks]
    assert not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == 16


def test_few_identities_repeat_but_a_and_b_differ():
    labels = _labels(num_ids=3)
    batch = IdentityPairSampler(labels, 8, seed=0).batch(0)
    a, _, b, _ = np.split(labels[batch.indices], 4)
    assert (a != b).all()


def test_single_identity_is_an_error():
    with pytest.raises(DatasetError, match="at least 2 identities"):
        IdentityPairSampler(np.zeros(5, dtype=int), 2, seed=0)


def test_random_image_sampler_ranks_partition():
    sampler = [RandomImageSampler(100, 8, seed=2, rank=r, world_size=2) for r in range(2)]
    both = np.concatenate([s.batch(4).indices for s in sampler])
    assert len(set(both.tolist())) == 16
    assert np.array_equal(sampler[0].batch(4).indices, RandomImageSampler(100, 8, 2, 0, 2).batch(4).indices)


def test_transforms_are_deterministic_for_a_seed():
    image = torch.rand(3, 32, 16)

    def augment(seed):
        generator = torch.Generator().manual_seed(seed)
        out = pad_random_crop(random_flip(image, generator), generator, 4)
        return random_erasing(normalize(out), generator, p=1.0)

    assert torch.equal(augment(5), augment(5))
    assert not torch.equal(augment(5), augment(6))
    assert augment(5).shape == image.shape


def test_random_erasing_leaves_input_and_fills_with_mean():
    image = torch.ones(3, 40, 20)
    erased = random_erasing(image, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(image, torch.ones(3, 40, 20))
    zeros = (erased == 0).all(dim=0)
    assert 0 < zeros.float().mean() <= 0.45


def test_normalize_roundtrip():
    image = torch.rand(3, 8, 4)
    assert torch.allclose(denormalize(normalize(image)), image, atol=1e-6)
