"""Record-file checks that look at images: the structural check behind DALI's index, and the full `fr-data verify`."""

from __future__ import annotations

import io
import logging
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Tuple

from fr.data.base import DataError
from fr.data.headers import LENGTH_MASK, check_records
from fr.data.layout import read_layout, record_paths
from fr.data.recordio import IndexedRecordIO, MXRecordIO, RecordIOError, unpack

log = logging.getLogger(__name__)


def _jpeg_size(payload: bytes) -> Tuple[int, int]:
    import simplejpeg

    # strict: header warnings (bytes where a marker belongs) count as corrupt, as they do for the torch path
    height, width, _, _ = simplejpeg.decode_jpeg_header(payload)
    # Scan data cannot hold FF D9 (an FF data byte is always followed by 00), so no end-of-image marker after
    # the first scan header means the payload was cut short or its tail overwritten (e.g. zero-filled).
    if payload.find(b"\xff\xd9", _first_scan(payload)) < 0:
        raise ValueError("no end-of-image marker (truncated or overwritten)")
    return width, height


# Markers that stand alone, without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}


def _first_scan(payload: bytes) -> int:
    """Offset of the image's first start-of-scan marker, found by walking the header segments.

    A plain byte search could stop inside an APPn segment: an EXIF thumbnail is a whole JPEG, SOS and EOI
    included, so a truncated photo carrying one would pass the end-of-image test.
    """
    pos = 2  # after SOI
    while pos + 1 < len(payload):
        if payload[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos} of the header")
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xDA:
            return pos
        elif marker in _STANDALONE:
            pos += 2
        elif pos + 4 <= len(payload):
            pos += 2 + int.from_bytes(payload[pos + 2 : pos + 4], "big")
        else:
            break
    raise ValueError("no end-of-image marker (header segments run past the end: truncated)")


def _png_size(payload: bytes) -> Tuple[int, int]:
    if payload.rfind(b"IEND\xaeB`\x82") < 0:
        raise ValueError("no IEND chunk (truncated or overwritten)")
    return _pil_size(payload)


def _pil_size(payload: bytes) -> Tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(payload)) as img:  # reads the header only
        return img.size


MAX_PIXELS = 1 << 30  # OpenCV's default bound; a corrupt JPEG frame header often claims tens of thousands a side


class ImageFormat(NamedTuple):
    name: str
    matches: Callable[[bytes], bool]
    size: Callable[[bytes], Tuple[int, int]]  # (width, height); raises when the payload is broken


