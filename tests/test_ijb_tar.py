"""IJB 1:1 TAR@FAR as insightface's eval_ijbc.py prints it, against sklearn's roc_curve computed here: its
dropped ROC (drop_intermediate=True) for `tar_at_far`, the full ROC for `tar_at_far_full_roc`, on data where
dropping points moves the nearest point and where float32 scores would change the table."""

import json

import numpy as np
import pytest

from evaluation.metrics import FAR_TARGETS, far_key, verification_table
from fr.cli.eval import main as eval_main

sk_metrics = pytest.importorskip("sklearn.metrics")
sk_preprocessing = pytest.importorskip("sklearn.preprocessing")


def _eval_ijbc_row(labels, scores, drop_intermediate=True):
    """eval_ijbc.py's table: reverse sklearn's ROC, take the first minimum of (|fpr - far|, index), TPR * 100."""
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=drop_intermediate)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    row = {}
    for far in FAR_TARGETS:
        _, best = min(zip(np.abs(fpr - far), range(len(fpr))))
        row[far_key(far)] = tpr[best] * 100
    return row


def _interpolated(labels, scores, far):
    """TPR at exactly FPR `far` on sklearn's full ROC: the highest TPR at that FPR, else the line between the
    last point left of it and the first point right of it."""
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    if np.any(fpr == far):
        return 100 * tpr[fpr == far].max()
    left, right = np.flatnonzero(fpr < far)[-1], np.flatnonzero(fpr > far)[0]
    return 100 * (tpr[left] + (tpr[right] - tpr[left]) * (far - fpr[left]) / (fpr[right] - fpr[left]))


def test_dropping_points_moves_the_nearest_point():
    # Scores high to low: 5 genuine, 12 impostors, 5 genuine, 988 impostors, 10 genuine. At FAR 1e-2 (10 of
    # the 1000 impostors) the full ROC has a point exactly there (TPR 5/20); the dropped ROC keeps only the
    # ends of the 12-impostor run, FPR 0 and 0.012, and 0.012 is nearer, where TPR reaches 10/20.
    labels = np.r_[np.ones(5), np.zeros(12), np.ones(5), np.zeros(988), np.ones(10)].astype(bool)
    scores = -np.arange(len(labels), dtype=np.float64)
    _, table = verification_table(scores, labels)
    assert table["nearest"]["1e-02"] == pytest.approx(50.0)
    assert table["full_roc"]["1e-02"] == pytest.approx(25.0)
    assert table["nearest"] == pytest.approx(_eval_ijbc_row(labels, scores), abs=1e-12)
    assert table["full_roc"] == pytest.approx(_eval_ijbc_row(labels, scores, drop_intermediate=False), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tables_equal_sklearn_on_tied_scores(dtype):
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(12):
        n = int(rng.integers(2000, 6000))
        labels = rng.random(n) < rng.uniform(0.02, 0.3)
        labels[:2] = [True, False]
        scores = (np.round(rng.standard_normal(n) * rng.uniform(2, 30)) + 3 * labels).astype(dtype)  # many ties
        roc, table = verification_table(scores, labels)
        fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
        np.testing.assert_array_equal(roc.fpr, fpr)
        np.testing.assert_array_equal(roc.tpr, tpr)
        assert table["nearest"] == pytest.approx(_eval_ijbc_row(labels, scores), abs=1e-12)
        assert table["full_roc"] == pytest.approx(_eval_ijbc_row(labels, scores, False), abs=1e-12)
        for far in FAR_TARGETS:
            assert table["interpolated"][far_key(far)] == pytest.approx(_interpolated(labels, scores, far), abs=1e-9)
        moved += table["nearest"] != table["full_roc"]
    assert moved  # the data exercises drop_intermediate


def _layout(root, seed=0, n_img=2500, n_templates=900, dim=32, n_pairs=100_000):
    """An IJB-C layout whose features sit close together (an untrained model): scores crowd within a few
    float32 steps, where float32 scores tie or swap pairs that float64 keeps apart."""
    rng = np.random.default_rng(seed)
    meta = root / "IJBC" / "meta"
    meta.mkdir(parents=True)
    templates = rng.permutation(np.r_[np.arange(n_templates), rng.integers(0, n_templates, n_img - n_templates)])
    medias = templates * 4 + rng.integers(0, 3, n_img)
    subjects = rng.integers(0, 200, n_templates)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    noise = rng.standard_normal((n_img, 2, dim)).astype(np.float32)
    raw = (150 + centres[subjects[templates]][:, None] * 0.05 + noise).astype(np.float32)
    det = np.round(rng.uniform(0.5, 1, n_img), 3).astype(np.float32)
    t1, t2 = rng.integers(0, 200, n_pairs), rng.integers(200, n_templates, n_pairs)
    labels = subjects[t1] == subjects[t2]
    names = [f"{i}.jpg" for i in range(n_img)]
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias)))
    lmk = " ".join(["50.0"] * 10)
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(f"{n} {lmk} {s:.3f}\n" for n, s in zip(names, det)))
    np.savetxt(meta / "ijbc_template_pair_label.txt", np.c_[t1, t2, labels], fmt="%d")
    return raw, det, templates, medias, t1, t2, labels


def _eval_ijbc_scores(raw, det, templates, medias, t1, t2, dtype=np.float64):
    """eval_ijbc.py's scores (N1 D1 F1): float32 image features and media means, float64 templates."""
    feats = (raw[:, 0] + raw[:, 1]) * det[:, None]
    ids = np.unique(templates)
    out = np.zeros((len(ids), raw.shape[-1]))
    for i, t in enumerate(ids):
        mine = np.flatnonzero(templates == t)
        out[i] = np.sum(np.array([np.mean(feats[mine[medias[mine] == m]], 0) for m in np.unique(medias[mine])]), 0)
    out = sk_preprocessing.normalize(out).astype(dtype)
    row = {t: i for i, t in enumerate(ids)}
    a, b = out[[row[t] for t in t1]], out[[row[t] for t in t2]]
    return np.sum(a * b, -1)


def test_ijb_tar_at_far_equals_eval_ijbc_table(tmp_path, capsys):
    raw, det, templates, medias, t1, t2, labels = _layout(tmp_path)
    np.save(tmp_path / "f.npy", raw)
    out = tmp_path / "r.json"
    assert eval_main(["ijb", "--features", str(tmp_path / "f.npy"), "--root", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    scores = _eval_ijbc_scores(raw, det, templates, medias, t1, t2)
    expected = _eval_ijbc_row(labels, scores)
    assert got["tar_at_far"] == pytest.approx(expected, abs=1e-9)
    for key, tar in expected.items():  # the console prints it as eval_ijbc.py does: '%.2f' % (tpr * 100)
        assert any(line.split()[:2] == [key, "%.2f" % tar] for line in printed.splitlines())
    assert got["tar_at_far_full_roc"] == pytest.approx(_eval_ijbc_row(labels, scores, False), abs=1e-9)
    for far in FAR_TARGETS:
        assert got["tar_at_far_interpolated"][far_key(far)] == pytest.approx(_interpolated(labels, scores, far))
    assert got["auc"] == pytest.approx(sk_metrics.roc_auc_score(labels, scores), abs=1e-12)
    # On these features float32 scores print a different table: only insightface's arithmetic gives its figures.
    rounded = {k: "%.2f" % v for k, v in expected.items()}
    scores32 = _eval_ijbc_scores(raw, det, templates, medias, t1, t2, np.float32)
    assert {k: "%.2f" % v for k, v in _eval_ijbc_row(labels, scores32).items()} != rounded
