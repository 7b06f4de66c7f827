"""An ONNX face-embedding model (onnxruntime) behind the torch.nn.Module interface the evaluators use."""

from __future__ import annotations

import numpy as np
import torch

from evaluation.errors import UserInputError


class OnnxBackbone(torch.nn.Module):
    """Runs an ONNX model [B, 3, H, W] float -> [B, D] on CPU with onnxruntime; `forward` takes and returns tensors."""

    def __init__(self, path: str):
        super().__init__()
        try:
            import onnxruntime
        except ImportError as exc:  # optional dependency: name the extra that provides it
            raise UserInputError(f"{path}: ONNX models need onnxruntime (pip install 'fr[onnx]')") from exc
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise UserInputError(f"{path}: not a loadable ONNX model ({exc})") from None
        self.path = path
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().to("cpu", torch.float32).numpy()}
        out = self.session.run(None, feed)[0]
        return torch.from_numpy(np.asarray(out, np.float32).reshape(len(out), -1))
