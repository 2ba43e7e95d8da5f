"""Batch samplers whose batches are pure functions of (seed, iteration, rank): a resume needs only the
iteration, and DDP ranks compute the same global batch and keep disjoint slices. DG-Net batches [a,
positives of a, b, positives of b] come from `ImagePairSampler` (published: a and b may share an id by
chance) or `IdentityPairSampler` (a and b always different people, as the cross-identity losses assume)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dgnet.errors import DatasetError

# Augmentation seeds are drawn below this bound (fits torch.Generator.manual_seed and int64).
_SEED_BOUND = 2**62

# ImagePairSampler's generator domains. numpy's SeedSequence pads short entropy with zeros, so
# default_rng([seed, t]) is default_rng([seed, t, 0]): the per-iteration draws carry a tag that no
# stream id (0 or 1) can take, so they never replay an epoch permutation's generator.
_STREAMS = (0, 1)
_PER_ITERATION = 2


@dataclass(frozen=True)
class Batch:
    """Row indices into the training frame and one augmentation seed per row."""

    indices: np.ndarray
    seeds: np.ndarray

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.indices.tolist(), self.seeds.tolist(), strict=True))


class _RankSampler:
    """What every sampler holds: a per-rank batch of `batch_size` out of a global one of N*W."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def _mine(self, rows: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """This rank's slice r*N .. (r+1)*N of each global stream in `rows`, concatenated."""
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return np.concatenate([r[mine] for r in rows])


class IdentityPairSampler(_RankSampler):
    """DG-Net batches, identity-uniform: streams a and b of `batch_size` images of distinct identities
    (disjoint across DDP ranks), each with a positive (another image of its identity)."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        labels = np.asarray(labels)
        self.ids = np.unique(labels)
        self.images_of = {int(i): np.flatnonzero(labels == i) for i in self.ids}
        if len(self.ids) < 2:
            raise DatasetError(
                f"DG-Net training needs at least 2 identities; the training split has {len(self.ids)}"
            )
        # With fewer identities than slots, ids repeat across the batch (never between a_k and b_k).
        self.replace = len(self.ids) < 2 * batch_size * world_size

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        total = self.batch_size * self.world_size
        if self.replace:
            ids_a = rng.choice(self.ids, size=total, replace=True)
            shift = rng.integers(1, len(self.ids), size=total)
            ids_b = self.ids[(np.searchsorted(self.ids, ids_a) + shift) % len(self.ids)]
        else:
            chosen = rng.choice(self.ids, size=2 * total, replace=False)
            ids_a, ids_b = chosen[:total], chosen[total:]
        rows = []
        for ids in (ids_a, ids_b):  # an anchor and a positive per id: the same image when it has only one
            pairs = [images[rng.permutation(len(images))[:2]]
                     for images in map(self.images_of.get, ids.tolist())]
            rows += [np.array([pair[0] for pair in pairs]), np.array([pair[-1] for pair in pairs])]
        return Batch(self._mine(rows), self._mine(rng.integers(0, _SEED_BOUND, size=(4, total))))


class ImagePairSampler(_RankSampler):
    """DG-Net batches as published: two independent image-uniform streams a and b. Epoch e of stream s
    is a permutation from default_rng([seed, s, e]); iteration t takes its positions t*N*W ..
    (t+1)*N*W - 1 (on into the next epoch across a boundary), so every image appears once per stream
    per epoch and W ranks of N see what one process of N*W would. Positives: another image of the id."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise DatasetError("the training split is empty")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        super().__init__(batch_size, seed, rank, world_size)
        self.num_images = len(labels)
        # Per image: where its identity's images start in `_by_label`, how many there are, and its
        # own place among them, so that positives are drawn vectorised.
        self._by_label = np.argsort(labels, kind="stable")
        _, first, counts = np.unique(labels[self._by_label], return_index=True, return_counts=True)
        group = np.repeat(np.arange(len(counts)), counts)
        self._start, self._count, self._within = (np.empty(len(labels), dtype=np.int64) for _ in range(3))
        self._start[self._by_label] = first[group]
        self._count[self._by_label] = counts[group]
        self._within[self._by_label] = np.arange(len(labels)) - first[group]

    def _stream(self, stream: int, iteration: int) -> np.ndarray:
        total = self.batch_size * self.world_size
        positions = np.arange(iteration * total, (iteration + 1) * total)
        epochs, offsets = np.divmod(positions, self.num_images)
        indices = np.empty(total, dtype=np.int64)
        for epoch in np.unique(epochs):  # one epoch, or two across a boundary (more if N*W > images)
            order = np.random.default_rng([self.seed, stream, int(epoch)]).permutation(self.num_images)
            here = epochs == epoch
            indices[here] = order[offsets[here]]
        return indices

    def _positives(self, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Another image of each anchor's identity, uniformly; the anchor itself when alone."""
        others = np.maximum(self._count[anchors] - 1, 1)
        pick = np.floor(rng.random(len(anchors)) * others).astype(np.int64)
        pick += pick >= self._within[anchors]  # skip the anchor's own place in its identity
        alone = self._count[anchors] == 1
        return np.where(alone, anchors, self._by_label[self._start[anchors] + np.where(alone, 0, pick)])

    def batch(self, iteration: int) -> Batch:
        a, b = (self._stream(s, iteration) for s in _STREAMS)
        rng = np.random.default_rng([self.seed, _PER_ITERATION, iteration])
        rows = [a, self._positives(a, rng), b, self._positives(b, rng)]
        return Batch(self._mine(rows), self._mine(rng.integers(0, _SEED_BOUND, size=(4, len(a)))))


class RandomImageSampler(_RankSampler):
    """Plain id-loss batches (the teacher): `batch_size` random training images per rank."""

    def __init__(self, num_images: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_images < 1:
            raise DatasetError("the training split is empty")
        super().__init__(batch_size, seed, rank, world_size)
        self.num_images = num_images

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        total = self.batch_size * self.world_size
        indices = rng.choice(self.num_images, size=total, replace=total > self.num_images)
        return Batch(self._mine([indices]), self._mine([rng.integers(0, _SEED_BOUND, size=total)]))


class IterationBatchSampler:
    """Adapter for torch's DataLoader(batch_sampler=...): yields iterations [start, stop)."""

    def __init__(self, sampler: _RankSampler, start: int, stop: int):
        self.sampler, self.start, self.stop = sampler, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.sampler.batch(iteration).pairs()

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)
