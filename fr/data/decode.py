"""Image decoders for the torch path: a registry by name, the fastest installed one picked by default.

simplejpeg decodes JPEG faces faster than Pillow (figures: docs/benchmarks.md). PyTurboJPEG needs
the system libturbojpeg, which pip cannot provide, so it is not offered.
"""

from __future__ import annotations

import io
from typing import Callable, Optional

import numpy as np
from PIL import Image

from evaluation.errors import UserInputError
from fr.registry import Registry

Decoder = Callable[[bytes], np.ndarray]


def _decode_pillow(payload: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(payload)) as img:
        return np.asarray(img.convert("RGB"))


def _decode_simplejpeg(payload: bytes) -> np.ndarray:
    import simplejpeg

    if payload[:2] != b"\xff\xd8":  # PNG and friends: simplejpeg reads JPEG only
        return _decode_pillow(payload)
    return simplejpeg.decode_jpeg(payload, colorspace="RGB")


# name -> () -> the decoder, or None when its package is not installed; registered fastest first.
DECODERS = Registry("image decoder", special=("auto",))


@DECODERS.register("simplejpeg")
def simplejpeg_decoder() -> Optional[Decoder]:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return None
    return _decode_simplejpeg


@DECODERS.register("pillow")
def pillow_decoder() -> Optional[Decoder]:
    return _decode_pillow


def get_decoder(name: str = "auto") -> Decoder:
    """The decoder called `name`, or with "auto" the fastest one installed (Pillow always is)."""
    if name == "auto":
        return next(decoder for decoder in (factory() for _, factory in DECODERS.items()) if decoder is not None)
    decoder = DECODERS.get(name)()
    if decoder is None:
        raise UserInputError(f"image decoder {name!r} is not installed (pip install {name})")
    return decoder


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size when the decoded image has another size."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