# The formats DALI's image decoder reads (GIF, ICO, TGA and the rest make it stop), by their leading bytes.
IMAGE_FORMATS: List[ImageFormat] = [
    ImageFormat("jpeg", lambda b: b[:3] == b"\xff\xd8\xff", _jpeg_size),
    ImageFormat("png", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n", _png_size),
    ImageFormat("bmp", lambda b: b[:2] == b"BM", _pil_size),
    ImageFormat("tiff", lambda b: b[:4] in (b"II*\x00", b"MM\x00*"), _pil_size),
    ImageFormat("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", _pil_size),
    ImageFormat("pnm", lambda b: b[:1] == b"P" and b[1:2] in b"123456" and len(b) > 2, _pil_size),
    ImageFormat("jpeg2000", lambda b: b[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or b[:4] == b"\xffO\xffQ", _pil_size),
]


def image_size(payload: bytes) -> Tuple[int, int]:
    """(width, height) from an image payload's header and framing, without decoding its pixels.

    ValueError naming the problem for an empty payload, a format DALI cannot read, a broken header, or a
    JPEG/PNG whose end marker is missing.
    """
    if not payload:
        raise ValueError("empty image payload")
    for fmt in IMAGE_FORMATS:
        if fmt.matches(payload):
            try:
                width, height = fmt.size(payload)
            except Exception as exc:  # parsers raise many types for corrupt data (Pillow: SyntaxError, bombs)
                raise ValueError(f"{fmt.name}: {exc}") from None
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                raise ValueError(f"{fmt.name}: header gives a {width}x{height} image")
            return width, height
    raise ValueError(f"not an image format the DALI decoder reads (starts with {payload[:8]!r})")


@dataclass
class RecordImageCheck:
    """What `check_record_images` found: the keys that passed, their (width, height) counts, and the skipped
    keys with one message each."""

    keys: List[int] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    skipped: Dict[int, str] = field(default_factory=dict)


def check_record_images(record: IndexedRecordIO, keys: List[int]) -> RecordImageCheck:
    """Structural check of each record's image (see `image_size`) and of its length against the next record.

    DALI's record parser copies as many bytes as a record announces, so a length running into the next record
    or past the end of the file is skipped here. Reads the file through mmap, far cheaper than decoding
    (figures: docs/benchmarks.md).
    """
    result = RecordImageCheck()
    size = os.path.getsize(record.uri)
    starts = sorted(record.idx.values())
    ends = dict(zip(starts, starts[1:] + [size]))
    with open(record.uri, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for key in keys:
            offset = record.idx[key]
            try:
                payload = _payload_at(record, data, offset, ends[offset])
                result.sizes[image_size(payload)] += 1
            except (ValueError, RecordIOError, struct.error) as exc:
                result.skipped[key] = f"{record.uri}: record {key}: {exc}"
                continue
            result.keys.append(key)
    return result


def _payload_at(record: IndexedRecordIO, data: mmap.mmap, offset: int, end: int) -> bytes:
    lrec = struct.unpack_from("<I", data, offset + 4)[0]  # the magic word was checked with the header
    cflag, length = lrec >> 29, lrec & LENGTH_MASK
    if cflag == 0:
        if offset + 8 + length > end:
            raise RecordIOError(f"record announces {length} bytes, past the start of the next record at {end}")
        return unpack(data[offset + 8 : offset + 8 + length])[1]
    # A payload holding the magic word was split into parts (rare): read it whole.
    with MXRecordIO(record.uri, "r") as reader:
        reader.handle.seek(offset)
        body = reader.read()
        if reader.handle.tell() > end:
            raise RecordIOError(f"multi-part record runs past the start of the next record at {end}")
    return unpack(body)[1]


@dataclass
class RecordCheckReport:
    """What `fr-data verify` found: counts, the records training would skip (one message each: corrupt header,
    label that names no class, image that does not decode) and the errors of the file itself (header or
    identity records, `.idx` entries) that stop training or point nowhere."""

    records: int = 0
    images: int = 0
    skipped: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.errors


def verify_dir(root: str, decode: Callable[[bytes], object], progress=None) -> RecordCheckReport:
    """Scan every record of `root/train.rec`: structure, headers, labels, identity records, image decode."""
    rec_path, idx_path = record_paths(root)
    with IndexedRecordIO(idx_path, rec_path, "r") as record:
        report = RecordCheckReport(records=len(record.keys))
        try:
            layout = read_layout(record)
        except (DataError, RecordIOError) as exc:
            report.errors.append(str(exc))
            return report
        report.images = len(layout.image_keys)
        check = check_records(record, layout.image_keys, layout.num_classes, layout.identity_keys)
        report.skipped.extend(check.skipped.values())
        report.errors.extend(check.errors)
        for key in progress(check.keys) if progress else check.keys:
            try:
                _, payload = unpack(record.read_idx(key))
                decode(payload)
            except RecordIOError as exc:
                report.skipped.append(f"{rec_path}: record {key}: {exc}")
            except Exception as exc:  # decoders raise many types for corrupt data
                report.skipped.append(f"{rec_path}: record {key}: cannot decode image ({exc})")
        size = os.path.getsize(rec_path)
        report.errors.extend(
            f"{idx_path}: key {k} points past the end of {rec_path}"
            for k, offset in record.idx.items()
            if offset >= size and k not in check.skipped
        )
    return report
