"""Header-only record checks: read IRHeaders without image bytes, and the rules a stored label must follow.

Shared by the layout detection, the checks before training and `fr-data verify`; nothing here decodes images.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from fr.data.recordio import MAGIC, IndexedRecordIO, IRHeader, MXRecordIO, RecordIOError, unpack

LENGTH_MASK = (1 << 29) - 1
_HEADER_SIZE = 24
# Enough for the IRHeader plus a few float labels: header scans never read image bytes.
_PEEK = 8 + _HEADER_SIZE + 64


def read_header_at(fh, offset: int, where: str) -> IRHeader:
    """Read only the IRHeader (and its labels) of the record at `offset`; RecordIOError when it is corrupt."""
    fh.seek(offset)
    head = fh.read(_PEEK)
    if len(head) < 8:
        raise RecordIOError(f"{where}: truncated record header at offset {offset}")
    magic, lrec = struct.unpack_from("<II", head)
    if magic != MAGIC:
        raise RecordIOError(f"{where}: bad magic 0x{magic:08x} at offset {offset} (expected 0x{MAGIC:08x})")
    cflag, length = lrec >> 29, lrec & LENGTH_MASK
    if cflag not in (0, 1):
        raise RecordIOError(f"{where}: record at offset {offset} starts with continuation flag {cflag}")
    body = head[8 : 8 + length]
    flag = struct.unpack_from("<I", body)[0] if len(body) >= 4 else 0
    need = _HEADER_SIZE + 4 * flag
    if cflag == 0 and length < need:
        raise RecordIOError(f"{where}: record at offset {offset} is shorter than its {need}-byte header")
    if len(body) < min(length, _PEEK - 8):
        raise RecordIOError(
            f"{where}: record at offset {offset} announces {length} bytes but the file ends after {len(body)}"
        )
    if len(body) < need:
        # Many labels, or a header split by an escaped magic word: read the whole record.
        with MXRecordIO(fh.name, "r") as rec:
            rec.handle.seek(offset)
            return unpack(rec.read())[0]
    return unpack(bytes(body[:need]))[0]


def scan_headers(record: IndexedRecordIO, keys) -> Iterator[Tuple[int, Optional[IRHeader], Optional[str]]]:
    """(key, header, None) per key, or (key, None, error) for a corrupt record; one open file, no decoding."""
    with open(record.uri, "rb") as fh:
        for key in keys:
            offset = record.idx.get(key)
            if offset is None:
                yield key, None, f"{record.uri}: key {key} is not in {record.idx_path}"
                continue
            try:
                yield key, read_header_at(fh, offset, f"{record.uri}: record {key}"), None
            except (RecordIOError, struct.error) as exc:
                yield key, None, str(exc)


def label_of(header: IRHeader) -> float:
    """The stored class of an image record: its scalar label, or the first of a multi-label header (a float, as
    stored; `bad_label` says whether it names a class)."""
    label = header.label
    return float(label) if np.ndim(label) == 0 else float(np.asarray(label).ravel()[0])


# float32 labels hold every integer only up to 2^24: a larger class number cannot be stored exactly.
MAX_CLASSES = 1 << 24


def bad_label(value: float, num_classes: int) -> Optional[str]:
    """None for a label that names a class in `[0, num_classes)`, else what is wrong ("has label nan, ...")."""
    if not math.isfinite(value):
        return f"has label {value}, not a finite number"
    if value != round(value):
        return f"has label {value}, not a whole number"
    if not 0 <= value < num_classes:
        return f"has label {int(value)}, outside [0, {num_classes})"
    return None


@dataclass
class CheckResult:
    """What a header scan found: usable image keys with their labels, skipped keys (corrupt header or a label
    that names no class) with the reason, and errors (identity records)."""

    keys: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    skipped: Dict[int, str] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)


def check_records(
    record: IndexedRecordIO, image_keys: List[int], num_classes: int, identity_keys: Optional[List[int]] = None
) -> CheckResult:
    """Read every image header (and identity record) and check labels and identity ranges.

    Corrupt headers and labels that name no class (see `bad_label`) are `skipped` (the loaders leave them
    out); identity records that disagree with the header are `errors`. Every message names the record.
    """
    result = CheckResult()
    for key, header, error in scan_headers(record, image_keys):
        if error is not None:
            result.skipped[key] = error
            continue
        label = label_of(header)
        problem = bad_label(label, num_classes)
        if problem is not None:
            result.skipped[key] = f"{record.uri}: record {key} {problem}"
            continue
        result.keys.append(key)
        result.labels.append(int(label))
    if identity_keys:
        result.errors.extend(_check_identities(record, image_keys, identity_keys))
    return result


def _check_identities(record: IndexedRecordIO, image_keys: List[int], identity_keys: List[int]) -> List[str]:
    """Identity record c must hold `[start, end)` ranges that tile the image keys in order."""
    errors: List[str] = []
    expected_start = image_keys[0] if image_keys else 1
    for c, (key, header, error) in enumerate(scan_headers(record, identity_keys)):
        if error is not None:
            errors.append(f"identity {c}: {error}")
            continue
        labels = np.atleast_1d(np.asarray(header.label, dtype=np.float64))
        if labels.size < 2:
            errors.append(
                f"{record.uri}: identity record {key} (class {c}) has label {labels.tolist()}, expected [start, end)"
            )
            continue
        if not all(math.isfinite(x) and x == round(x) for x in labels[:2]):
            errors.append(
                f"{record.uri}: identity record {key} (class {c}) has label {labels.tolist()}, "
                f"expected whole numbers [start, end)"
            )
            continue
        start, end = int(labels[0]), int(labels[1])
        if start != expected_start or end <= start:
            errors.append(
                f"{record.uri}: identity record {key} (class {c}) holds [{start}, {end}), expected a "
                f"non-empty range starting at {expected_start}"
            )
        expected_start = max(end, expected_start)
    end_images = image_keys[-1] + 1 if image_keys else 1
    if not errors and expected_start != end_images:
        errors.append(
            f"{record.uri}: identity records end at key {expected_start} but the header announces "
            f"images up to key {end_images - 1}"
        )
    return errors
