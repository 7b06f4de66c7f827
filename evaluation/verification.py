"""Pair verification metrics under insightface's LFW-style 10-fold protocol (accuracy, TAR@FAR=1e-3).

The protocol, as insightface's `verification.py` runs it: L2-normalise every embedding; a pair's distance is
the squared L2 distance of its two normalised embeddings; a pair is predicted "same" when
`dist < threshold`. The pairs are split into `k` contiguous folds without shuffling (the first `N % k`
folds hold one extra pair, as sklearn's `KFold`). For each fold, the threshold in `arange(0, 4, 0.01)`
with the best accuracy on the other folds (the first one on ties) is applied to the held-out fold.
TAR@FAR uses the finer grid `arange(0, 4, 0.001)`: on the other folds the threshold whose FAR is the
target is found by linear interpolation of threshold against FAR (threshold 0 when no threshold reaches
the target), then TAR (`val`) and FAR are measured on the held-out fold.

Counts come from binary search over sorted distances, so 6,000 pairs take milliseconds.

Two mean norms are reported. `xnorm` is fr's: the mean L2 norm of the embeddings evaluated (with the test-time
flip, of the sums image + flip). `xnorm_insightface` is insightface's XNorm, as its `verification.py` prints it:
the mean L2 norm of every raw view's embedding, the original images' and the flipped images' alike (so about
half of `xnorm` for a flip-sum); it needs the views (`evaluate(..., views=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from evaluation.metrics import NonFiniteError, Roc, auc, roc_curve

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3


@dataclass(frozen=True, eq=False)
class BinVerification:
    """Outcome of `evaluate`: per-fold accuracies and thresholds, their summary, TAR@FAR and mean norm."""

    fold_accuracies: np.ndarray
    accuracy: float
    std: float
    best_thresholds: np.ndarray
    xnorm: float
    val: float
    val_std: float
    far: float
    roc: Optional[Roc] = None  # over all pairs, score = -distance; None when all pairs share one label
    auc: float = float("nan")
    xnorm_insightface: Optional[float] = None  # insightface's XNorm; None when the views were not given

    def to_dict(self) -> Dict[str, Any]:
        """Plain floats and lists, ready for `json.dumps` (`xnorm_insightface` only when it was computed)."""
        out = {
            "accuracy": float(self.accuracy),
            "std": float(self.std),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "best_thresholds": [float(t) for t in self.best_thresholds],
            "xnorm": float(self.xnorm),
            "val": float(self.val),
            "val_std": float(self.val_std),
            "far": float(self.far),
            "auc": float(self.auc) if np.isfinite(self.auc) else None,  # JSON has no NaN
        }
        if self.xnorm_insightface is not None:
            out["xnorm_insightface"] = float(self.xnorm_insightface)
        return out


def kfold_slices(n: int, k: int) -> List[Tuple[int, int]]:
    """Contiguous `[start, stop)` test ranges of `k` folds over `n` items, split as sklearn's `KFold`."""
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, sizes)]


def row_norms(embeddings: np.ndarray) -> np.ndarray:
    """L2 norm of every row."""
    return np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings))


