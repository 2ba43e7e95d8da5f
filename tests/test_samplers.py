"""Samplers and transforms: batches and augmentation are pure functions of (seed, iteration)."""

import numpy as np
import pytest
import torch

from dgnet.data.samplers import (
    IdentityPairSampler,
    ImagePairSampler,
    IterationBatchSampler,
    RandomImageSampler,
)
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


def _streams(sampler: ImagePairSampler, iterations: range) -> tuple[np.ndarray, np.ndarray]:
    """Anchors of streams a and b over `iterations`, in order."""
    parts = [np.split(sampler.batch(t).indices, 4) for t in iterations]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[2] for p in parts])


def test_image_pair_layout_and_positives():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    sampler = ImagePairSampler(labels, batch_size=6, seed=1)
    for t in range(20):
        batch = sampler.batch(t)
        assert batch.indices.shape == (24,) and batch.seeds.shape == (24,)
        a, pos_a, b, pos_b = np.split(batch.indices, 4)
        for anchor, positive in ((a, pos_a), (b, pos_b)):
            assert (labels[anchor] == labels[positive]).all()
            alone = np.bincount(labels)[labels[anchor]] == 1
            assert (positive[alone] == anchor[alone]).all(), "an only image is its own positive"
            assert (positive[~alone] != anchor[~alone]).all(), "otherwise another image"


def test_image_pair_every_image_once_per_stream_per_epoch():
    labels = _labels(num_ids=7, per_id=3)  # 21 images, batches of 4: epochs end mid-batch
    sampler = ImagePairSampler(labels, batch_size=4, seed=5)
    iterations = -(-2 * len(labels) // 4)  # ceil: two whole epochs
    for stream in _streams(sampler, range(iterations)):
        for epoch in range(2):
            walk = stream[epoch * len(labels):(epoch + 1) * len(labels)]
            assert sorted(walk.tolist()) == list(range(len(labels)))
    a, _ = _streams(sampler, range(iterations))
    assert not np.array_equal(a[:21], a[21:42]), "each epoch reshuffles"


def test_image_pair_is_stateless():
    labels = _labels()
    first, second = ImagePairSampler(labels, 4, seed=3), ImagePairSampler(labels, 4, seed=3)
    forward = [first.batch(t) for t in range(30)]
    backward = [second.batch(t) for t in reversed(range(30))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert np.array_equal(x.indices, y.indices) and np.array_equal(x.seeds, y.seeds)
    assert not np.array_equal(first.batch(5).indices, first.batch(6).indices)
    assert not np.array_equal(first.batch(5).indices, ImagePairSampler(labels, 4, seed=4).batch(5).indices)
    resumed = list(IterationBatchSampler(second, 3, 6))
    assert resumed == list(IterationBatchSampler(first, 0, 6))[3:]


def test_image_pair_ranks_split_the_single_process_batch():
    labels = _labels(num_ids=9, per_id=5)  # 45 images, global batch 12: epochs end mid-batch
    single = ImagePairSampler(labels, 12, seed=2)
    ranks = [ImagePairSampler(labels, 4, seed=2, rank=r, world_size=3) for r in range(3)]
    for t in range(8):
        mine = [r.batch(t) for r in ranks]
        expected = single.batch(t)
        for row in range(4):  # each row of the layout is the ranks' slices, in rank order
            joined = np.concatenate([np.split(b.indices, 4)[row] for b in mine])
            assert np.array_equal(joined, np.split(expected.indices, 4)[row])
            joined_seeds = np.concatenate([np.split(b.seeds, 4)[row] for b in mine])
            assert np.array_equal(joined_seeds, np.split(expected.seeds, 4)[row])
        epochs = np.arange(t * 12, (t + 1) * 12) // len(labels)
        for row in (0, 2):  # streams a and b: no image twice within an epoch, across all ranks
            anchors = np.split(expected.indices, 4)[row]
            assert all(len(set(anchors[epochs == e])) == (epochs == e).sum() for e in set(epochs))
            if len(set(epochs)) == 1:
                per_rank = [set(np.split(b.indices, 4)[row].tolist()) for b in mine]
                assert len(set.union(*per_rank)) == sum(map(len, per_rank)) == 12, "ranks disjoint"


def test_image_pair_streams_differ():
    labels = _labels()
    a, b = _streams(ImagePairSampler(labels, 8, seed=0), range(10))
    assert not np.array_equal(a, b)
    assert (a != b).mean() > 0.8


def test_image_pair_is_image_uniform():
    labels = np.concatenate([np.zeros(50, dtype=int), np.repeat(np.arange(1, 11), 10)])  # id 0: 5x images
    a, b = _streams(ImagePairSampler(labels, 16, seed=0), range(100))
    counts = np.bincount(labels[np.concatenate([a, b])])
    assert 4.5 < counts[0] / counts[1:].mean() < 5.5
    first = _streams(ImagePairSampler(labels, 16, seed=0), range(3))[0][:40]
    assert 0.2 < (labels[first] == 0).mean() < 0.8, "not identity-uniform even within a few batches"


def test_image_pair_empty_split_is_an_error():
    with pytest.raises(DatasetError, match="empty"):
        ImagePairSampler(np.zeros(0, dtype=int), 2, seed=0)


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
