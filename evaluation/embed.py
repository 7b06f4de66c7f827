"""Batched embedding of uint8 face crops with insightface's test-time flip, and `.bin` set verification.

Inputs are normalised as insightface does, `(x / 255 - 0.5) / 0.5` (evaluation.preprocess, as in training),
and with `flip=True` an image's embedding is the sum (not the concatenation) of the embeddings of the image
and of its horizontal flip; L2 normalisation is left to `evaluation.verification.evaluate`.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Optional, Union

import numpy as np
import torch

from evaluation.bin_format import ImageSize, load_bin
from evaluation.preprocess import normalize
from evaluation.verification import BinVerification, evaluate

logger = logging.getLogger(__name__)


def _model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Floating dtype of the model's first floating parameter, so a half model gets half inputs."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def to_model_input(batch_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """NHWC uint8 -> NCHW float in [-1, 1] (evaluation.preprocess.normalize), then cast to `dtype`."""
    return normalize(batch_uint8.permute(0, 3, 1, 2)).to(dtype)


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x), checked to be a 2-D embedding tensor [B, D]."""
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must return a 2-D embedding tensor [B, D], got {got}")
    return out


@torch.no_grad()
def _embed_batches(model, images, batch_size, device, dtype, flip, progress) -> np.ndarray:
    """The embedding loop; the caller handles the model's train/eval state."""
    starts: Iterable[int] = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm  # only needed for the optional progress bar

        starts = tqdm(starts, total=(len(images) + batch_size - 1) // batch_size, desc="embed", unit="batch")
    chunks = []
    for start in starts:
        # uint8 goes to the device and is converted there: a quarter of the float32 transfer.
        chunk = np.ascontiguousarray(images[start : start + batch_size])
        if not chunk.flags.writeable:  # torch.from_numpy warns on read-only arrays (memmaps, PIL views)
            chunk = chunk.copy()
        batch = torch.from_numpy(chunk).to(device)
        x = to_model_input(batch, dtype)
        out = _forward(model, x)
        if flip:
            out = out + _forward(model, torch.flip(x, dims=[3]))
        chunks.append(out.float().cpu().numpy())
    return np.concatenate(chunks, axis=0)


def embed_images(
    model: torch.nn.Module,
    images_uint8: np.ndarray,
    batch_size: int = 64,
    device: Optional[Union[str, torch.device]] = None,
    flip: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings float32 [M, D] of RGB uint8 images [M, H, W, 3]; model(image) + model(flip) when `flip`."""
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 images [M, H, W, 3], got {images.dtype} {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("expected at least one image, got 0")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    # Remember each submodule's own mode: a model may hold deliberately frozen (eval) parts.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return _embed_batches(model, images, batch_size, device, _model_dtype(model), flip, progress)
    finally:
        for module, training in modes:
            module.training = training


def verify_bin(
    model: torch.nn.Module,
    path: Union[str, os.PathLike],
    batch_size: int = 64,
    device: Optional[Union[str, torch.device]] = None,
    *,
    image_size: ImageSize = 112,
    nrof_folds: int = 10,
) -> BinVerification:
    """Verification metrics of `model` on an insightface `.bin` set (flip-sum embeddings, 10 folds).

    A set with fewer pairs than `nrof_folds` is a BinFormatError naming the file.
    """
    images, issame = load_bin(path, image_size=image_size, nrof_folds=nrof_folds)
    embeddings = embed_images(model, images, batch_size=batch_size, device=device, flip=True)
    result = evaluate(embeddings, issame, nrof_folds=nrof_folds)
    logger.info("%s: accuracy %.5f +- %.5f, xnorm %.3f", os.fspath(path), result.accuracy, result.std, result.xnorm)
    return result
