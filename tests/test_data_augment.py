"""Optional augmentations of the torch path: each keeps the shape and does what its name says."""

import numpy as np
import pytest

from fr.data.augment import AUGMENTS, Compose, build_augment
from fr.data.pack import random_image


@pytest.fixture()
def image():
    return random_image(np.random.default_rng(0), 112)


def test_each_augmentation_keeps_shape_and_dtype(image):
    for name, fn in AUGMENTS.items():
        out = fn(image, np.random.default_rng(1))
        assert out.shape == image.shape and out.dtype == np.uint8, name


def test_gray_blur_and_down_up_resize(image):
    rng = np.random.default_rng(2)
    gray = AUGMENTS["gray"](image, rng)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    # blur and down-up resize remove high frequencies: neighbouring pixels get closer
    roughness = lambda x: np.abs(np.diff(x.astype(int), axis=1)).mean()  # noqa: E731
    assert roughness(AUGMENTS["blur"](image, rng)) < roughness(image)
    assert roughness(AUGMENTS["resize"](image, rng)) < roughness(image)
    hsv = AUGMENTS["hsv"](image, rng)
    assert np.abs(hsv.astype(int) - image).mean() > 1


def test_compose_applies_with_probability_and_rejects_unknown_names(image):
    assert build_augment([]) is None
    always = Compose(["gray"], p=1.0)
    out = always(image, np.random.default_rng(0))
    assert np.array_equal(out[..., 0], out[..., 2])
    assert np.array_equal(Compose(["gray"], p=0.0)(image, np.random.default_rng(0)), image)
    with pytest.raises(ValueError, match="unknown augmentation 'sepia'"):
        Compose(["sepia"])
