"""What an insightface-layout record directory holds: file paths, the header record, checked image keys."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from fr.data.base import DataError
from fr.data.headers import MAX_CLASSES, bad_label, check_records, label_of, scan_headers
from fr.data.recordio import IndexedRecordIO, unpack

log = logging.getLogger(__name__)

# How many skipped records one log line names (all of them: `fr-data verify`, or the index's .json).
LOGGED = 10


@dataclass(frozen=True)
class RecordLayout:
    """What a record file holds: the image keys to train on and the number of classes."""

    image_keys: List[int]
    num_classes: int
    insightface: bool  # record 0 is a header and identity records follow the images
    identity_keys: List[int] = field(default_factory=list)  # insightface: N+1 .. N+C


def record_paths(root: str) -> Tuple[str, str]:
    """`root/train.rec` and `root/train.idx`, with a clear error when the directory or files are missing."""
    if not os.path.isdir(root):
        raise DataError(f"data directory not found: {root} (set data.root to the folder holding train.rec)")
    rec, idx = os.path.join(root, "train.rec"), os.path.join(root, "train.idx")
    if not os.path.isfile(rec):
        raise DataError(f"{rec} not found: data.root must hold an insightface-layout train.rec/train.idx")
    return rec, idx


def read_layout(record: IndexedRecordIO) -> RecordLayout:
    """Detect the insightface layout from record 0; otherwise every key is an image."""
    first_key = min(record.keys) if record.keys else None
    if first_key is None:
        raise DataError(f"{record.uri} holds no records")
    header, _ = unpack(record.read_idx(first_key))
    if first_key == 0 and header.flag > 0:
        labels = np.asarray(header.label, dtype=np.float64)
        if labels.size < 2:
            raise DataError(f"{record.uri}: header record 0 has flag {header.flag} but needs [N+1, N+1+C] labels")
        if not all(math.isfinite(x) and x == round(x) for x in labels[:2]):
            raise DataError(
                f"{record.uri}: header record 0 label {labels.tolist()} is not [N+1, N+1+C] (whole numbers)"
            )
        end_images, end_ids = int(labels[0]), int(labels[1])
        if end_images < 1 or end_ids < end_images:
            raise DataError(f"{record.uri}: header record 0 label {labels.tolist()} is not [N+1, N+1+C]")
        # Keys 0 .. N+C are all listed: a larger claim is a damaged header (and would build huge key lists).
        if end_ids > len(record.idx):
            raise DataError(
                f"{record.uri}: header announces records 0..{end_ids - 1} but {record.idx_path} "
                f"lists {len(record.idx)} keys"
            )
        missing = [k for k in (1, end_images - 1, end_images, end_ids - 1) if k not in record.idx]
        if end_images > 1 and missing:
            raise DataError(
                f"{record.uri}: header announces images 1..{end_images - 1} and identities "
                f"{end_images}..{end_ids - 1} but key {missing[0]} is not in {record.idx_path}"
            )
        return RecordLayout(list(range(1, end_images)), end_ids - end_images, True, list(range(end_images, end_ids)))
    keys = sorted(record.keys)
    # A plain (im2rec) file carries no class count: take it from the largest label that names a class
    # (a NaN, negative or fractional label is skipped later, not trusted here).
    labels = [label_of(h) for _, h, error in scan_headers(record, keys) if error is None]
    if not labels:
        raise DataError(f"{record.uri}: no readable record headers")
    classes = [int(label) for label in labels if bad_label(label, MAX_CLASSES) is None]
    if not classes:
        raise DataError(f"{record.uri}: no record has a usable label (a whole number in [0, {MAX_CLASSES}))")
    return RecordLayout(keys, max(classes) + 1, False)


def checked_keys(record: IndexedRecordIO, layout: RecordLayout, num_classes: int) -> Tuple[List[int], Dict[int, str]]:
    """Header-only check before training: (usable image keys, {skipped key: why}).

    Records with a corrupt header or a label that names no class in `[0, num_classes)` are skipped (see
    `log_skipped`); identity records that disagree with the header raise DataError naming the record.
    """
    result = check_records(record, layout.image_keys, num_classes, layout.identity_keys)
    if result.errors:
        more = f" (and {len(result.errors) - 1} more; run `fr-data verify`)" if len(result.errors) > 1 else ""
        raise DataError(result.errors[0] + more)
    return result.keys, result.skipped


def log_skipped(uri: str, skipped: Dict[int, str], listed_in: str = "") -> None:
    """One warning for the records a check skipped: how many, and the first LOGGED reasons by record key."""
    if not skipped:
        return
    first = "; ".join(skipped[key] for key in sorted(skipped)[:LOGGED])
    where = f"all listed in {listed_in}" if listed_in else "`fr-data verify` lists them all"
    log.warning("%s: %d records skipped (%s); the first: %s", uri, len(skipped), where, first)
