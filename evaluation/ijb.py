"""IJB-B / IJB-C: insightface's file layout, aligned-image loading, template pooling and 1:1 pair scoring.

Layout under `ROOT/IJBC` (or `ROOT/IJBB`, or ROOT itself): `meta/ijbc_face_tid_mid.txt` (`image template
media`), `meta/ijbc_name_5pts_score.txt` (`image x1 y1 ... x5 y5 score`, matched to the first file by row),
`meta/ijbc_template_pair_label.txt` (`t1 t2 label`) and the images in `loose_crop/`.

Template features follow insightface's test modes: an image's feature is the sum of the embeddings of the
image and of its flip (F1), its norm is kept (N1) and it is multiplied by the detector score (D1); within a
template the images of one media are averaged and the media are summed, then L2-normalised. The arithmetic
is insightface's own (float32 image, media and template sums added in its order, float64 normalisation and
scores), so that scores, and every figure read off them, equal its scripts' even where float32 scores would
tie or swap close pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from evaluation.align import align_face
from evaluation.errors import UserInputError
from evaluation.metrics import FAR_TARGETS, NonFiniteError, Roc, auc, verification_table

logger = logging.getLogger(__name__)

TARGETS = ("IJBB", "IJBC")
POOL_CHUNK = 1 << 17
SCAN_CHUNK = 1 << 14  # rows per finiteness check: bounds the temporary mask on a memory-mapped file
DENSE_BLOCK_BYTES = 512 << 20


class IJBFormatError(UserInputError):
    """A malformed or inconsistent IJB file; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class IJBMeta:
    """Per-image rows of the meta files (row order = feature order) and the 1:1 pair list."""

    root: str
    target: str
    names: np.ndarray  # [N] image file names in loose_crop/
    templates: np.ndarray  # [N] int64
    medias: np.ndarray  # [N] int64
    landmarks: np.ndarray  # [N, 5, 2] float32
    det_scores: np.ndarray  # [N] float32


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
            got = " ".join(fields)
            raise IJBFormatError(f"{path}:{number}: expected 'image template media', got {got!r}") from None
        names.append(fields[0])
    if not names:
        raise IJBFormatError(f"{path}: no rows (expected 'image template media' lines)")
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
            raise IJBFormatError(
                f"{path}:{number}: expected 'image x1 y1 ... x5 y5 score' (12 fields), got {len(fields)}"
            ) from None
        names.append(fields[0])
    if not names:
        raise IJBFormatError(f"{path}: no rows (expected 'image x1 y1 ... x5 y5 score' lines)")
    arr = np.array(values, np.float32).reshape(-1, 11)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:  # float() parses 'nan' and 'inf': they would pass silently into every template they touch
        raise IJBFormatError(f"{path}:{_line_of_row(path, int(bad[0]))}: landmarks and score must be finite numbers")
    return np.array(names), arr[:, :10].reshape(-1, 5, 2), arr[:, 10]


