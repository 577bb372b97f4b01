"""Local models run with ONNX Runtime, one module per model task."""
