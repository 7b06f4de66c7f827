"""ROC, TAR@FAR and AUC against sklearn and hand-made cases."""

import numpy as np
import pytest

from evaluation.metrics import (
    FAR_TARGETS,
    auc,
    far_key,
    far_table,
    roc_curve,
    tar_at_far_interpolated,
    tar_at_far_nearest,
)

sk_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_roc_matches_sklearn_with_ties(dtype, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 4000))
    # Coarse integer scores force many ties; -0.0 and 0.0 must tie as well.
    scores = (rng.integers(-15, 15, n) * 0.25).astype(dtype)
    scores[:2] = [-0.0, 0.0]
    labels = rng.random(n) < rng.uniform(0.05, 0.9)
    labels[:2] = [True, False]
    for drop in (True, False):
        roc = roc_curve(scores, labels, drop_intermediate=drop)
        fpr, tpr, thr = sk_metrics.roc_curve(labels, scores, drop_intermediate=drop)
        np.testing.assert_array_equal(roc.fpr, fpr)
        np.testing.assert_array_equal(roc.tpr, tpr)
        np.testing.assert_array_equal(roc.thresholds.astype(dtype), thr.astype(dtype))
        assert auc(roc.fpr, roc.tpr) == pytest.approx(sk_metrics.auc(fpr, tpr), abs=1e-12)


def test_continuous_scores_match_sklearn_and_roc_auc():
    rng = np.random.default_rng(7)
    labels = rng.random(20000) < 0.1
    scores = (rng.standard_normal(20000) + labels).astype(np.float32)
    roc = roc_curve(scores, labels)
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
    np.testing.assert_array_equal(roc.fpr, fpr)
    np.testing.assert_array_equal(roc.tpr, tpr)
    assert auc(roc.fpr, roc.tpr) == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)


def _insightface_style_nearest(fpr, tpr, target):
    """Reference: walk the ROC reversed and keep the first minimum of (|fpr - target|), as the tuple min does."""
    fpr, tpr = fpr[::-1], tpr[::-1]
    best = min(range(len(fpr)), key=lambda i: (abs(fpr[i] - target), i))
    return tpr[best]


def test_hand_made_roc_and_tar():
    # Scores high to low: G I G I I, with 2 genuine and 3 impostors.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0], bool)
    roc = roc_curve(scores, labels, drop_intermediate=False)
    np.testing.assert_allclose(roc.fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 0.5, 1, 1, 1])
    assert auc(roc.fpr, roc.tpr) == pytest.approx(0.5 * 1 / 3 + 1 * 2 / 3)
    # FAR 0.1: nearest FPR is 0 (points TPR 0 and 0.5): the largest TPR wins.
    assert tar_at_far_nearest(roc, 0.1) == 0.5
    # FAR 0.3: nearest FPR is 1/3, where TPR runs from 0.5 up to 1: take 1.
    assert tar_at_far_nearest(roc, 0.3) == 1.0
    # Interpolated: FPR 0.3 lies on the flat step from (0, 0.5) to (1/3, 0.5); TPR 1 needs FPR 1/3.
    assert tar_at_far_interpolated(roc, 0.3) == pytest.approx(0.5)
    assert tar_at_far_interpolated(roc, 1 / 3) == 1.0
    assert tar_at_far_interpolated(roc, 0.0) == 0.5


def test_nearest_equals_insightface_selection_on_random_rocs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 3000
        labels = rng.random(n) < 0.3
        scores = np.round(rng.standard_normal(n) + labels, 1)
        roc = roc_curve(scores, labels)
        for far in FAR_TARGETS:
            assert tar_at_far_nearest(roc, far) == _insightface_style_nearest(roc.fpr, roc.tpr, far)


def test_far_table_keys_and_percent():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.5
    roc = roc_curve(rng.random(5000) + labels, labels)
    table = far_table(roc)
    assert list(table["nearest"]) == ["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"]
    assert far_key(1e-1) == "1e-01"
    assert all(0 <= v <= 100 for v in table["interpolated"].values())


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="both genuine"):
        roc_curve(np.ones(3), np.ones(3, bool))
