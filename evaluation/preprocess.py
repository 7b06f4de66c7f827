"""The one input normalisation of face crops, insightface's `(x / 255 - 0.5) / 0.5`: training and evaluation share it.

The formula is evaluated once, in float32 on the CPU (IEEE-rounded division), for each of the 256 pixel values;
every image is then mapped through that table, on any device. Evaluating the formula on the image's own device
would not give the same bits everywhere: CUDA divides by a scalar by multiplying with its reciprocal, which
differs in the last bit for 111 of the 256 values.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def _formula(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.to(torch.float32) / 255.0 - 0.5) / 0.5


@lru_cache(maxsize=None)
def _table_on(device: torch.device) -> torch.Tensor:
    # Cached per device: copying the table to a GPU each batch would wait for the work queued before it.
    return _formula(torch.arange(256, dtype=torch.uint8)).to(device)


def normalize_table() -> np.ndarray:
    """float32 [256]: the normalised value of each uint8 pixel value (for host-side lookups, e.g. cv2.LUT)."""
    return _table_on(torch.device("cpu")).numpy().copy()


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape, any device) -> float32 in [-1, 1] of the same shape on the same device."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {images_uint8.dtype}")
    return torch.take(_table_on(images_uint8.device), images_uint8.long())
