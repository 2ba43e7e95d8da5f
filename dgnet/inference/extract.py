"""Features of your own images from a trained model (torchreid's FeatureExtractor, for dgnet files).

    extractor = FeatureExtractor("outputs/dgnet/seed0/model.pt")   # or "models:/dgnet@current"
    features = extractor(["a.jpg", "b.jpg"])                 # (2, D): load, resize, normalise, embed
    features = extractor.features(batch)                     # a normalised (N, 3, H, W) float tensor

The feature is the evaluator's (dgnet.evaluation.features), the gallery-side one: a query's
fine-grained half is weighted afterwards (`scale_fine_half`). A `models:/` or `runs:/` URI is resolved
by the `dgnet.model_uris` entry-point plug-in (dgnet_pipeline.mlflow_model): dgnet never imports MLflow.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dgnet.data.transforms import image_to_tensor, load_image, normalize
from dgnet.errors import ConfigError, DataRuleError, DatasetError
from dgnet.evaluation.features import features_of_batch
from dgnet.io import atomic_path
from dgnet.models.config import ModelConfig
from dgnet.models.persist import ModelFileError, ModelInfo, load_model
from dgnet.training.runtime import select_device

MODEL_URI_GROUP = "dgnet.model_uris"
URI_SCHEMES = ("models", "runs")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_LISTED = 10  # offending files named in an error

ImageItem = str | os.PathLike | Image.Image


class FeatureModel(nn.Module):
    """Normalised images (N, 3, H, W) -> test-time features (N, D); what ONNX and MLflow serve."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = getattr(model, "appearance_encoder", model)  # the re-ID half of a DGNet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return features_of_batch(self.encoder, images, flip=True)


def feature_dim(config: ModelConfig, kind: str) -> int:
    """D of the test-time feature: both heads' embeddings for DG-Net, the one head's for a teacher."""
    return config.embedding_dim * (2 if kind == "dgnet" else 1)


def idle_cores() -> int:
    """The cores this process may run on that the 1-minute load average does not show busy, at least 1:
    torch's default (every core) on a busy machine makes its threads wait on each other (35 images/s
    instead of 140 with one thread on 2 busy cores, benchmarks/RESULTS.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - round(busy)))


def load_trained_model(ref: str | os.PathLike, device: str | torch.device = "cpu",
                       kind: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """The network of a model file or of a `models:/NAME@ALIAS` URI, in eval mode on `device`."""
    uri = str(ref)
    scheme = uri.split(":/", 1)[0]
    if scheme not in URI_SCHEMES or not uri.startswith(f"{scheme}:/"):
        return load_model(ref, map_location=device, kind=kind)
    found = [ep for ep in entry_points(group=MODEL_URI_GROUP) if ep.name == scheme]
    if not found:
        raise ModelFileError(
            f"{uri}: a {scheme}:/ URI is resolved through MLflow, and no resolver is installed here "
            "(the pipeline's install registers one: pip install -e '.[pipeline]'); pass the model file "
            "(model.pt) instead")
    with tempfile.TemporaryDirectory(prefix="dgnet-model-") as tmp:
        try:  # a torch-only machine: dgnet_pipeline is there, MLflow (imported on load or call) is not
            path = found[0].load()(uri, Path(tmp))
        except ImportError as exc:
            raise ModelFileError(f"{uri}: a {scheme}:/ URI needs MLflow, which cannot be imported here "
                                 f"({exc}); install it (pip install -e '.[pipeline]') or pass the model "
                                 "file (model.pt) instead") from exc
        return load_model(path, map_location=device, kind=kind)


def find_images(folder: str | os.PathLike, what: str = "--images") -> list[Path]:
    """Image files under `folder` (sub-folders too), sorted by relative path; DatasetError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{what} {folder}: folder does not exist")
    found = sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not found:
        raise DatasetError(f"{what} {folder}: no images in it or its sub-folders (looked for files ending "
                           f"in {', '.join(IMAGE_SUFFIXES)})")
    return found


def images_from_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a CSV with a `path` column (a dgnet manifest, or any list of images), `path`
    made absolute against the CSV's folder; DatasetError / DataRuleError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--manifest {path}: file does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"--manifest {path} cannot be read as CSV ({str(exc)[:200]})") from exc
    if "path" not in frame.columns:
        raise DatasetError(f"--manifest {path}: needs a `path` column (one image per row); "
                           f"columns are {list(frame.columns)}")
    if frame.empty:
        raise DatasetError(f"--manifest {path}: lists no images")
    base = path.parent.resolve()
    frame = frame.rename(columns={"path": "name"})
    frame.insert(1, "path", [p if os.path.isabs(p) else str(base / p) for p in frame["name"].astype(str)])
    missing = [p for p in frame["path"] if not os.path.isfile(p)]
    if missing:
        shown = "\n".join(f"    {p}" for p in missing[:MAX_LISTED])
        raise DataRuleError(f"rule files_exist: {len(missing)} image(s) listed in {path} do not exist:\n"
                            f"{shown}")
    return frame


