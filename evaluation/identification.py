"""IJB 1:N open-set identification: gallery/probe CSV files, CMC ranks and TPIR at FPIR.

Each probe template is searched in one gallery by cosine score (float64 template features, as insightface's
`ijb_evals.py` computes them). A probe is mated when its subject has a template in that gallery; the others
are non-mated. Two TPIR figures are reported:

- `tpir_at_fpir` is insightface's `evaluation_1N`: gallery templates in template-id order, a mated probe's
  mate is its subject's first template; the threshold at FPIR `f` is the `max(int(n * f) - 1, 0)`-th highest
  (0-based) of the `n` non-mated probes' top scores; a mated probe counts when its mate scores strictly above
  every template of the other subjects and strictly above the threshold.
- `tpir_at_fpir_exact` is fr's: subjects are scored by their best template; the threshold is the
  `floor(f * n)`-th highest (0-based) non-mated top score, so at most `f * n` non-mated probes score above
  it (the FPIR never exceeds the target); a mated probe counts when no other subject scores strictly higher
  than its own and that score is strictly above the threshold.

`cmc` rank-k is the percentage of a gallery's mated probes whose subject is among the k best-scoring subjects
(ties in the probe's favour). `cmc_pooled` is insightface's "[Mean] top-k": the probes whose mate template
is among the k highest gallery templates, counted over both galleries and divided by all probes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from evaluation.ijb import (
    IJBFormatError,
    IJBMeta,
    check_templates,
    dataset_dir,
    lost_templates,
    pool_meta,
    template_rows,
    usable_rows,
)
from evaluation.metrics import NonFiniteError, far_key

RANKS = (1, 5, 10)
FPIR_TARGETS = (1e-2, 1e-1)  # insightface's evaluation_1N defaults
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}
CMC_PLOT_RANKS = 50


def read_template_csv(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(template ids, subject ids) of a 1:N CSV (TEMPLATE_ID, SUBJECT_ID columns), one entry per template."""
    if not os.path.isfile(path):
        raise IJBFormatError(f"{path}: file not found")
    seen: Dict[int, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().upper() for h in next(reader, [])]
        if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
            raise IJBFormatError(f"{path}:1: expected TEMPLATE_ID and SUBJECT_ID columns, got {','.join(header)}")
        ti, si = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
        for number, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                template, subject = int(row[ti]), int(row[si])
            except (ValueError, IndexError):
                raise IJBFormatError(f"{path}:{number}: expected integer TEMPLATE_ID and SUBJECT_ID") from None
            if seen.setdefault(template, subject) != subject:
                raise IJBFormatError(
                    f"{path}:{number}: template {template} has subjects {seen[template]} and {subject}"
                )
    if not seen:
        raise IJBFormatError(f"{path}: no rows (expected TEMPLATE_ID,SUBJECT_ID lines after the header)")
    ids = np.array(list(seen), np.int64)
    return ids, np.array([seen[t] for t in ids], np.int64)


@dataclass(frozen=True, eq=False)
class GallerySearch:
    """One gallery's search: the per-probe scores and ranks every figure and plot is read from."""

    subject_rank: np.ndarray  # [mated] 1 + other subjects scoring strictly above the probe's subject
    subject_score: np.ndarray  # [mated] the best score of the probe's subject
    mate_score: np.ndarray  # [mated] the score of the subject's first gallery template (insightface's mate)
    mate_rank: np.ndarray  # [mated] 1 + gallery templates scoring strictly above that template
    best_nonmate: np.ndarray  # [mated] best score of another subject's template (-inf when there is none)
    nonmated_top: np.ndarray  # [non-mated] each non-mated probe's best gallery score, descending
    num_gallery: int  # gallery templates

    @property
    def insightface_correct(self) -> np.ndarray:
        """Mated probes whose mate scores strictly above every non-mate template."""
        return self.mate_score > self.best_nonmate


def insightface_threshold(nonmated_top: np.ndarray, fpir: float) -> Optional[float]:
    """evaluation_1N's threshold: index `max(int(n * fpir) - 1, 0)` of the descending non-mated top scores."""
    n = len(nonmated_top)
    return float(nonmated_top[max(int(n * fpir) - 1, 0)]) if n else None


def exact_threshold(nonmated_top: np.ndarray, fpir: float) -> Optional[float]:
    """fr's threshold: index `floor(fpir * n)`; None (no threshold) when that is past the last score."""
    k = int(np.floor(fpir * len(nonmated_top)))
    return float(nonmated_top[k]) if k < len(nonmated_top) else None


