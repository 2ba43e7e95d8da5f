"""Using a trained model: features of any images, ranked search, a generated dataset, ONNX export."""

from typing import Any

__all__ = ["FeatureExtractor", "FeatureModel"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that the command line parses (and reports a bad option) before torch loads.
    if name in __all__:
        from dgnet.inference import extract

        return getattr(extract, name)
    raise AttributeError(f"module 'dgnet.inference' has no attribute {name!r}")
