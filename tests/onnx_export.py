"""Moved to tests.helpers.onnx_export (the `export_onnx` fixture); this name stays until the last test modules
importing it are converted."""
from tests.helpers.onnx_export import export_onnx  # noqa: F401
