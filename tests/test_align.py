"""5-point alignment: Umeyama recovers a known similarity, and the warp undoes it on a real image."""

import numpy as np
import pytest

from evaluation.align import ARCFACE_TEMPLATE, align_face, invert_affine, similarity_transform, warp_affine
from tests.helpers.geometry import apply_affine, similarity_matrix


@pytest.mark.parametrize("params", [(1.0, 0, 0, 0), (2.3, 17.0, 40.5, -12.0), (0.6, -95.0, 3.0, 210.0)])
def test_recovers_known_similarity(params):
    known = similarity_matrix(*params)
    src = ARCFACE_TEMPLATE
    dst = apply_affine(known, src)
    np.testing.assert_allclose(similarity_transform(src, dst), known, atol=1e-9)
    np.testing.assert_allclose(similarity_transform(dst, src), invert_affine(known), atol=1e-9)


def test_least_squares_with_noise_beats_perturbations():
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE
    dst = apply_affine(similarity_matrix(1.7, 25, 10, 20), src) + rng.normal(0, 1.0, src.shape)
    best = similarity_transform(src, dst)
    loss = lambda m: ((apply_affine(m, src) - dst) ** 2).sum()
    for _ in range(200):  # no nearby similarity fits better
        s, d, tx, ty = rng.normal(0, [0.01, 0.5, 0.3, 0.3])
        a, b = best[0, 0] * (1 + s), best[1, 0] * (1 + s)
        t = np.deg2rad(d)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.array([[a, -b], [b, a]])
        assert loss(best) <= loss(np.hstack([rot, best[:, 2:] + [[tx], [ty]]])) + 1e-9


def test_no_reflection():
    mirrored = ARCFACE_TEMPLATE * [-1, 1]
    m = similarity_transform(ARCFACE_TEMPLATE, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_warp_matches_pixel_centre_convention():
    # A pure translation by whole pixels must move pixels exactly (integer-centre coordinates, as OpenCV).
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    out = warp_affine(image, similarity_matrix(1.0, 0, 3, 5), (50, 40))
    np.testing.assert_array_equal(out[5:, 3:], image[:-5, :-3])
    # Scale 2 about the origin: output pixel (2x, 2y) samples input (x, y) exactly.
    out2 = warp_affine(image, similarity_matrix(2.0, 0, 0, 0), (100, 80))
    np.testing.assert_array_equal(out2[::2, ::2][:39, :49], image[:39, :49])


def test_align_undoes_a_known_similarity_on_a_face():
    from fr.synth.render import render_identity_images

    face = render_identity_images(0, 3, 1)[0]
    known = similarity_matrix(1.6, 20.0, 70.0, 30.0)
    big = warp_affine(face, known, (260, 240))  # the face placed, turned and scaled on a larger canvas
    landmarks = apply_affine(known, ARCFACE_TEMPLATE)
    aligned = align_face(big, landmarks)
    assert aligned.shape == (112, 112, 3)
    inner = (slice(20, 92), slice(20, 92))
    err = np.abs(aligned[inner].astype(float) - face[inner].astype(float)).mean()
    assert err < 6.0, err
    # A wrong landmark set gives a clearly different crop: the test has teeth.
    wrong = align_face(big, landmarks + [8, 0])
    assert np.abs(wrong[inner].astype(float) - face[inner].astype(float)).mean() > 2 * err
