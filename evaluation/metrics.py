"""ROC, TAR at FAR (insightface's nearest point, on the dropped and the full ROC, and interpolated) and AUC.

`roc_curve` reproduces `sklearn.metrics.roc_curve` (default `drop_intermediate=True`): tied scores form one
ROC point, intermediate points of equal steps are dropped and `(0, 0)` is prepended with threshold `+inf`.
insightface's `eval_ijbc.py` reads TAR at a FAR off that dropped curve as the point whose FPR is nearest the
target, the largest TPR among equally near points (it reverses the curve and takes the first minimum of
`abs(fpr - far)`), and prints `'%.2f' % (tpr * 100)`. Dropping points can move that nearest point, so the
same rule on the full curve (`drop_intermediate=False`) is a figure of its own; `tar_at_far_interpolated`
reads the curve at exactly the target FPR, which never spends more false accepts than the target allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

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
    return roc_from_counts(*cumulative_counts(scores, labels), drop_intermediate=drop_intermediate)


def cumulative_counts(scores: np.ndarray, labels: np.ndarray):
    """(tps, fps, thresholds) at each distinct score, thresholds decreasing: pairs scoring >= threshold.

    The genuine and impostor scores are sorted apart (a plain sort, several times faster than an argsort
    of all scores) and their distinct values merged: the few genuine values are inserted among the many
    impostor values.
    """
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
    genuine, impostor = scores[labels], scores[~labels]
    genuine.sort()
    impostor.sort()
    g_values, g_counts = _runs(genuine)
    values, i_counts = _runs(impostor)
    del genuine, impostor
    at = np.searchsorted(values, g_values)
    shared = at < len(values)
    shared[shared] = values[at[shared]] == g_values[shared]  # a genuine score tied with an impostor score
    counts = np.zeros(len(values), np.int64)
    counts[at[shared]] = g_counts[shared]
    new = ~shared
    values = np.insert(values, at[new], g_values[new])  # np.insert keeps equal positions in the given order
    counts = np.insert(counts, at[new], g_counts[new])
    i_counts = np.insert(i_counts, at[new], 0)
    return np.cumsum(counts[::-1]), np.cumsum(i_counts[::-1]), values[::-1]


def _runs(sorted_values: np.ndarray):
    """(distinct values, how many times each occurs) of an ascending array; -0.0 and 0.0 are one value."""
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return sorted_values[starts], np.diff(np.r_[starts, sorted_values.size]).astype(np.int64)


def roc_from_counts(tps: np.ndarray, fps: np.ndarray, thresholds: np.ndarray, drop_intermediate: bool = True) -> Roc:
    """The ROC of `cumulative_counts`, with sklearn's `drop_intermediate`: a point is dropped when both
    second differences of (fps, tps) are zero there (equal steps before and after it), and `(0, 0)` with
    threshold `+inf` is prepended."""
    if drop_intermediate and tps.size > 2:
        keep = np.ones(tps.size, bool)
        step_f, step_t = np.diff(fps), np.diff(tps)
        np.logical_or(step_f[1:] != step_f[:-1], step_t[1:] != step_t[:-1], out=keep[1:-1])  # second differences
        del step_f, step_t
        keep = np.flatnonzero(keep)
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    fpr = np.empty(fps.size + 1)
    tpr = np.empty(tps.size + 1)
    fpr[0] = tpr[0] = 0.0
    np.divide(fps, fps[-1], out=fpr[1:])
    np.divide(tps, tps[-1], out=tpr[1:])
    return Roc(fpr, tpr, np.concatenate(([np.inf], thresholds.astype(np.float64))))


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve with non-decreasing `fpr`, by the trapezoidal rule."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tar_at_far_nearest(roc: Roc, far: float) -> float:
    """insightface's TAR at `far`: the ROC point with FPR nearest `far`; the largest TPR among ties.

    |fpr - far| (as floats) falls up to `far` and rises after it, so the nearest points are the last one left
    of `far` or those from the first one at or right of it: a binary search, not a scan of every point.
    """
    fpr, tpr = roc.fpr, roc.tpr
    right = int(np.searchsorted(fpr, far))  # fpr[:right] < far <= fpr[right:]
    near_left = abs(fpr[right - 1] - far) if right > 0 else np.inf
    near_right = abs(fpr[right] - far) if right < len(fpr) else np.inf
    if near_right > near_left:
        return float(tpr[right - 1])  # the highest TPR left of `far`
    end = right  # past every point as near as fpr[right] (several FPRs may round to the same distance)
    while end < len(fpr) and abs(fpr[end] - far) == near_right:
        end = int(np.searchsorted(fpr, fpr[end], side="right"))
    return float(tpr[end - 1])  # TPR never decreases: the last of the nearest points has the largest


def tar_at_far_interpolated(roc: Roc, far: float) -> float:
    """TPR of the ROC at FPR exactly `far` (the stricter figure): the highest TPR of a point at that FPR, else
    linear between the last point left of it and the first point right of it, so never a TPR that needs
    more false accepts than `far` allows (a vertical run right of `far` is reached only at its foot)."""
    at = np.flatnonzero(roc.fpr == far)
    if at.size:
        return float(roc.tpr[at].max())
    right = int(np.searchsorted(roc.fpr, far, side="right"))  # fpr is non-decreasing
    if right == 0:
        return float(roc.tpr[0])
    if right == len(roc.fpr):
        return float(roc.tpr[-1])
    left = right - 1
    step = (far - roc.fpr[left]) / (roc.fpr[right] - roc.fpr[left])
    return float(roc.tpr[left] + (roc.tpr[right] - roc.tpr[left]) * step)


def far_table(
    roc: Roc, targets: Sequence[float] = FAR_TARGETS, full: Optional[Roc] = None
) -> Dict[str, Dict[str, float]]:
    """`{"nearest": {"1e-06": percent, ...}, "interpolated": {...}}` of TAR at each FAR target.

    With `full` (the ROC without dropped points) also `"full_roc"`: the nearest point on that curve.
    """
    table = {
        "nearest": {far_key(t): 100.0 * tar_at_far_nearest(roc, t) for t in targets},
        "interpolated": {far_key(t): 100.0 * tar_at_far_interpolated(roc, t) for t in targets},
    }
    if full is not None:
        table["full_roc"] = {far_key(t): 100.0 * tar_at_far_nearest(full, t) for t in targets}
    return table


def verification_table(
    scores: np.ndarray, labels: np.ndarray, targets: Sequence[float] = FAR_TARGETS
) -> Tuple[Roc, Dict[str, Dict[str, float]]]:
    """(sklearn's dropped ROC, `far_table` with `"full_roc"`) from one sort of the scores."""
    counts = cumulative_counts(scores, labels)
    full = roc_from_counts(*counts, drop_intermediate=False)
    roc = roc_from_counts(*counts, drop_intermediate=True)
    return roc, far_table(roc, targets, full)


def far_key(far: float) -> str:
    """JSON key of a FAR/FPIR target in exponent form as Python prints it: 1e-06, ..., 1e-01, 5e-03.

    A target that one significant digit does not hold keeps its digits: 0.0015 -> "1.5e-03".
    """
    for digits in range(17):
        key = f"{far:.{digits}e}"
        if float(key) == far:
            return key
    return repr(far)
