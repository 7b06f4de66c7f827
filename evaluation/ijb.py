"""IJB-B / IJB-C: insightface's file layout, aligned-image loading, template pooling and 1:1 pair scoring.

Layout under `ROOT/IJBC` (or `ROOT/IJBB`, or ROOT itself): `meta/ijbc_face_tid_mid.txt` (`image template
media`), `meta/ijbc_name_5pts_score.txt` (`image x1 y1 ... x5 y5 score`, matched to the first file by row),
`meta/ijbc_template_pair_label.txt` (`t1 t2 label`) and the images in `loose_crop/`.

Template features follow insightface's test modes: an image's feature is the sum of the embeddings of the
image and of its flip (F1), its norm is kept (N1) and it is multiplied by the detector score (D1); within a
template the images of one media are averaged and the media are summed, then L2-normalised.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from evaluation.align import align_face
from evaluation.metrics import Roc, auc, far_table, roc_curve
from evaluation.errors import UserInputError

logger = logging.getLogger(__name__)

TARGETS = ("IJBB", "IJBC")
POOL_CHUNK = 1 << 17
DENSE_BLOCK_BYTES = 512 << 20


class IJBFormatError(UserInputError):
    """A malformed or inconsistent IJB file; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class IJBMeta:
    """Per-image rows of the meta files (row order = feature order) and the 1:1 pair list."""

    root: str
    target: str
    names: np.ndarray        # [N] image file names in loose_crop/
    templates: np.ndarray    # [N] int64
    medias: np.ndarray       # [N] int64
    landmarks: np.ndarray    # [N, 5, 2] float32
    det_scores: np.ndarray   # [N] float32


def dataset_dir(root: str, target: str) -> str:
    """`ROOT/IJBC` when it exists, else ROOT itself."""
    if target not in TARGETS:
        raise ValueError(f"unknown IJB target {target!r}; expected one of {', '.join(TARGETS)}")
    sub = os.path.join(root, target)
    return sub if os.path.isdir(sub) else root


def meta_path(root: str, target: str, suffix: str) -> str:
    """`.../meta/{ijbb,ijbc}_<suffix>`."""
    return os.path.join(dataset_dir(root, target), "meta", f"{target.lower()}_{suffix}")


def _lines(path: str) -> Iterator[Tuple[int, list]]:
    """(line number, whitespace-split fields) of the non-empty lines of `path`."""
    if not os.path.isfile(path):
        raise IJBFormatError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.split()
            if fields:
                yield number, fields


def read_tid_mid(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names, templates, medias) of a `*_face_tid_mid.txt` file."""
    names, templates, medias = [], [], []
    for number, fields in _lines(path):
        try:
            if len(fields) != 3:
                raise ValueError
            templates.append(int(fields[1]))
            medias.append(int(fields[2]))
        except ValueError:
            raise IJBFormatError(f"{path}:{number}: expected 'image template media', got {' '.join(fields)!r}") from None
        names.append(fields[0])
    return np.array(names), np.array(templates, np.int64), np.array(medias, np.int64)


def read_landmarks(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(names, landmarks [N, 5, 2], detector scores [N]) of a `*_name_5pts_score.txt` file."""
    names, values = [], []
    for number, fields in _lines(path):
        try:
            if len(fields) != 12:
                raise ValueError
            values.append([float(v) for v in fields[1:]])
        except ValueError:
            raise IJBFormatError(f"{path}:{number}: expected 'image x1 y1 ... x5 y5 score' (12 fields), "
                                 f"got {len(fields)}") from None
        names.append(fields[0])
    arr = np.array(values, np.float32).reshape(-1, 11)
    return np.array(names), arr[:, :10].reshape(-1, 5, 2), arr[:, 10]


