"""dgnet: a reproducible implementation of DG-Net for person re-identification."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `dgnet.FeatureExtractor` without importing torch for every `import dgnet` (the CLI's start-up).
    if name == "FeatureExtractor":
        from dgnet.inference.extract import FeatureExtractor

        return FeatureExtractor
    raise AttributeError(f"module 'dgnet' has no attribute {name!r}")
