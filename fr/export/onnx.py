"""ONNX export of a backbone, checked against PyTorch in onnxruntime before the file is published.

The file takes `images` float32 [batch, 3, S, S] (dynamic batch, S = the backbone's input size, 112 by default):
RGB, NCHW, each uint8 pixel mapped by fr's training normalisation `(x / 255 - 0.5) / 0.5` into [-1, 1]. It
returns `embeddings` float32 [batch, D], unnormalised as the PyTorch backbone's. It is written by torch's
TorchScript exporter (`dynamo=False`): the torch.export-based one needs onnxscript, which fr does not install.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from evaluation.errors import UserInputError
from evaluation.fileio import commit_file, create_temporary, make_dirs
from evaluation.preprocess import normalize

EXPORTER = "torchscript"
MIN_OPSET = 17
MAX_OPSET = 20  # the newest opset torch's TorchScript exporter writes
TOLERANCE = 1e-4
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
PREPROCESSING = "RGB, NCHW, float32 (x / 255 - 0.5) / 0.5 of each uint8 pixel"
TRACE_BATCH = 2  # differs from the check's batch, so a batch size frozen into the graph fails the check


class OnnxExportError(UserInputError):
    """An export that cannot be done as asked (e.g. an unsupported opset); nothing is written."""


class OnnxParityError(OnnxExportError):
    """The exported file does not reproduce the PyTorch backbone; it has been removed. `report` holds the
    comparison when there was one (max_abs_diff, batch, embedding_size)."""

    def __init__(self, message: str, report: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.report = report


def check_opset(opset: int) -> int:
    """`opset` if the exporter writes it and it is 17 or newer, else a one-line OnnxExportError."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxExportError(
            f"--opset {opset}: expected {MIN_OPSET}..{MAX_OPSET} (17 or newer, up to the newest the "
            f"{EXPORTER} exporter writes)"
        )
    return opset


def float32_copy(backbone: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy of `backbone`, contiguous NCHW, with each module's mixed-precision body
    switch (`fp16`: True, "fp16" or "bf16") off.

    The file holds one float32 graph; a mixed-precision body would otherwise be traced under autocast into
    casts that onnxruntime's CPU kernels do not run.
    """
    model = copy.deepcopy(backbone).to("cpu", torch.float32).to(memory_format=torch.contiguous_format)
    for module in model.modules():
        if isinstance(getattr(module, "fp16", None), (bool, str)):
            module.fp16 = False
    return model.eval()


def sample_batch(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded batch [batch, 3, S, S] of random uint8 pixels in the training normalisation."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    return normalize(pixels)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _write(model: nn.Module, path: str, image_size: int, opset: int, metadata: Mapping[str, str]) -> None:
    import onnx

    example = sample_batch(TRACE_BATCH, image_size, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    # Deployers find the expected preprocessing in the file itself (onnx metadata_props).
    proto = onnx.load(path)
    for key, value in {"fr.input": f"{INPUT_NAME}: {PREPROCESSING}", **metadata}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, path)


def _compare(
    model: nn.Module, path: str, out: str, image_size: int, batch: int, seed: int, providers: Sequence[str]
) -> Dict[str, Any]:
    """Max abs difference of L2-normalised embeddings, PyTorch vs onnxruntime, on the fixed batch; errors name
    `out`, the file the caller asked for (`path` is its temporary)."""
    import onnxruntime

    x = sample_batch(batch, image_size, seed)
    with torch.no_grad():
        expected = model(x).numpy()
    if not np.isfinite(expected).all():
        raise OnnxParityError(
            f"{out}: the backbone's own (PyTorch) embeddings of the check batch hold NaN/inf, so the export "
            "cannot be checked (broken or untrained weights?): not written"
        )
    try:
        session = onnxruntime.InferenceSession(path, providers=list(providers))
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    except Exception as exc:  # onnxruntime's own exception types: a graph it cannot load or run
        raise OnnxParityError(
            f"{out}: onnxruntime cannot run the exported model on {batch} images "
            f"({' '.join(str(exc).split())[:300]}): not written"
        ) from None
    if got.shape != expected.shape:
        raise OnnxParityError(
            f"{out}: the exported model returns {got.shape} for {batch} images, PyTorch {expected.shape}: not written"
        )
    diff = float(np.max(np.abs(l2_normalize(got) - l2_normalize(expected))))
    return {"max_abs_diff": diff, "batch": batch, "embedding_size": int(expected.shape[1])}


def export_onnx(
    backbone: nn.Module,
    out: str,
    opset: int = MIN_OPSET,
    image_size: Optional[int] = None,
    *,
    tolerance: float = TOLERANCE,
    batch: int = 4,
    seed: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    metadata: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Write `backbone` to `out` as ONNX and check it in onnxruntime; returns the report.

    The file is exported to a temporary name beside `out`, run on a fixed seeded batch of `batch` images, and
    renamed to `out` only if the L2-normalised embeddings differ from PyTorch's by at most `tolerance`
    (max abs); otherwise it is removed and OnnxParityError raised, leaving any previous `out` as it was.
    `image_size` defaults to the backbone's `input_size` (112 when it has none).
    """
    check_opset(opset)
    if batch == TRACE_BATCH or batch < 1:
        raise ValueError(f"batch must be a positive size other than the traced {TRACE_BATCH}, got {batch}")
    image_size = int(image_size or getattr(backbone, "input_size", 112))
    model = float32_copy(backbone)
    out = os.fspath(out)
    make_dirs(os.path.dirname(os.path.abspath(out)))
    tmp = create_temporary(os.path.abspath(out))
    try:
        _write(model, tmp, image_size, opset, dict(metadata or {}))
        parity = _compare(model, tmp, out, image_size, batch, seed, providers)
        if not parity["max_abs_diff"] <= tolerance:  # also refuses NaN
            raise OnnxParityError(
                f"{out}: the exported model differs from PyTorch by {parity['max_abs_diff']:.3g} (max abs, "
                f"L2-normalised embeddings of {batch} images), more than {tolerance:g}: not written",
                parity,
            )
        commit_file(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {
        "path": out,
        "exporter": EXPORTER,
        "opset": opset,
        "input": INPUT_NAME,
        "input_shape": ["batch", 3, image_size, image_size],
        "output": OUTPUT_NAME,
        "preprocessing": PREPROCESSING,
        "tolerance": tolerance,
        "providers": list(providers),
        **parity,
    }
