"""MXNet RecordIO (dmlc-core) in pure Python: IRHeader, pack/unpack, MXRecordIO and IndexedRecordIO.

Names mirror `mxnet.recordio` so insightface scripts port by changing one import. On disk each record is
`magic (u32) | lrec (u32) | payload | zero padding to 4 bytes`, where `lrec` holds the part length in its
low 29 bits and a continuation flag in its top 3 bits (0 whole, 1 first, 2 middle, 3 last). dmlc's writer
splits a payload wherever the magic word occurs at a 4-byte aligned offset and drops that word; the reader
puts it back between parts.
"""

from __future__ import annotations

import io
import os
import struct
from collections import namedtuple
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import numpy as np

from evaluation.errors import UserInputError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_HEADER_FORMAT = "<IfQQ"
_HEADER_SIZE = struct.calcsize(_HEADER_FORMAT)
_MAX_OFFSET = 1 << 63  # file positions are signed 64-bit

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = """Image record header: `flag` > 0 means `flag` float labels follow the header (then `label`
holds them as an array); otherwise `label` is a single float. `id`/`id2` are 64-bit integers."""


class RecordIOError(UserInputError):
    """A .rec/.idx file that does not follow the RecordIO format; the message names the file and offset."""


def pack(header: IRHeader, payload: bytes) -> bytes:
    """Serialise a header and payload into one record body (as `mxnet.recordio.pack`)."""
    label = header.label
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(_HEADER_FORMAT, 0, float(label), int(header.id), int(header.id2)) + payload
    labels = np.asarray(label, dtype=np.float32).ravel()
    head = struct.pack(_HEADER_FORMAT, labels.size, 0.0, int(header.id), int(header.id2))
    return head + labels.tobytes() + payload


def unpack(record: bytes) -> Tuple[IRHeader, bytes]:
    """Split a record body into its header and payload (as `mxnet.recordio.unpack`)."""
    if len(record) < _HEADER_SIZE:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {_HEADER_SIZE}-byte IRHeader")
    flag, label, rid, rid2 = struct.unpack_from(_HEADER_FORMAT, record)
    payload = record[_HEADER_SIZE:]
    if flag > 0:
        need = flag * 4
        if len(payload) < need:
            raise RecordIOError(f"record header announces {flag} labels but only {len(payload)} bytes follow")
        label = np.frombuffer(payload[:need], dtype=np.float32).copy()
        payload = payload[need:]
    return IRHeader(flag, label, rid, rid2), payload


def pack_img(header: IRHeader, img: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """Encode an RGB uint8 image (HxWx3) and pack it. Unlike MXNet (OpenCV, BGR input) this takes RGB."""
    from PIL import Image

    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(img_fmt.lower())
    if fmt is None:
        raise ValueError(f"img_fmt must be .jpg or .png, got {img_fmt!r}")
    buf = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {"compress_level": min(9, max(0, quality))}
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format=fmt, **options)
    return pack(header, buf.getvalue())


def unpack_img(record: bytes) -> Tuple[IRHeader, np.ndarray]:
    """Unpack a record and decode its image to an RGB uint8 array (MXNet's returns BGR via OpenCV)."""
    from PIL import Image

    header, payload = unpack(record)
    with Image.open(io.BytesIO(payload)) as img:
        return header, np.asarray(img.convert("RGB"))


def _escape_parts(payload: bytes) -> List[bytes]:
    """Split a payload at aligned occurrences of the magic word, as dmlc's writer does."""
    parts: List[bytes] = []
    start = 0
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(payload[start:pos])
            start = pos + 4
            pos = payload.find(_MAGIC_BYTES, start)
        else:
            pos = payload.find(_MAGIC_BYTES, pos + 1)
    parts.append(payload[start:])
    return parts


