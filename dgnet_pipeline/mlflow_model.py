"""A trained dgnet model as an MLflow model, and `models:/NAME@ALIAS` URIs for the dgnet commands.

The MLflow model folder (the run's `model/`, registered) holds the MLmodel (pyfunc flavour, loader
module this file), model.pt, config.json (the model card) and MLflow's environment files:
`mlflow.pyfunc.load_model("models:/dgnet@current").predict(images)` and `mlflow models serve
--env-manager local` (dgnet is not on PyPI) give `dgnet extract`'s features. `download_model` is the
`dgnet.model_uris` entry point through which dgnet takes `models:/` and `runs:/` URIs without MLflow.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dgnet.errors import ConfigError
from dgnet.models.persist import ModelFileError, ModelInfo, read_model_file

MODEL_FILE = "model.pt"
# What the pyfunc imports; dgnet itself is installed from its repository, not from PyPI.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pillow")


class FeaturePyfunc:
    """What `mlflow.pyfunc.load_model` wraps: images (N, 3, H, W) float32, normalised -> features (N, D)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        from dgnet.inference.extract import FeatureExtractor

        self.extractor = FeatureExtractor(Path(folder) / MODEL_FILE)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch
        from mlflow.exceptions import MlflowException

        images = np.asarray(model_input, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(images.reshape(len(images), -1)).all(axis=1))
        if len(bad):  # a NaN pixel would give a NaN feature row, answered with status 200
            raise MlflowException.invalid_parameter_value(
                f"input row(s) {bad[:10].tolist()} hold NaN or infinite values; send finite pixels")
        return self.extractor(torch.as_tensor(images)).numpy()


def _load_pyfunc(path: str) -> FeaturePyfunc:
    """MLflow's entry point into a loader module: `path` is the model folder."""
    return FeaturePyfunc(path)


def signature(info: ModelInfo) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from dgnet.inference.extract import feature_dim

    cfg = info.config
    return ModelSignature(
        # Unnamed: a request's "inputs" is then the array itself, as `dgnet extract` would be given it.
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, cfg.image_height, cfg.image_width))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feature_dim(cfg, info.kind)))]),
    )


def _requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def save_pyfunc_model(model_file: str | os.PathLike, folder: str | os.PathLike) -> ModelInfo:
    """The MLflow model folder of `model_file` in `folder` (new); ModelFileError for a non-dgnet file."""
    import mlflow.pyfunc

    _, info = read_model_file(model_file)
    with warnings.catch_warnings():
        # No input example: the signature says it all, and MLflow would load the model to check one.
        warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(folder), loader_module=__name__, signature=signature(info), pip_requirements=_requirements(),
            metadata={"dgnet.kind": info.kind, "dgnet.model_file": MODEL_FILE,
                      "dgnet.input": "ImageNet-normalised RGB at the model's input size",
                      "dgnet.output": "flip-averaged test-time feature, per-head L2-normalised"},
        )  # fmt: skip
    shutil.copy2(model_file, Path(folder) / MODEL_FILE)
    return info


def _store_uri(uri: str) -> str:
    from dgnet_pipeline.tracking import tracking_uri

    try:
        return tracking_uri()
    except ConfigError as exc:  # no params.yaml above the working directory
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return tracking_uri(Path.cwd())
        raise ModelFileError(f"{uri}: which MLflow store? Set MLFLOW_TRACKING_URI or run from the "
                             "repository (its mlflow.db)") from exc


def download_model(uri: str, dst: str | os.PathLike) -> Path:
    """The dgnet model file of a `models:/NAME@ALIAS` (or `runs:/RUN/model`) URI, downloaded into `dst`."""
    from dgnet_pipeline.tracking import connect, redact, short

    store = _store_uri(uri)
    connect(store)  # a dead server fails here in seconds, not after MLflow's minutes of retries
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=store,
                                                    registry_uri=store)
    except (MlflowException, OSError) as exc:
        raise ModelFileError(f"{uri}: cannot be fetched from the MLflow store {redact(store)} "
                             f"({short(exc)})") from exc
    path = Path(local) / MODEL_FILE if Path(local).is_dir() else Path(local)
    if not path.is_file():
        raise ModelFileError(f"{uri}: holds no {MODEL_FILE}; is it a dgnet model (registered by the "
                             "teacher or train stage)?")
    return path