def read_pairs(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t1, t2, label) of a `*_template_pair_label.txt` file, parsed in one pass (15.6M lines for IJB-C)."""
    if not os.path.isfile(path):
        raise IJBFormatError(f"{path}: file not found")
    try:  # numpy's C reader: 2 s for IJB-C's 15.6M rows; it rejects ragged rows and non-integers
        flat = np.loadtxt(path, dtype=np.int64, ndmin=2)
        if flat.shape[1] != 3 and flat.size:
            raise ValueError
    except ValueError:
        flat = None
    if flat is None:
        # Slow path, only to name the malformed line.
        for number, fields in _lines(path):
            if len(fields) != 3 or not all(f.lstrip("-").isdigit() for f in fields):
                raise IJBFormatError(f"{path}:{number}: expected 't1 t2 label', got {' '.join(fields)!r}")
        raise IJBFormatError(f"{path}: expected 't1 t2 label' rows")
    flat = flat.reshape(-1, 3)
    labels = flat[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        raise IJBFormatError(f"{path}:{_line_of_row(path, int(bad[0]))}: label must be 0 or 1, got {labels[bad[0]]}")
    return flat[:, 0].copy(), flat[:, 1].copy(), labels.astype(bool)


def _line_of_row(path: str, row: int) -> int:
    """1-based line number of the `row`-th (0-based) non-empty line of `path`."""
    for index, (number, _) in enumerate(_lines(path)):
        if index == row:
            return number
    return -1


def load_meta(root: str, target: str = "IJBC") -> IJBMeta:
    """Read and cross-check the per-image meta files of `target` under `root`."""
    tid_path = meta_path(root, target, "face_tid_mid.txt")
    lmk_path = meta_path(root, target, "name_5pts_score.txt")
    names, templates, medias = read_tid_mid(tid_path)
    lmk_names, landmarks, scores = read_landmarks(lmk_path)
    if len(names) != len(lmk_names):
        raise IJBFormatError(f"{lmk_path}: {len(lmk_names)} rows but {tid_path} has {len(names)}; "
                             "the files are matched row by row")
    differ = np.flatnonzero(names != lmk_names)
    if differ.size:
        row = int(differ[0])
        raise IJBFormatError(f"{lmk_path}:{_line_of_row(lmk_path, row)}: image {lmk_names[row]!r} but "
                             f"{tid_path}:{_line_of_row(tid_path, row)} names {names[row]!r}")
    return IJBMeta(os.path.abspath(root), target, names, templates, medias, landmarks, scores)


def check_images(meta: IJBMeta) -> str:
    """The `loose_crop` directory, after checking that it holds every image of the meta files."""
    crop_dir = os.path.join(dataset_dir(meta.root, meta.target), "loose_crop")
    if not os.path.isdir(crop_dir):
        raise IJBFormatError(f"{crop_dir}: image directory not found")
    present = set(os.listdir(crop_dir))
    for row, name in enumerate(meta.names):
        if name not in present:
            tid_path = meta_path(meta.root, meta.target, "face_tid_mid.txt")
            raise IJBFormatError(f"{tid_path}:{_line_of_row(tid_path, row)}: image {name!r} "
                                 f"missing from {crop_dir}")
    return crop_dir


def _load_aligned(crop_dir: str, name: str, landmarks: np.ndarray) -> np.ndarray:
    """One aligned 112x112 RGB uint8 crop."""
    with Image.open(os.path.join(crop_dir, name)) as im:
        return align_face(np.asarray(im.convert("RGB")), landmarks)


def iter_aligned(meta: IJBMeta, batch_size: int = 256, rows: Optional[np.ndarray] = None,
                 workers: int = 4) -> Iterator[np.ndarray]:
    """Batches of aligned 112x112 RGB uint8 crops, [B, 112, 112, 3], in row order (or `rows` order).

    Decoding and warping run in `workers` threads: Pillow releases the GIL for both.
    """
    crop_dir = check_images(meta)
    rows = np.arange(len(meta.names)) if rows is None else rows
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            yield np.stack(list(pool.map(lambda r: _load_aligned(crop_dir, meta.names[r], meta.landmarks[r]), chunk)))


def embed_meta(meta: IJBMeta, embed: Callable[[np.ndarray], np.ndarray], batch_size: int = 256,
               rows: Optional[np.ndarray] = None, progress: bool = False) -> np.ndarray:
    """Raw per-image features [N, 2, D] (original, flipped) from `embed(uint8 [B,112,112,3]) -> [B, D]`."""
    batches: Iterator[np.ndarray] = iter_aligned(meta, batch_size, rows)
    if progress:
        from tqdm import tqdm  # only for the optional progress bar

        n = len(meta.names) if rows is None else len(rows)
        batches = tqdm(batches, total=(n + batch_size - 1) // batch_size, desc="embed", unit="batch")
    out = []
    for batch in batches:
        both = embed(np.concatenate([batch, batch[:, :, ::-1]]))
        out.append(np.stack([both[:len(batch)], both[len(batch):]], axis=1).astype(np.float32))
    return np.concatenate(out)


def check_features(features: np.ndarray, n_rows: int, path: str = "features") -> np.ndarray:
    """`features` checked to be (N, D) or (N, 2, D) with N = number of meta rows."""
    if features.ndim not in (2, 3) or (features.ndim == 3 and features.shape[1] != 2):
        raise IJBFormatError(f"{path}: expected shape (N, D) or (N, 2, D), got {features.shape}")
    if len(features) != n_rows:
        raise IJBFormatError(f"{path}: {len(features)} feature rows but the meta files have {n_rows} images")
    return features


def image_weights(raw: np.ndarray, det_scores: np.ndarray, flip: bool = True, norm: bool = True,
                  detector: bool = True) -> np.ndarray:
    """Per-image scale factor [N] of insightface's N1/D1 modes: 1 / norm unless `norm`, times the score if `detector`."""
    weights = np.ones(len(raw), np.float32)
    if not norm:
        norms = np.empty(len(raw), np.float32)
        for start in range(0, len(raw), POOL_CHUNK):
            norms[start:start + POOL_CHUNK] = np.linalg.norm(_views(raw[start:start + POOL_CHUNK], flip), axis=1)
        weights /= np.maximum(norms, 1e-12)
    if detector:
        weights *= np.asarray(det_scores, np.float32)
    return weights


