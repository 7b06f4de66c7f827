"""Encoded test images: flat greys whose pixel value names the image, and seeded noise."""

import io

import numpy as np
from PIL import Image


def encode(image, fmt="PNG", mode=None, **save_kw) -> bytes:
    """A uint8 image array (HxWx3, or HxW grey) saved as `fmt` (converted to PIL `mode` first when given)."""
    picture = Image.fromarray(image)
    if mode is not None:
        picture = picture.convert(mode)
    buf = io.BytesIO()
    picture.save(buf, format=fmt, **save_kw)
    return buf.getvalue()


def png(image) -> bytes:
    return encode(image, "PNG")


def jpeg(image, quality=95) -> bytes:
    return encode(image, "JPEG", quality=quality)


def flat(value, side=112) -> np.ndarray:
    """A side x side RGB image of one grey value."""
    return np.full((side, side, 3), value, np.uint8)


def noise(seed, width=112, height=None) -> np.ndarray:
    """Uniform RGB noise, height x width (square by default); `seed` may be a numpy Generator to draw from."""
    return np.random.default_rng(seed).integers(0, 256, (height or width, width, 3), dtype=np.uint8)


def flip_probe(k, side=112) -> np.ndarray:
    """Image k with its top half a flat grey 3k naming it and its bottom half black on the left and white on the
    right, so that a horizontal flip shows."""
    pixels = flat(3 * k, side)
    pixels[side // 2 :, : side // 2], pixels[side // 2 :, side // 2 :] = 0, 255
    return pixels
