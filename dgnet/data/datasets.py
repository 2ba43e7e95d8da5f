"""torch Datasets over a manifest DataFrame (see dgnet.data.manifest)."""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from dgnet.config import Augmentation
from dgnet.data.transforms import load_image, normalize, pad_random_crop, random_erasing, random_flip


class EvalImages(Dataset):
    """Query or gallery images, no augmentation: `image`, `person_id`, `camera`, `index`."""

    def __init__(self, frame: pd.DataFrame, size: tuple[int, int]):
        self.paths = frame["path"].tolist()
        self.person_ids = torch.tensor(frame["person_id"].to_numpy(), dtype=torch.long)
        self.cameras = torch.tensor(frame["camera_id"].to_numpy(), dtype=torch.long)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": normalize(load_image(self.paths[index], self.size)),
                "person_id": self.person_ids[index], "camera": self.cameras[index], "index": index}


class TrainImages(EvalImages):
    """Training images keyed by a sampler's (row, augmentation seed): `image` (flip, pad/crop), `label`,
    `camera`, and `image_erased` (randomly erased as well, for the identity losses only)."""

    def __init__(self, frame: pd.DataFrame, size: tuple[int, int], augmentation: Augmentation | None = None):
        frame = frame[frame["split"] == "train"]
        super().__init__(frame, size)
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.long)
        self.augmentation = augmentation or Augmentation()

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        generator = torch.Generator().manual_seed(int(seed))
        image = load_image(self.paths[index], self.size)
        aug = self.augmentation
        if aug.flip:
            image = random_flip(image, generator)
        image = normalize(pad_random_crop(image, generator, aug.padding))
        erased = random_erasing(image, generator, p=aug.erasing_p)
        return {"image": image, "image_erased": erased, "label": self.labels[index],
                "camera": self.cameras[index]}

