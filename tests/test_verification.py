"""Tests for evaluation.verification (insightface 10-fold protocol) and evaluation.embed (flip-sum embedding)."""

import json
import math
import statistics

import numpy as np
import pytest
import torch
from sklearn.model_selection import KFold

from evaluation import BinVerification, embed_images, evaluate, verify_bin, write_bin
from evaluation.bin_format import encode_png
from evaluation.verification import kfold_slices, threshold_at_far

# ---------------------------------------------------------------- brute-force reference of the protocol


def ref_distances(emb, n_pairs):
    """Squared L2 distances of normalised pairs, one pair at a time (zero rows left as they are)."""
    out = []
    for i in range(n_pairs):
        a, b = emb[2 * i].astype(np.float64), emb[2 * i + 1].astype(np.float64)
        na, nb = math.sqrt(float(np.sum(a * a))), math.sqrt(float(np.sum(b * b)))
        a = a / na if na > 0 else a
        b = b / nb if nb > 0 else b
        out.append(float(np.sum((a - b) ** 2)))
    return np.array(out)


def ref_accuracy(dist, issame, threshold):
    predicted = dist < threshold
    return float(np.sum(predicted == issame)) / len(dist)


def ref_val_far(dist, issame, threshold):
    predicted = dist < threshold
    n_same, n_diff = int(np.sum(issame)), int(np.sum(~issame))
    val = np.sum(predicted & issame) / n_same if n_same else 0.0
    far = np.sum(predicted & ~issame) / n_diff if n_diff else 0.0
    return float(val), float(far)


def ref_threshold_at_far(far_train, thresholds, target):
    """Linear interpolation threshold(FAR) written as a plain scan."""
    if max(far_train) < target:
        return 0.0
    j = None
    for i in range(len(far_train)):
        if far_train[i] <= target:
            j = i
    if far_train[j] == target or j == len(far_train) - 1:
        return float(thresholds[j])
    x0, x1, y0, y1 = far_train[j], far_train[j + 1], thresholds[j], thresholds[j + 1]
    return float(y0 + (target - x0) * (y1 - y0) / (x1 - x0))


def reference_protocol(emb, issame, nrof_folds=10):
    """The whole protocol with loops over folds and thresholds and sklearn's KFold for the split."""
    issame = np.asarray(issame, dtype=bool)
    n = len(issame)
    dist = ref_distances(np.asarray(emb), n)
    acc_thresholds = np.arange(0, 4, 0.01)
    val_thresholds = np.arange(0, 4, 0.001)
    accs, best_thrs, vals, fars = [], [], [], []
    for train, test in KFold(n_splits=nrof_folds, shuffle=False).split(np.arange(n)):
        best_acc, best_thr = -1.0, None
        for t in acc_thresholds:
            acc = ref_accuracy(dist[train], issame[train], t)
            if acc > best_acc:  # strict: the first threshold wins a tie
                best_acc, best_thr = acc, t
        best_thrs.append(best_thr)
        accs.append(ref_accuracy(dist[test], issame[test], best_thr))
        diff_train = dist[train][~issame[train]]
        far_train = [np.count_nonzero(diff_train < t) / len(diff_train) for t in val_thresholds]
        thr = ref_threshold_at_far(far_train, val_thresholds, 1e-3)
        v, f = ref_val_far(dist[test], issame[test], thr)
        vals.append(v)
        fars.append(f)
    return dict(
        accs=np.array(accs), thrs=np.array(best_thrs), val=np.mean(vals), val_std=np.std(vals), far=np.mean(fars)
    )


def random_pairs(n_pairs, dim, seed, noise=1.0, p_same=0.5):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < p_same
    emb = np.empty((2 * n_pairs, dim))
    for i in range(n_pairs):
        a = rng.normal(size=dim)
        emb[2 * i] = a * rng.uniform(0.5, 30)
        b = a + noise * rng.normal(size=dim) if issame[i] else rng.normal(size=dim)
        emb[2 * i + 1] = b * rng.uniform(0.5, 30)
    return emb, issame


def pairs_at_distances(dists):
    """2-D embeddings whose normalised pairs sit at the given squared distances (d = 2 - 2 cos theta)."""
    emb = []
    for d in dists:
        theta = math.acos(1.0 - d / 2.0)
        emb.append([1.0, 0.0])
        emb.append([math.cos(theta), math.sin(theta)])
    return np.array(emb)