def pair_distances(embeddings: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the normalised rows 2i and 2i+1; zero rows stay zero (no NaN)."""
    # A zero row is left as is rather than divided by zero, as sklearn's `normalize` does.
    unit = embeddings / np.where(norms == 0, 1.0, norms)[:, None]
    diff = unit[0::2] - unit[1::2]
    return np.einsum("ij,ij->i", diff, diff)


def _counts_below(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many values are strictly below it (the "predicted same" count)."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def _fold_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per threshold, (same pairs predicted same, different pairs predicted same) among the given pairs."""
    accepted_same = _counts_below(np.sort(dist[issame]), thresholds)
    accepted_diff = _counts_below(np.sort(dist[~issame]), thresholds)
    return accepted_same, accepted_diff


def _split_counts(dist, issame, folds, thresholds):
    """Accepted-same/accepted-diff counts and pair totals per test fold, plus their totals over all pairs."""
    per_fold = [_fold_counts(dist[a:b], issame[a:b], thresholds) for a, b in folds]
    tp = np.stack([c[0] for c in per_fold])
    fp = np.stack([c[1] for c in per_fold])
    n_same = np.array([int(issame[a:b].sum()) for a, b in folds])
    n_total = np.array([b - a for a, b in folds])
    return tp, fp, n_same, n_total - n_same


def _train_view(counts: np.ndarray, totals: np.ndarray, fold: int, single: bool):
    """Counts over every fold but `fold` (over all folds when there is a single fold, as insightface)."""
    if single:
        return counts[fold], totals[fold]
    return counts.sum(axis=0) - counts[fold], totals.sum() - totals[fold]


def _accuracy_folds(dist, issame, folds):
    """Held-out accuracy and the train-chosen threshold of every fold."""
    tp, fp, n_same, n_diff = _split_counts(dist, issame, folds, ACC_THRESHOLDS)
    single = len(folds) == 1
    accuracies = np.zeros(len(folds))
    thresholds = np.zeros(len(folds))
    for f in range(len(folds)):
        train_tp, train_same = _train_view(tp, n_same, f, single)
        train_fp, train_diff = _train_view(fp, n_diff, f, single)
        # Correct = accepted same + rejected different; one denominator, so argmax over counts is exact.
        correct = train_tp + (train_diff - train_fp)
        best = int(np.argmax(correct))
        thresholds[f] = ACC_THRESHOLDS[best]
        accuracies[f] = (tp[f, best] + n_diff[f] - fp[f, best]) / float(n_same[f] + n_diff[f])
    return accuracies, thresholds


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Threshold at which the non-decreasing `far` curve reaches `target`, by linear interpolation.

    Between two distinct FAR values the segment runs from the last threshold holding the lower value to
    the next threshold; a target equal to a FAR value maps to the last threshold holding it. Returns 0.0
    when even the largest FAR is below the target, as insightface does.
    """
    if far[-1] < target:
        return 0.0
    j = int(np.searchsorted(far, target, side="right")) - 1
    if j < 0:  # the smallest FAR is already above the target: extrapolating below the grid makes no sense
        return float(thresholds[0])
    if far[j] == target or j == len(far) - 1:
        return float(thresholds[j])
    slope = (thresholds[j + 1] - thresholds[j]) / (far[j + 1] - far[j])
    return float(thresholds[j] + (target - far[j]) * slope)


def _rate(numerator, denominator) -> float:
    """A ratio that is 0 for an empty denominator (a fold without same or without different pairs)."""
    return float(numerator) / float(denominator) if denominator else 0.0


def _val_folds(dist, issame, folds, target):
    """Held-out TAR and FAR of every fold at the threshold where the train folds' FAR equals `target`."""
    _, fp, _, n_diff = _split_counts(dist, issame, folds, VAL_THRESHOLDS)
    single = len(folds) == 1
    vals = np.zeros(len(folds))
    fars = np.zeros(len(folds))
    for f, (a, b) in enumerate(folds):
        train_fp, train_diff = _train_view(fp, n_diff, f, single)
        far_train = train_fp / float(train_diff) if train_diff else np.zeros(len(VAL_THRESHOLDS))
        threshold = threshold_at_far(far_train, VAL_THRESHOLDS, target)
        accepted = dist[a:b] < threshold
        same = issame[a:b]
        vals[f] = _rate(np.sum(accepted & same), np.sum(same))
        fars[f] = _rate(np.sum(accepted & ~same), np.sum(~same))
    return vals, fars


def _as_array(embeddings: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy array or torch tensor."""
    if hasattr(embeddings, "detach"):  # torch tensor; duck-typed so this module needs no torch import
        embeddings = embeddings.detach().cpu().float().numpy()
    return np.asarray(embeddings, dtype=np.float64)


def insightface_xnorm(views: Sequence[Any]) -> float:
    """insightface's XNorm: the mean L2 norm over every row of every view (e.g. the original and the flipped
    images' embeddings [M, D] each), before any normalisation or flip-sum."""
    arrays = [_as_array(view) for view in views]
    if not arrays or any(a.ndim != 2 for a in arrays):
        raise ValueError("views must be one or more 2-D embedding arrays [M, D]")
    return float(np.mean(np.concatenate([row_norms(a) for a in arrays])))


def evaluate(
    embeddings: Any, issame: Sequence[bool], nrof_folds: int = 10, views: Optional[Sequence[Any]] = None
) -> BinVerification:
    """Verification metrics of `embeddings` [2N, D] (pair i = rows 2i, 2i+1) against `issame` [N]. `views`, the
    raw per-view embeddings that `embeddings` sums (the original and the flipped images'), add insightface's
    XNorm (`xnorm_insightface`)."""
    emb = _as_array(embeddings)
    same = np.asarray(issame, dtype=bool).reshape(-1)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [2N, D], got shape {tuple(emb.shape)}")
    if emb.shape[0] % 2:
        raise ValueError(f"embeddings must have an even number of rows (pairs at 2i, 2i+1), got {emb.shape[0]}")
    n = emb.shape[0] // 2
    if len(same) != n:
        raise ValueError(f"issame has {len(same)} entries, expected {n} (one per pair of the {emb.shape[0]} rows)")
    if nrof_folds < 1:
        raise ValueError(f"nrof_folds must be at least 1, got {nrof_folds}")
    if n < nrof_folds:
        raise ValueError(f"need at least nrof_folds={nrof_folds} pairs, got {n}")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:  # a NaN distance is never below a threshold: every such pair would count as "different"
        raise NonFiniteError(
            f"embedding row {bad[0]} (pair {bad[0] // 2}) holds NaN or infinity "
            f"({bad.size} of {len(emb)} rows do): the model's output is not finite"
        )

    if views is not None and any(np.shape(view) != emb.shape for view in views):
        shapes = ", ".join(str(tuple(np.shape(view))) for view in views)
        raise ValueError(f"views must each have the embeddings' shape {tuple(emb.shape)}, got {shapes}")
    norms = row_norms(emb)
    dist = pair_distances(emb, norms)
    folds = kfold_slices(n, nrof_folds)
    accuracies, thresholds = _accuracy_folds(dist, same, folds)
    vals, fars = _val_folds(dist, same, folds, FAR_TARGET)
    # A smaller distance means "same", so the ROC's score is the negated distance.
    roc = roc_curve(-dist, same) if 0 < same.sum() < n else None
    return BinVerification(
        fold_accuracies=accuracies,
        accuracy=float(np.mean(accuracies)),
        std=float(np.std(accuracies)),
        best_thresholds=thresholds,
        xnorm=float(np.mean(norms)),
        val=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far=float(np.mean(fars)),
        roc=roc,
        auc=auc(roc.fpr, roc.tpr) if roc is not None else float("nan"),
        xnorm_insightface=insightface_xnorm(views) if views is not None else None,
    )
