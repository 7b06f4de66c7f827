"""Optional photometric/resolution augmentations for the torch path (the DALI path mirrors them in dali.py).

Each is applied with probability `P` to an RGB uint8 HxWx3 array; `data.augment` lists the names to use.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter

from fr.registry import Registry

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTS = Registry("augmentation")  # name -> Augment

P = 0.2  # probability of each augmentation per image
SCALE = (0.2, 0.8)  # down-and-up resize: intermediate size as a fraction of the side
SIGMA = (0.5, 2.0)  # gaussian blur sigma, pixels
HUE = 0.1  # hue jitter, fraction of the colour circle
SATURATION = (0.6, 1.4)


@AUGMENTS.register("resize")
def down_up_resize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simulate a low-resolution source: bilinear down to a random size and back."""
    h, w = image.shape[:2]
    s = rng.uniform(*SCALE)
    small = Image.fromarray(image).resize((max(1, int(w * s)), max(1, int(h * s))), Image.BILINEAR)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


@AUGMENTS.register("blur")
def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(rng.uniform(*SIGMA))))


@AUGMENTS.register("hsv")
def hsv_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift hue and scale saturation in HSV space."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.uniform(-HUE, HUE) * 256)) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*SATURATION), 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


@AUGMENTS.register("gray")
def grayscale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gray = np.asarray(Image.fromarray(image).convert("L"))
    return np.repeat(gray[..., None], 3, axis=2)


class Compose:
    """Applies each named augmentation with probability `p`; picklable for DataLoader workers."""

    def __init__(self, names: Sequence[str], p: float = P):
        for name in names:
            AUGMENTS.get(name)  # an unknown name fails here, not in a loader worker
        self.names: List[str] = list(names)
        self.p = p

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for name in self.names:
            if rng.random() < self.p:
                image = AUGMENTS[name](image, rng)
        return image


def build_augment(names: Optional[Sequence[str]]) -> Optional[Compose]:
    """None when no augmentation is configured (the flip is always on and lives in the dataset)."""
    return Compose(names) if names else None
