"""Batch samplers whose batches are pure functions of (seed, iteration, rank).

No sampler state exists: iteration t's batch is drawn from a generator seeded with (seed, t), so
resuming at iteration t needs nothing but t, and under DDP all ranks draw the same global batch
and keep disjoint slices of it (disjoint identities for the DG-Net sampler).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dgnet.errors import DatasetError

# Augmentation seeds are drawn below this bound (fits torch.Generator.manual_seed and int64).
_SEED_BOUND = 2**62


@dataclass(frozen=True)
class Batch:
    """Row indices into the training frame and one augmentation seed per row."""

    indices: np.ndarray
    seeds: np.ndarray

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.indices.tolist(), self.seeds.tolist(), strict=True))


class IdentityPairSampler:
    """DG-Net batches: streams a and b of `batch_size` images each, all of distinct identities,
    plus one positive (another image of the same identity) for each image.

    Batch layout: [a (N), positives of a (N), b (N), positives of b (N)].
    """

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        labels = np.asarray(labels)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.ids = np.unique(labels)
        self.images_of = {int(i): np.flatnonzero(labels == i) for i in self.ids}
        needed = 2 * batch_size * world_size
        if len(self.ids) < 2:
            raise DatasetError(
                f"DG-Net training needs at least 2 identities; the training split has {len(self.ids)}"
            )
        # With fewer identities than slots, ids repeat across the batch (never between a_k and b_k).
        self.replace = len(self.ids) < needed

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        n, world = self.batch_size, self.world_size
        if self.replace:
            ids_a = rng.choice(self.ids, size=n * world, replace=True)
            shift = rng.integers(1, len(self.ids), size=n * world)
            ids_b = self.ids[(np.searchsorted(self.ids, ids_a) + shift) % len(self.ids)]
        else:
            chosen = rng.choice(self.ids, size=2 * n * world, replace=False)
            ids_a, ids_b = chosen[: n * world], chosen[n * world:]
        anchors, positives = {}, {}
        for stream, ids in (("a", ids_a), ("b", ids_b)):
            anchor, positive = [], []
            for i in ids:
                images = self.images_of[int(i)]
                pick = rng.permutation(len(images))[:2]
                anchor.append(images[pick[0]])
                positive.append(images[pick[-1]])  # the same image when the id has only one
            anchors[stream], positives[stream] = np.asarray(anchor), np.asarray(positive)
        seeds = rng.integers(0, _SEED_BOUND, size=(4, n * world))
        mine = slice(self.rank * n, (self.rank + 1) * n)
        indices = np.concatenate([anchors["a"][mine], positives["a"][mine], anchors["b"][mine],
                                  positives["b"][mine]])
        return Batch(indices, np.concatenate([s[mine] for s in seeds]))


class RandomImageSampler:
    """Plain id-loss batches (the teacher): `batch_size` random training images per rank."""

    def __init__(self, num_images: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_images < 1:
            raise DatasetError("the training split is empty")
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def batch(self, iteration: int) -> Batch:
        rng = np.random.default_rng([self.seed, iteration])
        total = self.batch_size * self.world_size
        indices = rng.choice(self.num_images, size=total, replace=total > self.num_images)
        seeds = rng.integers(0, _SEED_BOUND, size=total)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return Batch(indices[mine], seeds[mine])


class IterationBatchSampler:
    """Adapter for torch's DataLoader(batch_sampler=...): yields iterations [start, stop)."""

    def __init__(self, sampler: IdentityPairSampler | RandomImageSampler, start: int, stop: int):
        self.sampler, self.start, self.stop = sampler, start, stop

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.stop):
            yield self.sampler.batch(iteration).pairs()

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)