def assert_matches_reference(emb, issame, nrof_folds=10):
    got = evaluate(emb, issame, nrof_folds=nrof_folds)
    ref = reference_protocol(emb, issame, nrof_folds)
    np.testing.assert_array_equal(got.best_thresholds, ref["thrs"])
    np.testing.assert_array_equal(got.fold_accuracies, ref["accs"])
    assert got.accuracy == pytest.approx(np.mean(ref["accs"]), abs=1e-15)
    assert got.val == pytest.approx(ref["val"], abs=1e-12)
    assert got.val_std == pytest.approx(ref["val_std"], abs=1e-12)
    assert got.far == pytest.approx(ref["far"], abs=1e-12)
    return got


# ---------------------------------------------------------------- protocol against the reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_bruteforce_reference_on_random_pairs(seed):
    emb, issame = random_pairs(613, 16, seed)  # 613 pairs: folds of 62 (x3) and 61 (x7)
    got = assert_matches_reference(emb, issame)
    assert 0.6 < got.accuracy < 1.0  # overlapping classes, so the threshold choice matters


def test_matches_reference_where_far_interpolates_between_nonzero_values():
    # ~1350 different pairs per train split: FAR steps of ~7e-4 < 1e-3, so the target lies between two nonzero FARs.
    emb, issame = random_pairs(3000, 8, seed=7, noise=0.8)
    got = assert_matches_reference(emb, issame)
    assert 0.0 < got.far < 0.01 and got.val > 0


def test_first_threshold_wins_ties():
    # Distances on a few values half-way between grid points: accuracy is flat over whole threshold ranges
    # and often equal between ranges, so np.argmax's first-maximum rule decides.
    rng = np.random.default_rng(3)
    levels = np.array([0.2055, 0.8055, 1.2055, 1.6055, 2.4055])
    dists = levels[rng.integers(0, len(levels), size=237)]
    issame = rng.random(237) < 0.5
    emb = pairs_at_distances(dists)
    got = assert_matches_reference(emb, issame)
    # Every chosen threshold is the first of its plateau: the first grid point above a level, or 0.
    plateau_starts = [0.0, 0.21, 0.81, 1.21, 1.61, 2.41]
    for t in got.best_thresholds:
        assert any(abs(t - start) < 1e-9 for start in plateau_starts)


def test_tie_between_two_plateaus_picks_the_lower_threshold():
    # Per fold: one same pair at 0.5055 then one different pair at 1.5055 ... arranged so thresholds in
    # (0.5055, 1.5055] and (2.5055, 4) give equal train accuracy; the first (0.51) must win.
    block = [(0.5055, True), (1.5055, False), (2.5055, True), (3.5055, False)]
    dists = [d for d, _ in block] * 10
    issame = [s for _, s in block] * 10
    # Accuracy: t<=0.5055 -> 1/2, (0.5055,1.5055] -> 3/4, (1.5055,2.5055] -> 1/2, (2.5055,3.5055] -> 3/4.
    got = assert_matches_reference(pairs_at_distances(dists), issame)
    np.testing.assert_allclose(got.best_thresholds, 0.51)


def test_kfold_slices_match_sklearn():
    for n in [10, 11, 19, 613, 6000, 6007]:
        for k in [1, 2, 3, 10]:
            if k == 1:
                assert kfold_slices(n, 1) == [(0, n)]
                continue
            expected = [(int(test[0]), int(test[-1]) + 1) for _, test in KFold(n_splits=k).split(np.arange(n))]
            assert kfold_slices(n, k) == expected


def test_threshold_at_far_matches_scipy_linear_interpolation():
    interpolate = pytest.importorskip("scipy.interpolate")
    thresholds = np.arange(0, 4, 0.001)
    far = np.linspace(0, 1, len(thresholds)) ** 3  # strictly increasing: scipy's 'slinear' is well defined
    for target in [1e-3, 0.05, 0.5, 0.999]:
        expected = float(interpolate.interp1d(far, thresholds, kind="slinear")(target))
        assert threshold_at_far(far, thresholds, target) == pytest.approx(expected, rel=1e-12)