def search_gallery(
    probe_feats: np.ndarray, probe_subjects: np.ndarray, gallery_feats: np.ndarray, gallery_subjects: np.ndarray
) -> GallerySearch:
    """Score every probe against every gallery template (rows in the given order) and rank the mates."""
    scores = np.asarray(probe_feats, np.float64) @ np.asarray(gallery_feats, np.float64).T
    bad = np.argwhere(~np.isfinite(scores))
    if bad.size:  # NaN compares false everywhere: ranks and thresholds would be silently wrong
        probe, column = (int(i) for i in bad[0])
        raise NonFiniteError(
            f"the score of probe row {probe} against gallery row {column} is not finite ({len(bad)} such scores)"
        )
    probe_subjects = np.asarray(probe_subjects)
    subjects, first_column, column_subject = np.unique(gallery_subjects, return_index=True, return_inverse=True)
    column_subject = column_subject.ravel()
    # A subject's score is its best template's: fr ranks subjects, not templates.
    if len(subjects) == len(column_subject):  # one template per subject, as in IJB galleries
        per_subject = np.empty_like(scores)
        per_subject[:, column_subject] = scores
    else:
        per_subject = np.full((len(scores), len(subjects)), -np.inf)
        for col, subj in enumerate(column_subject):
            np.maximum(per_subject[:, subj], scores[:, col], out=per_subject[:, subj])
    mate = np.searchsorted(subjects, probe_subjects)
    mated = (mate < len(subjects)) & (subjects[np.minimum(mate, len(subjects) - 1)] == probe_subjects)
    rows, mate = np.flatnonzero(mated), mate[mated]
    subject_score = per_subject[rows, mate]
    subject_rank = 1 + (per_subject[rows] > subject_score[:, None]).sum(1)
    mate_score = scores[rows, first_column[mate]]
    mate_rank = 1 + (scores[rows] > mate_score[:, None]).sum(1)
    others = per_subject[rows]
    others[np.arange(len(rows)), mate] = -np.inf
    best_nonmate = others.max(1) if others.shape[1] else np.full(len(rows), -np.inf)
    nonmated_top = np.sort(scores[~mated].max(1))[::-1] if (~mated).any() else np.empty(0)
    return GallerySearch(subject_rank, subject_score, mate_score, mate_rank, best_nonmate, nonmated_top, len(scores.T))


def summarise(
    result: GallerySearch, ranks: Sequence[int] = RANKS, fpir_targets: Sequence[float] = FPIR_TARGETS
) -> Dict[str, object]:
    """JSON-ready figures of one gallery: CMC and both TPIRs (percent), their thresholds and hit counts."""
    n_mated = len(result.subject_rank)

    def percent(hits: np.ndarray) -> float:
        return 100.0 * float(np.count_nonzero(hits)) / n_mated if n_mated else float("nan")

    correct, tpir, tpir_exact, thresholds, thresholds_exact = result.insightface_correct, {}, {}, {}, {}
    for f in fpir_targets:
        key = far_key(f)
        thresholds[key] = insightface_threshold(result.nonmated_top, f)
        thresholds_exact[key] = exact_threshold(result.nonmated_top, f)
        above = -np.inf if thresholds[key] is None else thresholds[key]
        tpir[key] = percent(correct & (result.mate_score > above))
        above = -np.inf if thresholds_exact[key] is None else thresholds_exact[key]
        tpir_exact[key] = percent((result.subject_rank == 1) & (result.subject_score > above))
    return {
        "cmc": {f"rank{k}": percent(result.subject_rank <= k) for k in ranks},
        "tpir_at_fpir": tpir,
        "tpir_at_fpir_exact": tpir_exact,
        "thresholds": thresholds,
        "thresholds_exact": thresholds_exact,
        "top_k_hits": {f"rank{k}": int(np.count_nonzero(result.mate_rank <= k)) for k in ranks},
        "num_mated": n_mated,
        "num_nonmated": int(len(result.nonmated_top)),
        "num_gallery": int(result.num_gallery),
    }


def search(
    probe_feats: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_subjects: np.ndarray,
    ranks: Sequence[int] = RANKS,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
) -> Dict[str, object]:
    """`summarise` of `search_gallery`: CMC and TPIR (percent) at each FPIR of one gallery."""
    return summarise(search_gallery(probe_feats, probe_subjects, gallery_feats, gallery_subjects), ranks, fpir_targets)


def average(results: Sequence[Dict[str, object]], num_probes: int) -> Dict[str, Dict[str, float]]:
    """Means over galleries (insightface's mean TPIR is this mean) and insightface's pooled top-k."""
    out: Dict[str, Dict[str, float]] = {}
    for key in ("cmc", "tpir_at_fpir", "tpir_at_fpir_exact"):
        names = results[0][key].keys()
        out[key] = {n: float(np.mean([r[key][n] for r in results])) for n in names}
    out["cmc_pooled"] = {
        n: 100.0 * sum(r["top_k_hits"][n] for r in results) / num_probes if num_probes else float("nan")
        for n in results[0]["top_k_hits"]
    }
    out["num_probes"] = num_probes
    return out


def det_curve(result: GallerySearch) -> Tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) with insightface's hit rule at every non-mated top score taken as the threshold."""
    n, n_mated = len(result.nonmated_top), len(result.mate_score)
    if not n or not n_mated:
        return np.empty(0), np.empty(0)
    thresholds = result.nonmated_top
    fpir = np.searchsorted(-thresholds, -thresholds, side="left") / n  # non-mated tops strictly above
    hits = np.sort(result.mate_score[result.insightface_correct])
    tpir = (len(hits) - np.searchsorted(hits, thresholds, side="right")) / n_mated
    return fpir, 1.0 - tpir


