"""Exporting trained backbones for deployment (ONNX)."""