def test_threshold_at_far_hand_cases():
    thr = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    # Flat FAR runs: the segment goes from the last threshold of the lower run to the next threshold.
    assert threshold_at_far(np.array([0, 0, 0, 0.004, 0.004]), thr, 1e-3) == pytest.approx(0.2 + 0.1 / 4)
    assert threshold_at_far(np.array([0, 0.001, 0.001, 0.5, 1]), thr, 1e-3) == pytest.approx(0.2)
    assert threshold_at_far(np.array([0, 0, 0, 0, 0.0005]), thr, 1e-3) == 0.0  # target never reached


# ---------------------------------------------------------------- hand-made cases


def test_perfectly_separable_pairs_have_accuracy_one():
    issame = [True, False] * 10
    emb = []
    for s in issame:
        emb += [[3.0, 0.0], [5.0, 0.0]] if s else [[1.0, 0.0], [0.0, 2.0]]  # same: dist 0; different: dist 2
    got = evaluate(np.array(emb), issame)
    assert got.accuracy == 1.0 and got.std == 0.0
    np.testing.assert_array_equal(got.fold_accuracies, np.ones(10))
    # The first threshold with 0 < t <= 2 is the second grid point.
    np.testing.assert_array_equal(got.best_thresholds, np.full(10, np.arange(0, 4, 0.01)[1]))
    assert got.val == 1.0


def test_single_fold_trains_and_tests_on_all_pairs():
    emb, issame = random_pairs(300, 8, seed=4)
    got = evaluate(emb, issame, nrof_folds=1)
    dist = ref_distances(emb, 300)
    best = max(ref_accuracy(dist, issame, t) for t in np.arange(0, 4, 0.01))
    assert got.fold_accuracies.tolist() == [best] and got.std == 0.0


def test_identical_embeddings_with_half_same_give_one_half():
    issame = [True, False] * 10  # every fold holds one same and one different pair
    emb = np.ones((40, 4))
    got = evaluate(emb, issame)
    # Every distance is 0: t=0 rejects all (train accuracy 1/2), t>0 accepts all (1/2); the tie picks t=0.
    np.testing.assert_array_equal(got.best_thresholds, np.zeros(10))
    np.testing.assert_array_equal(got.fold_accuracies, np.full(10, 0.5))
    assert got.accuracy == 0.5 and got.std == 0.0


def test_zero_norm_rows_do_not_produce_nan():
    emb = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0]] * 10)
    issame = [True, False] * 10
    got = evaluate(emb, issame)
    # Pair distances: 0 (both zero) and 1 (zero vs a unit vector): separable.
    assert all(np.isfinite(list(got.to_dict()["fold_accuracies"]))) and got.accuracy == 1.0
    assert got.xnorm == pytest.approx(1.0)  # norms 0, 0, 0, 4


def test_std_is_population_std():
    emb, issame = random_pairs(200, 4, seed=11, noise=1.5)
    got = evaluate(emb, issame)
    assert len(set(got.fold_accuracies.tolist())) > 1  # folds differ, so ddof matters
    assert got.std == pytest.approx(statistics.pstdev(got.fold_accuracies.tolist()), abs=1e-15)
    assert got.std != pytest.approx(statistics.stdev(got.fold_accuracies.tolist()), abs=1e-9)


def test_xnorm_is_mean_norm_of_raw_rows():
    emb, issame = random_pairs(50, 8, seed=5)
    expected = sum(math.sqrt(sum(v * v for v in row)) for row in emb.tolist()) / len(emb)
    assert evaluate(emb, issame).xnorm == pytest.approx(expected, rel=1e-12)


def test_torch_tensor_input_gives_the_same_result():
    emb, issame = random_pairs(100, 8, seed=9)
    a = evaluate(emb, issame)
    b = evaluate(torch.from_numpy(emb), list(issame))
    np.testing.assert_array_equal(a.fold_accuracies, b.fold_accuracies)
    assert a.xnorm == pytest.approx(b.xnorm)


def test_to_dict_is_json_serialisable():
    emb, issame = random_pairs(100, 8, seed=1)
    result = evaluate(emb, issame)
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d) == {"accuracy", "std", "fold_accuracies", "best_thresholds", "xnorm", "val", "val_std", "far", "auc"}
    assert d["accuracy"] == result.accuracy and len(d["fold_accuracies"]) == 10
    assert isinstance(result, BinVerification)
    with pytest.raises(AttributeError):
        result.accuracy = 0.0  # frozen