def _views(raw: np.ndarray, flip: bool) -> np.ndarray:
    """F1: original + flipped embedding for (N, 2, D) input when `flip`, else the original view."""
    if raw.ndim == 3:
        return raw[:, 0] + raw[:, 1] if flip else raw[:, 0]
    return raw


def image_features(raw: np.ndarray, det_scores: np.ndarray, flip: bool = True, norm: bool = True,
                   detector: bool = True) -> np.ndarray:
    """Per-image features [N, D] float32 from raw (N, D) or (N, 2, D) embeddings, insightface's F1/N1/D1.

    (N, D) input is taken as already flip-summed (or flip-free); `flip=False` uses only the original view.
    """
    weights = image_weights(raw, det_scores, flip, norm, detector)
    return (_views(np.asarray(raw), flip) * weights[:, None]).astype(np.float32)


def pool_templates(raw: np.ndarray, templates: np.ndarray, medias: np.ndarray,
                   image_weights_: Optional[np.ndarray] = None, flip: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted template ids [T], L2-normalised template features [T, D] float32).

    A template is the sum over its media of the mean of that media's image features, an image's feature
    being its F1 view of `raw` times `image_weights_` (see `image_weights`; all ones when omitted).
    """
    template_ids, t_index = np.unique(templates, return_inverse=True)
    _, m_index = np.unique(medias, return_inverse=True)
    # One group per (template, media): its images are averaged, so each image weighs 1 / group size.
    _, group, counts = np.unique(t_index.astype(np.int64) * (m_index.max() + 1) + m_index,
                                 return_inverse=True, return_counts=True)
    weights = (1.0 / counts[group]).astype(np.float32)
    if image_weights_ is not None:
        weights *= image_weights_
    weights_t = torch.from_numpy(weights)
    index = torch.from_numpy(t_index.astype(np.int64))
    dim = raw.shape[-1]
    pooled = torch.zeros(len(template_ids), dim)
    for start in range(0, len(raw), POOL_CHUNK):  # chunks bound the weighted copy
        stop = start + POOL_CHUNK
        view = np.ascontiguousarray(_views(raw[start:stop], flip), dtype=np.float32)
        chunk = torch.from_numpy(view if view.flags.writeable else view.copy())  # memmapped .npy is read-only
        pooled.index_add_(0, index[start:stop], chunk * weights_t[start:stop, None])
    out = pooled.numpy()
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return template_ids, out


def template_rows(template_ids: np.ndarray, wanted: np.ndarray, path: str = "pairs") -> np.ndarray:
    """Row of each id of `wanted` in sorted `template_ids`; an id absent from the list is an error."""
    if len(template_ids) and 0 <= template_ids[0] and template_ids[-1] < 16 * len(template_ids) + (1 << 20):
        # Small non-negative ids: a lookup table beats a binary search per pair.
        # int32 rows halve the memory traffic over 15.6M pairs.
        lut = np.full(int(template_ids[-1]) + 2, -1, np.int32)
        lut[template_ids] = np.arange(len(template_ids))
        in_range = len(wanted) == 0 or (wanted.min() >= 0 and wanted.max() < len(lut))
        rows = lut[wanted if in_range else np.clip(wanted, -1, len(lut) - 1)]
        missing = np.flatnonzero(rows < 0)
    else:
        rows = np.minimum(np.searchsorted(template_ids, wanted), len(template_ids) - 1)
        missing = np.flatnonzero(template_ids[rows] != wanted)
    if missing.size:
        row = int(missing[0])
        where = f"{path}:{_line_of_row(path, row)}" if os.path.isfile(path) else f"{path} row {row}"
        raise IJBFormatError(f"{where}: template {wanted[row]} is not in the template list")
    return rows


def _compact(index: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(used values, position of each entry among them), by counting rather than sorting."""
    used = np.bincount(index, minlength=size) > 0
    return np.flatnonzero(used), (np.cumsum(used) - 1).astype(np.int32)[index]


