"""`dgnet export --format onnx`: the test-time feature as an ONNX graph, checked against PyTorch.

The graph is `FeatureModel`: normalised images (N, 3, H, W) float32 `images` -> flip-averaged
features (N, D) `features`, N dynamic. The TorchScript-based exporter (`dynamo=False`) needs only
`onnx` and takes ~2 s, where the torch.export one also needs onnxscript and took 10 s for the same
graph and differences (~3e-7). The parity check runs the file in onnxruntime on other batch sizes
than the traced one. The packages are optional (`pip install -e '.[onnx]'`).
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dgnet
from dgnet.errors import DgnetError
from dgnet.inference.extract import FeatureModel, feature_dim
from dgnet.io import atomic_path
from dgnet.models.persist import ModelInfo

TOLERANCE = 1e-4  # the largest |ONNX - PyTorch| accepted on a feature (issue 15)
OPSET = 17
CHECK_BATCH_SIZES = (1, 5)  # the export traces a batch of 2


def require(package: str, purpose: str) -> Any:
    """`import package`, or DgnetError naming it and the install command."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise DgnetError(
            f"{purpose} needs the Python package `{package}`, which is not installed: "
            f"pip install -e '.[onnx]' (or pip install {package})") from exc


def export_onnx(model: torch.nn.Module, info: ModelInfo, out: str | os.PathLike, *, opset: int = OPSET,
                tolerance: float = TOLERANCE, source: str | None = None) -> dict[str, Any]:
    """Write `model`'s feature graph to `out` (atomically, only when the parity check passes) and
    return a report: input and output names and shapes, opset and the max abs difference."""
    onnx = require("onnx", "dgnet export --format onnx")
    ort = require("onnxruntime", "the ONNX parity check")
    out, size = Path(out), (info.config.image_height, info.config.image_width)
    feature_model = FeatureModel(model).cpu().eval()
    example = torch.zeros(2, 3, *size)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(feature_model, (example,), str(tmp), input_names=["images"],
                              output_names=["features"], opset_version=opset, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        onnx.helper.set_model_props(graph, {
            "dgnet.kind": info.kind, "dgnet.version": dgnet.__version__, "dgnet.source": source or "",
            "dgnet.image_size": f"{size[0]}x{size[1]}",
            "dgnet.feature": "flip-averaged test-time feature, per-head L2-normalised; input "
                             "ImageNet-normalised RGB"})
        onnx.save(graph, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        generator, difference = torch.Generator().manual_seed(0), 0.0
        for n in CHECK_BATCH_SIZES:  # random normalised batches of sizes other than the traced one
            images = torch.randn(n, 3, *size, generator=generator)
            with torch.inference_mode():
                expected = feature_model(images).numpy()
            (got,) = session.run(["features"], {"images": images.numpy()})
            if got.shape != expected.shape:
                raise DgnetError(f"{out}: ONNX gives features of shape {got.shape} for a batch of {n}, "
                                  f"PyTorch {expected.shape}")
            difference = max(difference, float(np.abs(got - expected).max()))
        if not difference <= tolerance:  # also catches NaN
            raise DgnetError(f"{out}: the ONNX features differ from PyTorch's by up to {difference:.3g}, "
                              f"more than {tolerance:g}; nothing written")
    return {"path": str(out), "input": f"images (N, 3, {size[0]}, {size[1]}) float32",
            "output": f"features (N, {feature_dim(info.config, info.kind)}) float32", "opset": opset,
            "checked_batch_sizes": list(CHECK_BATCH_SIZES), "max_abs_diff": difference,
            "tolerance": tolerance}
