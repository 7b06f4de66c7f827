"""The optional augmentations of fr.data.augment as DALI graph operations (names as in `data.augment`)."""

from __future__ import annotations

from typing import Sequence

from fr.data.augment import HUE, SATURATION, SCALE, SIGMA, P
from fr.registry import Registry

DALI_AUGMENTS = Registry("DALI augmentation")  # name -> (fn, images) -> augmented images


def _gate(fn, images, augmented):
    """Per sample: the augmented image with probability P, else the input (arithmetic select)."""
    from nvidia.dali import types

    take = fn.cast(fn.random.coin_flip(probability=P), dtype=types.UINT8)
    keep = 1 - take
    return fn.cast(images * keep + augmented * take, dtype=types.UINT8)


@DALI_AUGMENTS.register("resize")
def _down_up(fn, images):
    from nvidia.dali import types

    scale = fn.random.uniform(range=SCALE)
    size = fn.cast(images.shape()[0:2], dtype=types.FLOAT)
    small = fn.resize(images, size=size * scale)
    return fn.resize(small, size=size)


@DALI_AUGMENTS.register("blur")
def _blur(fn, images):
    return fn.gaussian_blur(images, sigma=fn.random.uniform(range=SIGMA))


@DALI_AUGMENTS.register("hsv")
def _hsv(fn, images):
    return fn.hsv(
        images, hue=fn.random.uniform(range=(-HUE * 360, HUE * 360)), saturation=fn.random.uniform(range=SATURATION)
    )


@DALI_AUGMENTS.register("gray")
def _gray(fn, images):
    return fn.hsv(images, saturation=0.0)


def apply_augments(images, names: Sequence[str]):
    """Chain the named augmentations, each applied to a random P of the samples."""
    from nvidia.dali import fn

    for name in names:
        images = _gate(fn, images, DALI_AUGMENTS.get(name)(fn, images))
    return images