class MXRecordIO:
    """Sequential RecordIO reader/writer: `mode` is 'r' or 'w'."""

    def __init__(self, uri: str, mode: str):
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
        self.uri = str(uri)
        self.flag = mode
        self.handle: Optional[BinaryIO] = None
        self.open()

    def open(self) -> None:
        if self.flag == "r" and not os.path.isfile(self.uri):
            raise FileNotFoundError(f"record file not found: {self.uri}")
        self.handle = open(self.uri, "rb" if self.flag == "r" else "wb")
        self._pid = os.getpid()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def __getstate__(self):
        # A file handle cannot cross a process boundary; each worker reopens its own.
        state = dict(self.__dict__)
        state["handle"] = None
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        if self.flag == "r":
            self.open()

    def _ensure_own_handle(self) -> None:
        # After fork the parent's handle shares its file offset with the child: reopen per process.
        if self.handle is None or self._pid != os.getpid():
            self.open()

    def reset(self) -> None:
        self._ensure_own_handle()
        self.handle.seek(0)

    def tell(self) -> int:
        self._ensure_own_handle()
        return self.handle.tell()

    def write(self, buf: bytes) -> None:
        """Append one record body, escaping aligned magic words into continuation parts."""
        if self.flag != "w":
            raise RecordIOError(f"{self.uri} is open for reading")
        parts = _escape_parts(bytes(buf))
        for i, part in enumerate(parts):
            if len(parts) == 1:
                cflag = 0
            else:
                cflag = 1 if i == 0 else (3 if i == len(parts) - 1 else 2)
            if len(part) > _LENGTH_MASK:
                raise RecordIOError(f"record part of {len(part)} bytes exceeds the 2^29-1 limit")
            self.handle.write(_MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(part)))
            self.handle.write(part)
            self.handle.write(b"\0" * ((4 - len(part) % 4) % 4))

    def read(self) -> Optional[bytes]:
        """Read the next record body, or None at the end of the file."""
        if self.flag != "r":
            raise RecordIOError(f"{self.uri} is open for writing")
        self._ensure_own_handle()
        chunks: List[bytes] = []
        while True:
            offset = self.handle.tell()
            head = self.handle.read(8)
            if not head:
                if chunks:
                    raise RecordIOError(f"{self.uri}: file ends inside a multi-part record at offset {offset}")
                return None
            if len(head) < 8:
                raise RecordIOError(f"{self.uri}: truncated record header at offset {offset}")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.uri}: bad magic 0x{magic:08x} at offset {offset} "
                    f"(expected 0x{MAGIC:08x}); is this a RecordIO file, and does the .idx match?"
                )
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            data = self.handle.read(length)
            if len(data) < length:
                raise RecordIOError(
                    f"{self.uri}: record at offset {offset} announces {length} bytes "
                    f"but the file ends after {len(data)}"
                )
            self.handle.seek((4 - length % 4) % 4, os.SEEK_CUR)
            if cflag == 0:
                if chunks:
                    raise RecordIOError(f"{self.uri}: whole record at offset {offset} inside a multi-part record")
                return data
            if (cflag == 1) != (not chunks):
                raise RecordIOError(f"{self.uri}: continuation flag {cflag} out of order at offset {offset}")
            chunks.append(data)
            if cflag == 3:
                return _MAGIC_BYTES.join(chunks)
            # cflag 1 or 2: more parts follow

    def __iter__(self) -> Iterator[bytes]:
        self.reset()
        while True:
            record = self.read()
            if record is None:
                return
            yield record


def read_index(idx_path: str) -> Dict[int, int]:
    """Parse a `.idx` text index (`key<TAB>offset` per line) into {key: byte offset}."""
    index: Dict[int, int] = {}
    with open(idx_path, "r", encoding="ascii", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line[:60]!r}") from None
            if not 0 <= offset < _MAX_OFFSET:  # a file cannot seek there: OSError/OverflowError later
                raise RecordIOError(f"{idx_path}:{lineno}: offset {offset} of key {key} is not a file position")
            index[key] = offset
    return index


def scan_index(rec_path: str) -> Dict[int, int]:
    """Rebuild an index for a `.rec` with no `.idx` by scanning it: record number -> offset."""
    index: Dict[int, int] = {}
    reader = MXRecordIO(rec_path, "r")
    try:
        key = 0
        while True:
            offset = reader.tell()
            if reader.read() is None:
                break
            index[key] = offset
            key += 1
    finally:
        reader.close()
    return index


class MXIndexedRecordIO(MXRecordIO):
    """RecordIO with a `.idx` index for random access: `read_idx(key)`, `write_idx(key, record)`, `keys`.

    Reading with a missing `.idx` rebuilds the index by a sequential scan (keys 0..N-1).
    """

    def __init__(self, idx_path: str, uri: str, mode: str, key_type=int):
        self.idx_path = str(idx_path)
        self.key_type = key_type
        self.idx: Dict[int, int] = {}
        self.keys: List[int] = []
        self._idx_handle = None
        super().__init__(uri, mode)

    def open(self) -> None:
        super().open()
        if self.flag == "r":
            if not self.idx:
                if os.path.isfile(self.idx_path):
                    self.idx = read_index(self.idx_path)
                else:
                    self.idx = scan_index(self.uri)
                self.keys = list(self.idx.keys())
        else:
            self.idx, self.keys = {}, []
            self._idx_handle = open(self.idx_path, "w", encoding="ascii")

    def close(self) -> None:
        if getattr(self, "_idx_handle", None) is not None:
            self._idx_handle.close()
            self._idx_handle = None
        super().close()

    def __getstate__(self):
        state = super().__getstate__()
        state["_idx_handle"] = None
        return state

    def seek(self, key: int) -> None:
        self._ensure_own_handle()
        try:
            offset = self.idx[key]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None
        self.handle.seek(offset)

    def read_idx(self, key: int) -> bytes:
        self.seek(key)
        record = self.read()
        if record is None:
            raise RecordIOError(f"{self.uri}: key {key} points past the end of the file (offset {self.idx[key]})")
        return record

    def write_idx(self, key: int, buf: bytes) -> None:
        key = self.key_type(key)
        offset = self.tell()
        self.write(buf)
        self._idx_handle.write(f"{key}\t{offset}\n")
        self.idx[key] = offset
        self.keys.append(key)


# MXNet spells the indexed class MXIndexedRecordIO; fr also offers the shorter name.
IndexedRecordIO = MXIndexedRecordIO