def prepare_image(item: ImageItem, size: tuple[int, int]) -> torch.Tensor:
    """An image file or PIL image as a model of input size=(height, width) sees it: (3, H, W), RGB,
    resized bicubically (as in training) and ImageNet-normalised."""
    image = image_to_tensor(item, size) if isinstance(item, Image.Image) else load_image(str(item), size)
    return normalize(image)


def _prepared_batch(items: list[ImageItem], size: tuple[int, int]) -> torch.Tensor:
    return torch.stack([prepare_image(item, size) for item in items])


class FeatureExtractor:
    """A trained dgnet model (a model file, teacher or DG-Net, or a `models:/NAME@ALIAS` URI) turned
    into an image embedder; images of any size are prepared as `prepare_image` does."""

    def __init__(self, model: str | os.PathLike, device: str = "cpu", batch_size: int = 64,
                 num_workers: int = 0) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size}: must be >= 1")
        self.device = select_device(device)
        self.model, self.info = load_trained_model(model, self.device)
        self.kind = self.info.kind
        self.image_size = (self.info.config.image_height, self.info.config.image_width)
        self.dim = feature_dim(self.info.config, self.kind)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.feature_model = FeatureModel(self.model).eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features (N, D) on the CPU of a normalised (N, 3, H, W) batch at the model's input size."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
            raise ValueError(f"FeatureExtractor.features: expected (N, 3, {self.image_size[0]}, "
                             f"{self.image_size[1]}) normalised images, got {tuple(images.shape)}")
        with torch.inference_mode():
            return self.feature_model(images.to(self.device, torch.float32)).float().cpu()

    def load(self, item: ImageItem) -> torch.Tensor:
        return prepare_image(item, self.image_size)

    def __call__(self, inputs: ImageItem | Sequence[ImageItem] | torch.Tensor) -> torch.Tensor:
        """Features (N, D) of image files, PIL images, or an already normalised (N, 3, H, W) tensor."""
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() == 3:
                inputs = inputs.unsqueeze(0)
            return torch.cat([self.features(batch) for batch in inputs.split(self.batch_size)])
        items = [inputs] if isinstance(inputs, str | os.PathLike | Image.Image) else list(inputs)
        return self.extract(items)

    def extract(self, items: Sequence[ImageItem], show_progress: bool = False,
                desc: str = "extract") -> torch.Tensor:
        """Features (N, D) of `items`, in batches (a progress bar with `show_progress`)."""
        if len(items) == 0:
            raise ValueError("FeatureExtractor: no images given")
        loader = DataLoader(list(items), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=functools.partial(_prepared_batch, size=self.image_size))
        chunks = []
        with tqdm(total=len(items), desc=desc, disable=not show_progress, dynamic_ncols=True) as bar:
            for batch in loader:
                chunks.append(self.features(batch))
                bar.update(len(batch))
        return torch.cat(chunks)


def extract_to_file(extractor: FeatureExtractor, out: str | os.PathLike, *,
                    images: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None,
                    show_progress: bool = True) -> dict[str, Any]:
    """`dgnet extract`: features of a folder's images (names relative to it) or of a manifest's rows
    (its columns kept) as OUT.npy (float32, N x D) and the names as OUT.csv, each atomically;
    returns what was written and how fast."""
    if (images is None) == (manifest is None):
        raise ConfigError("extract: give exactly one of --images DIR and --manifest CSV")
    out = Path(out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out {out}: must end in .npy (the names are written beside it as .csv)")
    if images is not None:
        paths = find_images(images)
        names = pd.DataFrame({"name": [p.relative_to(images).as_posix() for p in paths],
                              "path": [str(p.resolve()) for p in paths]})
    else:
        names = images_from_manifest(manifest)
    start = time.perf_counter()
    features = extractor.extract(names["path"].tolist(), show_progress=show_progress)
    seconds = time.perf_counter() - start
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:  # np.save(path) would append .npy
        np.save(handle, features.numpy().astype(np.float32, copy=False))
    with atomic_path(out.with_suffix(".csv")) as tmp:
        names.to_csv(tmp, index=False)
    return {"features": out, "names": out.with_suffix(".csv"), "count": len(names),
            "dim": int(features.shape[1]), "seconds": seconds,
            "images_per_s": len(names) / max(seconds, 1e-9)}