def score_pairs(feats: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """Cosine score float32 of each pair of rows (`i1`, `i2`) of L2-normalised `feats`.

    Pair lists pair a few thousand gallery templates with many probes, so the scores are read off blocks
    of the dense product `feats[u1] @ feats[u2].T` (a BLAS matmul), which is much faster than gathering
    two feature rows per pair.
    """
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    u1, r1 = _compact(i1, len(feats))
    u2, r2 = _compact(i2, len(feats))
    right = feats[u2].T.copy()
    block = max(1, DENSE_BLOCK_BYTES // (4 * len(u2)))
    scores = np.empty(len(i1), np.float32)
    for start in range(0, len(u1), block):
        dense = feats[u1[start:start + block]] @ right
        if len(u1) <= block:
            width = len(u2)
            flat = r1.astype(np.int64 if dense.size >= 2 ** 31 else np.int32) * width
            flat += r2
            np.take(dense.ravel(), flat, out=scores)
        else:
            sel = np.flatnonzero((r1 >= start) & (r1 < start + block))
            scores[sel] = dense.ravel()[(r1[sel] - start) * len(u2) + r2[sel]]
    return scores


@dataclass(frozen=True, eq=False)
class VerificationReport:
    """1:1 outcome: ROC, AUC and TAR (percent) at each FAR, nearest-point and interpolated."""

    roc: Roc
    auc: float
    tar_at_far: Dict[str, float]
    tar_at_far_interpolated: Dict[str, float]
    num_pairs: int
    num_templates: int

    def to_dict(self) -> dict:
        """JSON-ready summary (no ROC arrays)."""
        return {"tar_at_far": self.tar_at_far, "tar_at_far_interpolated": self.tar_at_far_interpolated,
                "auc": self.auc, "num_pairs": self.num_pairs, "num_templates": self.num_templates}


def verify_templates(template_ids: np.ndarray, template_feats: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                     labels: np.ndarray, pairs_path: str = "pairs") -> VerificationReport:
    """Score every pair and summarise the ROC."""
    scores = score_pairs(template_feats, template_rows(template_ids, t1, pairs_path),
                         template_rows(template_ids, t2, pairs_path))
    roc = roc_curve(scores, labels)
    table = far_table(roc)
    return VerificationReport(roc, auc(roc.fpr, roc.tpr), table["nearest"], table["interpolated"],
                              len(scores), len(template_ids))


def evaluate_11(meta: IJBMeta, raw_features: np.ndarray, flip: bool = True, norm: bool = True,
                detector: bool = True) -> VerificationReport:
    """IJB 1:1 verification of per-image raw features in meta row order."""
    weights = image_weights(raw_features, meta.det_scores, flip=flip, norm=norm, detector=detector)
    ids, pooled = pool_templates(raw_features, meta.templates, meta.medias, weights, flip=flip)
    pairs_path = meta_path(meta.root, meta.target, "template_pair_label.txt")
    t1, t2, labels = read_pairs(pairs_path)
    report = verify_templates(ids, pooled, t1, t2, labels, pairs_path)
    logger.info("%s 1:1: TAR@FAR %s, AUC %.5f", meta.target, report.tar_at_far, report.auc)
    return report
