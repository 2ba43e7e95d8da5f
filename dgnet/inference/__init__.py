"""Using a trained model: features of any images, ranked search, a generated dataset, ONNX export."""

from dgnet.inference.extract import FeatureExtractor, FeatureModel

__all__ = ["FeatureExtractor", "FeatureModel"]
