"""What an insightface-layout record directory holds: file paths, the header record, checked image keys."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from fr.data.recordio import IndexedRecordIO, unpack
from fr.data.verify import check_records, label_of, scan_headers
from evaluation.errors import UserInputError

log = logging.getLogger(__name__)


class DataError(UserInputError):
    """A data set that cannot be used as given; the message names the file or record."""


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
        labels = np.asarray(header.label)
        if labels.size < 2:
            raise DataError(f"{record.uri}: header record 0 has flag {header.flag} but needs [N+1, N+1+C] labels")
        end_images, end_ids = int(labels[0]), int(labels[1])
        if end_images < 1 or end_ids < end_images:
            raise DataError(f"{record.uri}: header record 0 label {labels.tolist()} is not [N+1, N+1+C]")
        missing = [k for k in (1, end_images - 1, end_images, end_ids - 1) if k not in record.idx]
        if end_images > 1 and missing:
            raise DataError(f"{record.uri}: header announces images 1..{end_images - 1} and identities "
                            f"{end_images}..{end_ids - 1} but key {missing[0]} is not in {record.idx_path}")
        return RecordLayout(list(range(1, end_images)), end_ids - end_images, True,
                            list(range(end_images, end_ids)))
    keys = sorted(record.keys)
    # A plain (im2rec) file carries no class count: take it from the largest readable label.
    labels = [label_of(h) for _, h, error in scan_headers(record, keys) if error is None]
    if not labels:
        raise DataError(f"{record.uri}: no readable record headers")
    return RecordLayout(keys, max(labels) + 1, False)


def checked_keys(record: IndexedRecordIO, layout: RecordLayout, num_classes: int) -> Tuple[List[int], int]:
    """Header-only check before training: (usable image keys, number of garbled records skipped).

    Raises DataError naming the record for a label outside `[0, num_classes)` or identity records that
    disagree with the header; garbled records are logged and left out.
    """
    result = check_records(record, layout.image_keys, num_classes, layout.identity_keys)
    if result.errors:
        more = f" (and {len(result.errors) - 1} more; run `fr-data verify`)" if len(result.errors) > 1 else ""
        raise DataError(result.errors[0] + more)
    for message in list(result.garbled.values())[:10]:
        log.warning("skipping garbled record: %s", message)
    if result.garbled:
        log.warning("%s: %d garbled records skipped", record.uri, len(result.garbled))
    return result.keys, len(result.garbled)