def cmc_curve(result: GallerySearch, max_rank: int = CMC_PLOT_RANKS) -> Tuple[np.ndarray, np.ndarray]:
    """(ranks 1..R, percent of mated probes whose subject ranks within each), R at most the gallery size."""
    ranks = np.arange(1, max(1, min(max_rank, result.num_gallery)) + 1)
    if not len(result.subject_rank):
        return ranks, np.full(len(ranks), np.nan)
    counts = np.bincount(np.minimum(result.subject_rank, ranks[-1] + 1), minlength=ranks[-1] + 2)
    return ranks, 100.0 * np.cumsum(counts)[1 : ranks[-1] + 1] / len(result.subject_rank)


@dataclass(frozen=True, eq=False)
class IJBIdentification:
    """1:N outcome: each gallery's search, the number of probes and what --drop-nonfinite left out."""

    galleries: Dict[str, GallerySearch]
    num_probes: int
    dropped: Dict[str, int]
    ranks: Tuple[int, ...] = RANKS
    fpir_targets: Tuple[float, ...] = FPIR_TARGETS

    def to_dict(self) -> Dict[str, object]:
        """`{"G1": {...}, "G2": {...}, "average": {...}, "dropped": {...}}` (IJB-B: S1, S2)."""
        out: Dict[str, object] = {
            name: summarise(result, self.ranks, self.fpir_targets) for name, result in self.galleries.items()
        }
        out["average"] = average([out[name] for name in self.galleries], self.num_probes)
        out["dropped"] = dict(self.dropped)
        return out


def csv_path(meta: IJBMeta, name: str) -> str:
    """`meta/{ijbb,ijbc}_1N_<name>.csv`."""
    return os.path.join(dataset_dir(meta.root, meta.target), "meta", f"{meta.target.lower()}_1N_{name}.csv")


def _listed(meta: IJBMeta, path: str, lost: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """(template ids ascending, subjects, how many were dropped) of a 1:N CSV, less the templates in `lost`."""
    ids, subjects = read_template_csv(path)
    order = np.argsort(ids, kind="stable")
    ids, subjects = ids[order], subjects[order]
    if not lost.size:
        return ids, subjects, 0
    template_rows(np.unique(meta.templates), ids, path + " (template order)")  # unknown ids stay errors
    keep = ~np.isin(ids, lost)
    if not keep.any():
        raise NonFiniteError(f"{path}: every template listed lost all its images to non-finite features")
    return ids[keep], subjects[keep], int(len(ids) - keep.sum())


def identify_1n(
    meta: IJBMeta,
    raw_features: np.ndarray,
    flip: bool = True,
    norm: bool = True,
    detector: bool = True,
    *,
    drop_nonfinite: bool = False,
    source: str = "features",
    fpir_targets: Sequence[float] = FPIR_TARGETS,
    ranks: Sequence[int] = RANKS,
) -> IJBIdentification:
    """Open-set identification of the mixed probes in each gallery (G1, G2; IJB-B: S1, S2).

    Probe and gallery templates are taken in template-id order, as insightface's script takes them. A NaN or
    infinite feature is an error naming its row; with `drop_nonfinite` such images are left out, then the
    templates left without images (from the probe and gallery lists), all counted in `dropped`.
    """
    rows = usable_rows(meta, raw_features, drop_nonfinite, source)
    ids, pooled = pool_meta(meta, raw_features, flip, norm, detector, rows)
    check_templates(ids, pooled, source)
    lost = lost_templates(meta, ids)
    dropped = {"images": 0 if rows is None else len(raw_features) - len(rows), "templates": int(len(lost))}
    probe_path = csv_path(meta, "probe_mixed")
    probe_ids, probe_subjects, dropped["probes"] = _listed(meta, probe_path, lost)
    probes = pooled[template_rows(ids, probe_ids, probe_path + " (template order)")]
    galleries: Dict[str, GallerySearch] = {}
    for name in GALLERIES[meta.target]:
        path = csv_path(meta, f"gallery_{name}")
        gallery_ids, gallery_subjects, dropped[f"gallery_{name}"] = _listed(meta, path, lost)
        gallery = pooled[template_rows(ids, gallery_ids, path + " (template order)")]
        galleries[name] = search_gallery(probes, probe_subjects, gallery, gallery_subjects)
    return IJBIdentification(galleries, len(probe_ids), dropped, tuple(ranks), tuple(fpir_targets))


def evaluate_1n(meta: IJBMeta, raw_features: np.ndarray, *args, **kwargs) -> Dict[str, object]:
    """`identify_1n(...).to_dict()`: `{"G1": ..., "G2": ..., "average": ..., "dropped": ...}`."""
    return identify_1n(meta, raw_features, *args, **kwargs).to_dict()