def read_pairs(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t1, t2, label) of a `*_template_pair_label.txt` file, parsed in one pass (15.6M lines for IJB-C)."""
    if not os.path.isfile(path):
        raise IJBFormatError(f"{path}: file not found")
    try:  # numpy's C reader, fast enough for IJB-C (docs/benchmarks.md); it rejects ragged rows and non-integers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": refused below
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
    if not flat.size:
        raise IJBFormatError(f"{path}: no pairs (expected 't1 t2 label' rows)")
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
        raise IJBFormatError(
            f"{lmk_path}: {len(lmk_names)} rows but {tid_path} has {len(names)}; the files are matched row by row"
        )
    differ = np.flatnonzero(names != lmk_names)
    if differ.size:
        row = int(differ[0])
        raise IJBFormatError(
            f"{lmk_path}:{_line_of_row(lmk_path, row)}: image {str(lmk_names[row])!r} but "
            f"{tid_path}:{_line_of_row(tid_path, row)} names {str(names[row])!r}"
        )
    return IJBMeta(os.path.abspath(root), target, names, templates, medias, landmarks, scores)


def check_ijb_images(meta: IJBMeta) -> str:
    """The `loose_crop` directory, after checking that it holds every image of the meta files."""
    crop_dir = os.path.join(dataset_dir(meta.root, meta.target), "loose_crop")
    if not os.path.isdir(crop_dir):
        raise IJBFormatError(f"{crop_dir}: image directory not found")
    present = set(os.listdir(crop_dir))
    for row, name in enumerate(meta.names):
        if name not in present:
            tid_path = meta_path(meta.root, meta.target, "face_tid_mid.txt")
            raise IJBFormatError(
                f"{tid_path}:{_line_of_row(tid_path, row)}: image {str(name)!r} missing from {crop_dir}"
            )
    return crop_dir


def _load_aligned(crop_dir: str, name: str, landmarks: np.ndarray) -> np.ndarray:
    """One aligned 112x112 RGB uint8 crop."""
    path = os.path.join(crop_dir, str(name))
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # what PIL raises for bad data
        raise IJBFormatError(f"{path}: cannot decode image ({type(e).__name__}: {_first_line(e)})") from None
    return align_face(rgb, landmarks)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (errors are reported on one line)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def iter_aligned(
    meta: IJBMeta, batch_size: int = 256, rows: Optional[np.ndarray] = None, workers: int = 4
) -> Iterator[np.ndarray]:
    """Batches of aligned 112x112 RGB uint8 crops, [B, 112, 112, 3], in row order (or `rows` order).

    Decoding and warping run in `workers` threads: Pillow releases the GIL for both.
    """
    crop_dir = check_ijb_images(meta)
    rows = np.arange(len(meta.names)) if rows is None else rows
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield np.stack(list(pool.map(lambda r: _load_aligned(crop_dir, meta.names[r], meta.landmarks[r]), chunk)))


def embed_meta(
    meta: IJBMeta,
    embed: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 256,
    rows: Optional[np.ndarray] = None,
    progress: bool = False,
) -> np.ndarray:
    """Raw per-image features [N, 2, D] (original, flipped) from `embed(uint8 [B,112,112,3]) -> [B, D]`."""
    batches: Iterator[np.ndarray] = iter_aligned(meta, batch_size, rows)
    if progress:
        from tqdm import tqdm  # only for the optional progress bar

        n = len(meta.names) if rows is None else len(rows)
        batches = tqdm(batches, total=(n + batch_size - 1) // batch_size, desc="embed", unit="batch")
    out = []
    for batch in batches:
        both = embed(np.concatenate([batch, batch[:, :, ::-1]]))
        out.append(np.stack([both[: len(batch)], both[len(batch) :]], axis=1).astype(np.float32))
    return np.concatenate(out)


def load_features(path: str, n_rows: int) -> np.ndarray:
    """Per-image features from a `.npy` file, memory-mapped and never unpickled, checked by `check_features`."""
    if not os.path.isfile(path):
        raise IJBFormatError(f"{path}: feature file not found")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # not .npy, truncated, an object (pickled) array
        raise IJBFormatError(
            f"{path}: not a readable .npy feature file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(features, np.ndarray):  # np.load opens an .npz archive as a mapping
        features.close()
        raise IJBFormatError(f"{path}: expected a .npy array, got an .npz archive")
    return check_features(features, n_rows, path)


def check_features(features: np.ndarray, n_rows: int, path: str = "features") -> np.ndarray:
    """`features` checked to be real numbers of shape (N, D) or (N, 2, D) with N = number of meta rows."""
    if features.dtype.kind not in "fiu":
        raise IJBFormatError(f"{path}: expected float features, got dtype {features.dtype}")
    if features.ndim not in (2, 3) or (features.ndim == 3 and features.shape[1] != 2):
        raise IJBFormatError(f"{path}: expected shape (N, D) or (N, 2, D), got {features.shape}")
    if len(features) != n_rows:
        raise IJBFormatError(f"{path}: {len(features)} feature rows but the meta files have {n_rows} images")
    return features


def nonfinite_rows(raw: np.ndarray) -> np.ndarray:
    """Indices of the rows of per-image features that hold a NaN or an infinity (scanned in chunks)."""
    bad = [np.empty(0, np.int64)]
    for start in range(0, len(raw), SCAN_CHUNK):
        block = np.asarray(raw[start : start + SCAN_CHUNK])
        bad.append(start + np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1)))
    return np.concatenate(bad)


def usable_rows(
    meta: IJBMeta, raw: np.ndarray, drop_nonfinite: bool = False, source: str = "features"
) -> Optional[np.ndarray]:
    """Image rows to evaluate: None (all) when every feature is finite, else the finite rows if `drop_nonfinite`.

    Without `drop_nonfinite` a NaN or infinite feature is a NonFiniteError naming its row, image and template:
    it would otherwise change the scores of its template silently.
    """
    bad = nonfinite_rows(raw)
    if not bad.size:
        return None
    row = int(bad[0])
    where = (
        f"{source}: row {row} (image {str(meta.names[row])!r}, template {int(meta.templates[row])}) holds "
        f"NaN or infinity ({bad.size} of {len(raw)} rows do)"
    )
    if not drop_nonfinite:
        raise NonFiniteError(f"{where}; drop_nonfinite=True (fr-eval ijb --drop-nonfinite) leaves them out")
    if bad.size == len(raw):
        raise NonFiniteError(f"{where}: nothing is left to evaluate")
    logger.warning("%s: dropping %d image rows with NaN or infinite features", source, bad.size)
    keep = np.ones(len(raw), bool)
    keep[bad] = False
    return np.flatnonzero(keep)


def image_features(
    block: np.ndarray, det_scores: Optional[np.ndarray], flip: bool, norm: bool, scratch: bool = False
) -> np.ndarray:
    """Per-image features in insightface's operation order: F1 sum, N0 division by the norm, D1 product.

    float32 (float64 input stays float64), each step rounded as the scripts' numpy expressions round it.
    With `scratch` the caller hands `block` over to be overwritten; otherwise the result may be a view of it.
    """
    block = np.asarray(block)
    dtype = np.float64 if block.dtype == np.float64 else np.float32
    if block.ndim == 3:
        feats = block[:, 0].astype(dtype, copy=False)
        if flip:
            feats = np.add(feats, block[:, 1], out=feats if scratch and feats.base is block else None, dtype=dtype)
            scratch = True
    else:
        feats = block.astype(dtype, copy=False)
    scratch = scratch and feats.dtype == dtype
    if not norm:  # N0: `x / sqrt(sum(x ** 2))` along the feature axis, as eval_ijbc.py writes it
        feats = np.divide(feats, np.sqrt(np.sum(feats**2, -1, keepdims=True)), out=feats if scratch else None)
        scratch = True
    if det_scores is not None:  # D1; in place rounds as a new array would
        feats = np.multiply(feats, np.asarray(det_scores, dtype)[:, None], out=feats if scratch else None)
    return feats


def pool_templates(
    raw: np.ndarray,
    templates: np.ndarray,
    medias: np.ndarray,
    det_scores: Optional[np.ndarray] = None,
    flip: bool = True,
    norm: bool = True,
    rows: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted template ids [T], L2-normalised template features [T, D] float64), bit for bit as insightface.

    An image's feature is `image_features` of its row (`det_scores` per row for D1, None for D0); within a
    template the images of one media are averaged and the media summed, both in float32 and in the order
    insightface's `image2template_feature` adds them (media by id, images by row), then the sum is normalised
    in float64 as sklearn's `normalize` does. With `rows`, only those image rows are pooled (`det_scores`
    still has one entry per image), so a template none of whose rows is listed has no feature.
    """
    rows = np.arange(len(templates)) if rows is None else np.asarray(rows)
    templates, medias = templates[rows], medias[rows]
    order = np.lexsort((medias, templates))  # stable: the images of a media keep their row order
    t_sorted, m_sorted = templates[order], medias[order]
    new_template = np.r_[True, t_sorted[1:] != t_sorted[:-1]]
    new_media = new_template | np.r_[True, m_sorted[1:] != m_sorted[:-1]]
    template_ids = t_sorted[new_template]
    media_starts = np.flatnonzero(new_media)
    media_size = np.diff(np.r_[media_starts, len(order)])
    media_first = np.r_[np.flatnonzero(new_template[media_starts]), len(media_starts)]  # per template, and the end
    template_starts = np.flatnonzero(new_template)
    out = np.empty((len(template_ids), raw.shape[-1]), np.float64)
    start, first_template = 0, 0
    while start < len(order):  # chunks of whole templates bound the (chunk, D) temporaries
        nxt = int(np.searchsorted(template_starts, start + POOL_CHUNK))
        stop = int(template_starts[nxt]) if nxt < len(template_starts) else len(order)
        picked = rows[order[start:stop]]
        low = int(picked.min())
        if picked.max() - low == len(picked) - 1:  # a permuted run of rows (IJB files group rows by template)
            block, picked = raw[low : low + len(picked)], picked - low  # a view: no copy of the features
            det = None if det_scores is None else det_scores[low : low + len(picked)]
        else:
            block = raw
            det = det_scores

        def features(at: np.ndarray, block=block, det=det, picked=picked) -> np.ndarray:
            """Image features of the chunk's sorted positions `at`: the gather is the only pass over them."""
            index = picked[at]
            gathered = np.take(block, index, axis=0)
            return image_features(gathered, None if det is None else det[index], flip, norm, scratch=True)

        last_template = nxt if nxt < len(template_starts) else len(template_ids)
        sizes = media_size[media_first[first_template] : media_first[last_template]]
        sums = _ordered_sums(features, sizes)
        multi = sizes > 1  # insightface averages only media of several images; x / 1 == x anyway
        sums[multi] /= sizes[multi, None].astype(sums.dtype)
        media_counts = np.diff(media_first[first_template : last_template + 1])
        out[first_template:last_template] = _ordered_sums(lambda at, sums=sums: sums[at], media_counts)
        start, first_template = stop, last_template
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms < 10 * np.finfo(np.float64).eps] = 1.0  # as sklearn's normalize: (near-)zero rows stay
    out /= norms[:, None]
    return template_ids, out


