"""ROC, TAR at FAR (insightface's nearest point and the interpolated figure) and AUC from pair scores.

`roc_curve` reproduces `sklearn.metrics.roc_curve` (default `drop_intermediate=True`): scores are sorted
once, tied scores form one ROC point, collinear intermediate points are dropped and `(0, 0)` is prepended
with threshold `+inf`. insightface reads TAR at a FAR off that curve as the point whose FPR is nearest the
target (largest TPR among equally near points); `tar_at_far_interpolated` reads the curve at exactly the
target FPR instead, which never spends more false accepts than the target allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np

from evaluation.errors import UserInputError

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class NonFiniteError(UserInputError):
    """Embeddings, features or scores holding NaN or infinity: every figure computed from them would be wrong."""


@dataclass(frozen=True, eq=False)
class Roc:
    """Receiver operating characteristic: `fpr`, `tpr` non-decreasing, `thresholds` decreasing."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def roc_curve(scores: np.ndarray, labels: np.ndarray, drop_intermediate: bool = True) -> Roc:
    """ROC of `scores` (higher = more likely genuine) against boolean `labels`, as sklearn computes it."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} vs {labels.size}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:  # NaN sorts last and ties with nothing: the curve would be silently wrong
        raise NonFiniteError(f"scores must be finite, score {bad[0]} is {scores[bad[0]]} ({bad.size} non-finite)")
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        raise ValueError("ROC needs both genuine (label 1) and impostor (label 0) pairs")
    tps, fps, thresholds = _cumulative_counts(scores, labels)
    if drop_intermediate and tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds.astype(np.float64)]
    return Roc(fps / fps[-1], tps / tps[-1], thresholds)


def _cumulative_counts(scores: np.ndarray, labels: np.ndarray):
    """(tps, fps, thresholds) at each distinct score, thresholds decreasing: pairs scoring >= threshold."""
    n = scores.size
    if scores.dtype == np.float32:
        # One sort of 64-bit keys (order-preserving float bits, label in the low bit) instead of an
        # argsort plus gathers: several times faster on the 15.6M IJB-C scores.
        bits = (scores + np.float32(0)).view(np.uint32)  # + 0 folds -0.0 into 0.0: they tie
        keys = (bits ^ np.where(bits >> 31, np.uint32(0xFFFFFFFF), np.uint32(0x80000000))).astype(np.uint64)
        keys <<= np.uint64(1)
        keys |= labels
        keys.sort()
        positives = np.cumsum(keys & np.uint64(1), dtype=np.int64)
        keys >>= np.uint64(1)
        starts = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1][::-1]  # groups, highest score first
        top = keys[starts].astype(np.uint32)
        del keys
        bits = np.where(top >> 31, top ^ np.uint32(0x80000000), ~top)
        below = np.where(starts > 0, positives[np.maximum(starts - 1, 0)], 0)
        tps = positives[-1] - below
        return tps, (n - starts) - tps, bits.view(np.float32)
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    # The last index of each run of equal scores: all tied pairs are accepted together.
    last = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), n - 1)
    tps = np.cumsum(labels[order], dtype=np.int64)[last]
    return tps, last + 1 - tps, sorted_scores[last]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve with non-decreasing `fpr`, by the trapezoidal rule."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tar_at_far_nearest(roc: Roc, far: float) -> float:
    """insightface's TAR at `far`: the ROC point with FPR nearest `far`; the largest TPR among ties."""
    dist = np.abs(roc.fpr - far)
    nearest = np.flatnonzero(dist == dist.min())
    return float(roc.tpr[nearest].max())


def tar_at_far_interpolated(roc: Roc, far: float) -> float:
    """TPR of the ROC at FPR exactly `far`, linear between the bracketing points (the stricter figure)."""
    # At a repeated FPR (a vertical run) the curve's value there is its highest TPR.
    fpr, idx = np.unique(roc.fpr, return_index=True)
    top = np.maximum.reduceat(roc.tpr, idx)
    return float(np.interp(far, fpr, top))


def far_table(roc: Roc, targets: Sequence[float] = FAR_TARGETS) -> Dict[str, Dict[str, float]]:
    """`{"nearest": {"1e-06": percent, ...}, "interpolated": {...}}` of TAR at each FAR target."""
    return {
        "nearest": {far_key(t): 100.0 * tar_at_far_nearest(roc, t) for t in targets},
        "interpolated": {far_key(t): 100.0 * tar_at_far_interpolated(roc, t) for t in targets},
    }


def far_key(far: float) -> str:
    """JSON key of a FAR target as Python prints it in exponent form: 1e-06, ..., 1e-01."""
    return f"{far:.0e}"
