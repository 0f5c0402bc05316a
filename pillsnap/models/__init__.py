"""Model builders, checkpoint loaders and ONNX exporters (one module per model)."""
