"""Using a trained model: features of any images, ranked search, a generated dataset, ONNX export."""