def _ordered_sums(rows_at: Callable[[np.ndarray], np.ndarray], sizes: np.ndarray) -> np.ndarray:
    """Sums of consecutive groups of `sizes` rows, `rows_at(positions)` giving the rows at those positions;
    each group's rows are added one after another, so that every sum rounds exactly as numpy's `sum(axis=0)`
    (or `mean`) of that group does."""
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    by_size = np.argsort(-sizes, kind="stable")  # groups with a k-th row come first: slices, not scatters
    starts = starts[by_size]
    sums = rows_at(starts)
    longer = np.cumsum(np.bincount(sizes, minlength=int(sizes.max()) + 1)[::-1])[::-1]  # groups of size >= k
    for k in range(1, int(sizes.max())):  # the k-th row of every group that has one
        n = int(longer[k + 1])
        sums[:n] += rows_at(starts[:n] + k)
    out = np.empty_like(sums)
    out[by_size] = sums
    return out


def pool_meta(
    meta: IJBMeta, raw: np.ndarray, flip: bool, norm: bool, detector: bool, rows: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """`pool_templates` of the meta files' templates and media, with their detector scores when `detector`."""
    det = meta.det_scores if detector else None
    return pool_templates(raw, meta.templates, meta.medias, det, flip=flip, norm=norm, rows=rows)


def check_templates(template_ids: np.ndarray, feats: np.ndarray, source: str = "features") -> None:
    """Refuse template features that are not finite (finite image features whose weighted sum overflows)."""
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if bad.size:
        raise NonFiniteError(
            f"{source}: template {int(template_ids[bad[0]])} has a non-finite pooled feature "
            f"(its image features are too large for float32)"
        )


def lost_templates(meta: IJBMeta, template_ids: np.ndarray) -> np.ndarray:
    """Templates of the meta files that have no feature in `template_ids` (all their images were dropped)."""
    return np.setdiff1d(np.unique(meta.templates), template_ids)


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
    """Cosine score of each pair of rows (`i1`, `i2`) of L2-normalised `feats`, in the dtype of `feats`.

    Pair lists pair a few thousand gallery templates with many probes, so the scores are read off blocks
    of the dense product `feats[u1] @ feats[u2].T` (a BLAS matmul), which is much faster than gathering
    two feature rows per pair.
    """
    feats = np.ascontiguousarray(feats, dtype=np.float64 if feats.dtype == np.float64 else np.float32)
    u1, r1 = _compact(i1, len(feats))
    u2, r2 = _compact(i2, len(feats))
    right = feats[u2].T.copy()
    block = max(1, DENSE_BLOCK_BYTES // (feats.itemsize * len(u2)))
    scores = np.empty(len(i1), feats.dtype)
    for start in range(0, len(u1), block):
        dense = feats[u1[start : start + block]] @ right
        if len(u1) <= block:
            width = len(u2)
            flat = r1.astype(np.int64 if dense.size >= 2**31 else np.int32) * width
            flat += r2
            np.take(dense.ravel(), flat, out=scores)
        else:
            sel = np.flatnonzero((r1 >= start) & (r1 < start + block))
            scores[sel] = dense.ravel()[(r1[sel] - start) * len(u2) + r2[sel]]
    return scores


@dataclass(frozen=True, eq=False)
class IJBVerification:
    """1:1 outcome: ROC, AUC and TAR (percent) at each FAR.

    `tar_at_far` is eval_ijbc.py's table (nearest point of the dropped ROC), `tar_at_far_full_roc` the same
    rule on the full ROC, `tar_at_far_interpolated` the ROC read at exactly the target FAR.
    """

    roc: Roc
    auc: float
    tar_at_far: Dict[str, float]
    tar_at_far_interpolated: Dict[str, float]
    num_pairs: int
    num_templates: int
    # Left out for non-finite features (drop_nonfinite): image rows, templates left without images, their pairs.
    dropped: Dict[str, int] = dataclasses.field(default_factory=lambda: {"images": 0, "templates": 0, "pairs": 0})
    tar_at_far_full_roc: Dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (no ROC arrays)."""
        return {
            "tar_at_far": self.tar_at_far,
            "tar_at_far_full_roc": self.tar_at_far_full_roc,
            "tar_at_far_interpolated": self.tar_at_far_interpolated,
            "auc": self.auc,
            "num_pairs": self.num_pairs,
            "num_templates": self.num_templates,
            "dropped": dict(self.dropped),
        }


def verify_templates(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    t1: np.ndarray,
    t2: np.ndarray,
    labels: np.ndarray,
    pairs_path: str = "pairs",
    far_targets: Sequence[float] = FAR_TARGETS,
) -> IJBVerification:
    """Score every pair and summarise the ROC."""
    scores = score_pairs(
        template_feats, template_rows(template_ids, t1, pairs_path), template_rows(template_ids, t2, pairs_path)
    )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        row = int(bad[0])
        where = (
            f"{pairs_path}:{_line_of_row(pairs_path, row)}" if os.path.isfile(pairs_path) else f"{pairs_path} row {row}"
        )
        raise NonFiniteError(
            f"{where}: the score of templates {int(t1[row])} and {int(t2[row])} is not finite ({bad.size} such pairs)"
        )
    genuine = int(np.count_nonzero(labels))
    if not 0 < genuine < len(labels):
        raise IJBFormatError(
            f"{pairs_path}: a ROC needs both genuine (label 1) and impostor (label 0) pairs, "
            f"got {genuine} genuine of {len(labels)}"
        )
    roc, table = verification_table(scores, labels, far_targets)
    return IJBVerification(
        roc=roc,
        auc=auc(roc.fpr, roc.tpr),
        tar_at_far=table["nearest"],
        tar_at_far_interpolated=table["interpolated"],
        tar_at_far_full_roc=table["full_roc"],
        num_pairs=len(scores),
        num_templates=len(template_ids),
    )


def evaluate_11(
    meta: IJBMeta,
    raw_features: np.ndarray,
    flip: bool = True,
    norm: bool = True,
    detector: bool = True,
    *,
    drop_nonfinite: bool = False,
    source: str = "features",
) -> IJBVerification:
    """IJB 1:1 verification of per-image raw features in meta row order.

    A NaN or infinite feature is an error naming its row (`source` names the features); with `drop_nonfinite`
    such images are left out, then the templates left without images and their pairs, all counted in `dropped`.
    """
    rows = usable_rows(meta, raw_features, drop_nonfinite, source)
    ids, pooled = pool_meta(meta, raw_features, flip, norm, detector, rows)
    check_templates(ids, pooled, source)
    pairs_path = meta_path(meta.root, meta.target, "template_pair_label.txt")
    t1, t2, labels = read_pairs(pairs_path)
    dropped = {"images": 0 if rows is None else len(raw_features) - len(rows), "templates": 0, "pairs": 0}
    lost = lost_templates(meta, ids)
    if lost.size:
        all_ids = np.unique(meta.templates)
        for wanted in (t1, t2):  # a template missing from the meta files stays an error naming its line
            template_rows(all_ids, wanted, pairs_path)
        keep = ~(np.isin(t1, lost) | np.isin(t2, lost))
        dropped.update(templates=len(lost), pairs=int(len(keep) - keep.sum()))
        if not keep.any():
            raise NonFiniteError(
                f"{pairs_path}: every pair names a template whose images were all dropped "
                f"({len(lost)} templates lost to non-finite {source})"
            )
        t1, t2, labels = t1[keep], t2[keep], labels[keep]
    report = verify_templates(ids, pooled, t1, t2, labels, pairs_path)
    report = dataclasses.replace(report, dropped=dropped)
    logger.info("%s 1:1: TAR@FAR %s, AUC %.5f", meta.target, report.tar_at_far, report.auc)
    return report