@pytest.mark.parametrize(
    "rows, n_issame, folds, match",
    [
        (21, 10, 10, "even number of rows"),
        (40, 19, 10, "expected 20"),
        (16, 8, 10, "at least nrof_folds=10 pairs, got 8"),
    ],
)
def test_input_errors_are_one_line_and_say_what_was_expected(rows, n_issame, folds, match):
    with pytest.raises(ValueError, match=match) as info:
        evaluate(np.ones((rows, 4)), [True] * n_issame, nrof_folds=folds)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- embed_images / verify_bin


class FlatLinear(torch.nn.Module):
    """A linear map over flattened NCHW pixels that records how it was called."""

    def __init__(self, h, w, dim=5):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3 * h * w, dim).double()
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), x.dtype))
        return self.fc(x.flatten(1))


def ref_linear(model, images, flip):
    """The expected embeddings in numpy: normalise, NCHW, optional horizontal flip, linear map."""
    w = model.fc.weight.detach().numpy()
    b = model.fc.bias.detach().numpy()
    x = (images.astype(np.float64) / 255.0 - 0.5) / 0.5
    x = x.transpose(0, 3, 1, 2)
    out = x.reshape(len(x), -1) @ w.T + b
    if flip:
        out = out + x[:, :, :, ::-1].reshape(len(x), -1) @ w.T + b
    return out


def test_embed_images_flip_sum_matches_independent_computation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 6, 5, 3), dtype=np.uint8)
    model = FlatLinear(6, 5)
    got = embed_images(model, images, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (7, 5)
    np.testing.assert_allclose(got, ref_linear(model, images, flip=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        embed_images(model, images, flip=False), ref_linear(model, images, flip=False), rtol=1e-5, atol=1e-5
    )
    # The flip is horizontal: it must differ from the unflipped embedding for asymmetric images.
    assert not np.allclose(ref_linear(model, images, True), 2 * ref_linear(model, images, False))


def test_embed_images_normalises_inputs_and_keeps_rgb_order():
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # top-left pixel's three channels, as the model sees them
            return x[:, :, 0, 0] + self.p

    images = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    images[0, 0, 0] = [0, 255, 51]
    images[1, 0, 0] = [255, 0, 102]
    got = embed_images(Probe(), images, flip=False)
    np.testing.assert_allclose(got[0], [-1.0, 1.0, -0.6], atol=1e-6)
    np.testing.assert_allclose(got[1], [1.0, -1.0, -0.2], atol=1e-6)
    np.testing.assert_allclose(got[2], [-1.0, -1.0, -1.0], atol=1e-6)


def test_embed_images_restores_modes_and_uses_no_grad():
    model = FlatLinear(4, 4)
    model.train()
    frozen = torch.nn.BatchNorm1d(3).eval()
    model.frozen = frozen  # a submodule deliberately kept in eval mode
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    embed_images(model, images, progress=True)
    assert all(not training and not grad for training, grad, _ in model.calls)
    assert model.training and not frozen.training
    assert model.calls[0][2] == torch.float64  # inputs follow the model's dtype


def test_embed_images_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        embed_images(FlatLinear(2, 2), np.zeros((1, 2, 2, 3), dtype=np.float32))


def test_verify_bin_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    issame = [True, False] * 10
    images = []
    for s in issame:
        a = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        b = a if s else rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        images += [a, b]
    path = tmp_path / "tiny.bin"
    write_bin(path, [encode_png(im) for im in images], issame)
    result = verify_bin(FlatLinear(8, 8), path, batch_size=6, image_size=8)
    # Same pairs are pixel-identical (distance 0), different ones are not: perfectly separable.
    assert result.accuracy == 1.0
    np.testing.assert_allclose(result.best_thresholds, 0.01)


def test_roc_and_auc_match_sklearn_on_negated_distances():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(400, 16))
    emb[1::2] += 2.0 * emb[0::2] * (rng.random(200) < 0.5)[:, None]
    issame = np.zeros(200, bool)
    issame[:100] = True
    rng.shuffle(issame)
    emb[1::2][issame] = emb[0::2][issame] + 0.8 * rng.normal(size=(100, 16))
    result = evaluate(emb, issame)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((unit[0::2] - unit[1::2]) ** 2).sum(1)
    assert result.auc == pytest.approx(roc_auc_score(issame, -dist), abs=1e-12)
    assert result.roc.fpr[0] == 0.0 and result.roc.tpr[-1] == 1.0
    assert result.to_dict()["auc"] == pytest.approx(result.auc)
