"""Deployment formats: ONNX export with a parity gate, onnxruntime and TensorRT runners (docs/export.md)."""
