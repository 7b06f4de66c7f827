"""IJB 1:N open-set identification: gallery/probe CSV files, CMC ranks and TPIR at FPIR.

Each probe template is searched in one gallery by cosine score. A probe is mated when its subject has a
template in that gallery; its rank is 1 + the number of other gallery subjects scoring higher than its best
mate. Non-mated probes set the threshold: at FPIR `f` it is the `floor(f * n)`-th highest (0-based) of their
top scores, so at most that many of them score above it; a mated probe counts towards TPIR when its mate
ranks first and scores strictly above the threshold.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, Sequence, Tuple

import numpy as np

from evaluation.ijb import (
    IJBFormatError,
    IJBMeta,
    check_templates,
    dataset_dir,
    image_weights,
    lost_templates,
    pool_templates,
    template_rows,
    usable_rows,
)
from evaluation.metrics import NonFiniteError

RANKS = (1, 5, 10)
FPIR_TARGETS = (1e-2, 1e-1)
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


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


def search(
    probe_feats: np.ndarray,
    probe_subjects: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_subjects: np.ndarray,
    ranks: Sequence[int] = RANKS,
    fpir_targets: Sequence[float] = FPIR_TARGETS,
) -> Dict[str, object]:
    """CMC (percent of mated probes with the mate within rank k) and TPIR (percent) at each FPIR."""
    scores = np.asarray(probe_feats, np.float32) @ np.asarray(gallery_feats, np.float32).T
    bad = np.argwhere(~np.isfinite(scores))
    if bad.size:  # NaN compares false everywhere: ranks and thresholds would be silently wrong
        probe, column = (int(i) for i in bad[0])
        raise NonFiniteError(
            f"the score of probe row {probe} against gallery row {column} is not finite ({len(bad)} such scores)"
        )
    subjects, column_subject = np.unique(gallery_subjects, return_inverse=True)
    # A subject's score is its best template's: rank subjects, not templates.
    if len(subjects) == len(column_subject):  # one template per subject, as in IJB galleries
        per_subject = np.empty_like(scores)
        per_subject[:, column_subject] = scores
    else:
        per_subject = np.full((len(scores), len(subjects)), -np.inf, np.float32)
        for col, subj in enumerate(column_subject):
            np.maximum(per_subject[:, subj], scores[:, col], out=per_subject[:, subj])
    mate = np.searchsorted(subjects, probe_subjects)
    mated = (mate < len(subjects)) & (subjects[np.minimum(mate, len(subjects) - 1)] == probe_subjects)
    rows = np.flatnonzero(mated)
    mate_scores = per_subject[rows, mate[rows]]
    rank = 1 + (per_subject[rows] > mate_scores[:, None]).sum(1)
    cmc = {f"rank{k}": 100.0 * float(np.mean(rank <= k)) if len(rows) else float("nan") for k in ranks}
    top_nonmated = np.sort(per_subject[~mated].max(1))[::-1] if (~mated).any() else np.array([])
    tpir = {}
    for f in fpir_targets:
        k = int(np.floor(f * len(top_nonmated)))
        threshold = top_nonmated[k] if k < len(top_nonmated) else -np.inf
        hits = (rank == 1) & (mate_scores > threshold)
        tpir[f"{f:.0e}"] = 100.0 * float(np.mean(hits)) if len(rows) else float("nan")
    return {
        "cmc": cmc,
        "tpir_at_fpir": tpir,
        "num_mated": int(len(rows)),
        "num_nonmated": int(len(top_nonmated)),
        "num_gallery": int(len(gallery_subjects)),
    }


def average(results: Sequence[Dict[str, object]]) -> Dict[str, Dict[str, float]]:
    """Mean of the CMC and TPIR figures over galleries."""
    out: Dict[str, Dict[str, float]] = {}
    for key in ("cmc", "tpir_at_fpir"):
        names = results[0][key].keys()
        out[key] = {n: float(np.mean([r[key][n] for r in results])) for n in names}
    return out


def csv_path(meta: IJBMeta, name: str) -> str:
    """`meta/{ijbb,ijbc}_1N_<name>.csv`."""
    return os.path.join(dataset_dir(meta.root, meta.target), "meta", f"{meta.target.lower()}_1N_{name}.csv")


def _listed(meta: IJBMeta, path: str, lost: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """(template ids, subjects, how many were dropped) of a 1:N CSV, less the templates in `lost`."""
    ids, subjects = read_template_csv(path)
    if not lost.size:
        return ids, subjects, 0
    template_rows(np.unique(meta.templates), ids, path + " (template order)")  # unknown ids stay errors
    keep = ~np.isin(ids, lost)
    if not keep.any():
        raise NonFiniteError(f"{path}: every template listed lost all its images to non-finite features")
    return ids[keep], subjects[keep], int(len(ids) - keep.sum())


def evaluate_1n(
    meta: IJBMeta,
    raw_features: np.ndarray,
    flip: bool = True,
    norm: bool = True,
    detector: bool = True,
    *,
    drop_nonfinite: bool = False,
    source: str = "features",
) -> Dict[str, object]:
    """Open-set identification of the mixed probes per gallery: `{"G1": ..., "G2": ..., "average", "dropped"}`.

    A NaN or infinite feature is an error naming its row; with `drop_nonfinite` such images are left out, then
    the templates left without images (from the probe and gallery lists), all counted in `"dropped"`.
    """
    rows = usable_rows(meta, raw_features, drop_nonfinite, source)
    weights = image_weights(raw_features, meta.det_scores, flip=flip, norm=norm, detector=detector, rows=rows)
    ids, pooled = pool_templates(raw_features, meta.templates, meta.medias, weights, flip=flip, rows=rows)
    check_templates(ids, pooled, source)
    lost = lost_templates(meta, ids)
    dropped = {"images": 0 if rows is None else len(raw_features) - len(rows), "templates": int(len(lost))}
    probe_path = csv_path(meta, "probe_mixed")
    probe_ids, probe_subjects, dropped["probes"] = _listed(meta, probe_path, lost)
    probes = pooled[template_rows(ids, probe_ids, probe_path + " (template order)")]
    results: Dict[str, object] = {}
    for name in GALLERIES[meta.target]:
        path = csv_path(meta, f"gallery_{name}")
        gallery_ids, gallery_subjects, dropped[f"gallery_{name}"] = _listed(meta, path, lost)
        gallery = pooled[template_rows(ids, gallery_ids, path + " (template order)")]
        results[name] = search(probes, probe_subjects, gallery, gallery_subjects)
    results["average"] = average([results[n] for n in GALLERIES[meta.target]])
    results["dropped"] = dropped
    return results
