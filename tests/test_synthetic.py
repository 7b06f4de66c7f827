"""Tests of the procedural face renderer: determinism, split independence, identity signal."""

import dataclasses

import numpy as np
import pytest

from fr.synth.identity import (
    FACIAL_HAIR,
    GLASSES,
    HAIR_STYLES,
    Identity,
    identity_for,
    identity_seed,
    image_seed,
    sample_identity,
)
from fr.synth.render import SynthStyle, render_face, render_identities, render_identity_images

# ArcFace 112x112 template (insightface): eye centres, nose tip, mouth corners.
ARCFACE_EYE_Y = (51.6963 + 51.5014) / 2
ARCFACE_NOSE_Y = 71.7366
ARCFACE_MOUTH_Y = (92.3655 + 92.2041) / 2


def test_same_seed_gives_identical_bytes():
    a = render_identity_images(7, 3, 4)
    b = render_identity_images(7, 3, 4)
    assert a.tobytes() == b.tobytes()
    assert identity_for(7, 3) == identity_for(7, 3)


def test_shape_dtype_and_size():
    imgs = render_identity_images(0, 0, 2)
    assert imgs.shape == (2, 112, 112, 3) and imgs.dtype == np.uint8
    small = render_face(identity_for(0, 1), np.random.default_rng(0), size=56)
    assert small.shape == (56, 56, 3) and small.dtype == np.uint8
    with pytest.raises(ValueError):
        render_face(identity_for(0, 1), np.random.default_rng(0), size=4)


def test_different_identity_or_seed_changes_image_and_parameters():
    assert identity_for(0, 1) != identity_for(0, 2)
    assert identity_for(0, 1) != identity_for(1, 1)
    a = render_identity_images(0, 1, 1)[0].astype(int)
    b = render_identity_images(0, 2, 1)[0].astype(int)
    assert np.abs(a - b).mean() > 10


def test_rendering_is_independent_of_how_work_is_split():
    together, labels = render_identities(11, range(10), 3, size=64)
    one_by_one = np.concatenate([render_identity_images(11, k, 3, size=64) for k in range(10)])
    assert together.tobytes() == one_by_one.tobytes()
    assert labels.tolist() == [k for k in range(10) for _ in range(3)]
    # a later image rendered on its own equals the same image rendered in a batch
    assert render_identity_images(11, 4, 1, size=64, start=2).tobytes() == together[4 * 3 + 2].tobytes()
    # identity k is the same whatever other identities are listed with it
    shuffled, _ = render_identities(11, [9, 4], 3, size=64)
    assert shuffled[3:].tobytes() == together[12:15].tobytes()


def test_seeds_are_spawn_keyed_and_validated():
    assert identity_seed(5, 2).spawn_key != image_seed(5, 2, 0).spawn_key
    assert image_seed(5, 2, 0).spawn_key != image_seed(5, 2, 1).spawn_key
    for bad in (-1, 1.5):
        with pytest.raises(ValueError):
            identity_seed(bad, 0)
        with pytest.raises(ValueError):
            image_seed(0, 0, bad)


def test_identity_parameters_vary_across_identities():
    ids = [sample_identity(np.random.default_rng(s)) for s in range(300)]
    assert len(set(ids)) == len(ids)
    for field in ("face_half_width", "eye_spacing", "nose_width", "mouth_width", "brow_angle", "hairline"):
        values = np.array([getattr(i, field) for i in ids])
        assert values.std() > 0.1 * (values.max() - values.min()) > 0, field
    assert {i.hair_style for i in ids} == set(HAIR_STYLES)
    assert {i.glasses for i in ids} == set(GLASSES)
    assert {i.facial_hair for i in ids} == set(FACIAL_HAIR)
    skins = np.array([i.skin for i in ids], float).mean(1)
    assert skins.max() - skins.min() > 100  # light to dark skin tones


def test_features_sit_where_an_arcface_crop_puts_them():
    ids = [identity_for(3, k) for k in range(200)]
    assert abs(np.mean([i.eye_y for i in ids]) - ARCFACE_EYE_Y) < 2
    assert abs(np.mean([i.nose_y for i in ids]) - ARCFACE_NOSE_Y) < 2.5
    assert abs(np.mean([i.mouth_y for i in ids]) - ARCFACE_MOUTH_Y) < 3
    assert abs(np.mean([i.eye_spacing for i in ids]) - (73.5318 - 38.2946)) < 2


def test_nuisance_changes_pixels_of_one_identity():
    a, b = render_identity_images(2, 5, 2).astype(int)
    assert np.abs(a - b).mean() > 5


def test_zero_difficulty_leaves_only_the_background_varying():
    flat = SynthStyle(difficulty=0.0)
    a, b = render_identity_images(2, 5, 2, style=flat).astype(int)
    centre = (slice(42, 98), slice(32, 80))  # eyes to mouth, inside every face outline
    assert np.array_equal(a[centre], b[centre])
    assert not np.array_equal(a, b)


def test_same_identity_pairs_are_closer_than_different_ones():
    # an independent, model-free check that identity survives moderate nuisance
    style = SynthStyle(difficulty=0.5)
    imgs, _ = render_identities(4, range(24), 2, size=48, style=style)
    x = imgs.reshape(len(imgs), -1).astype(float)
    x -= x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first, second = x[0::2], x[1::2]
    sim = first @ second.T
    same = np.diag(sim).mean()
    different = sim[~np.eye(len(sim), dtype=bool)].mean()
    assert same > different + 0.1


def test_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SynthStyle().noise = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        identity_for(0, 0).skin = (0, 0, 0)
    assert isinstance(identity_for(0, 0), Identity)
