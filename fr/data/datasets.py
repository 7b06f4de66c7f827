"""Torch datasets over insightface-layout RecordIO files (`train.rec`/`train.idx`)."""
from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

from fr.data.recordio import IndexedRecordIO, RecordIOError, unpack

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data set that cannot be used as given; the message names the file or record."""


@dataclass(frozen=True)
class RecordLayout:
    """What a record file holds: the image keys to train on and the number of classes."""

    image_keys: List[int]
    num_classes: int
    insightface: bool  # record 0 is a header and identity records follow the images


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
        missing = [k for k in (1, end_images - 1) if k not in record.idx]
        if end_images > 1 and missing:
            raise DataError(f"{record.uri}: header announces images 1..{end_images - 1} but key {missing[0]} "
                            f"is not in {record.idx_path}")
        return RecordLayout(list(range(1, end_images)), end_ids - end_images, True)
    keys = sorted(record.keys)
    # A plain (im2rec) file carries no class count: take it from the largest label.
    max_label = max(_label_of(unpack(record.read_idx(k))[0]) for k in keys)
    return RecordLayout(keys, max_label + 1, False)


def _label_of(header) -> int:
    label = header.label
    value = float(label) if np.ndim(label) == 0 else float(np.asarray(label).ravel()[0])
    return int(value)


class RecordDataset(torch.utils.data.Dataset):
    """Images and int labels from `root/train.rec`; yields (uint8 CHW tensor, int64 label).

    Normalisation happens on the training device (see fr.data.loader), so workers ship uint8, 4x less data.
    Each worker process opens its own file handle (the reader reopens after fork).
    """

    def __init__(self, root: str, num_classes: int = 0, image_size: int = 112, flip: bool = True):
        rec, idx = record_paths(root)
        self.root = root
        self.record = IndexedRecordIO(idx, rec, "r")
        self.layout = read_layout(self.record)
        if num_classes and num_classes < self.layout.num_classes:
            raise DataError(f"data.num_classes={num_classes} but {rec} holds {self.layout.num_classes} classes")
        self.num_classes = num_classes or self.layout.num_classes
        self.image_size = image_size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.layout.image_keys)

    def __getitem__(self, index: int):
        key = self.layout.image_keys[index]
        try:
            header, payload = unpack(self.record.read_idx(key))
        except (RecordIOError, KeyError) as exc:
            raise DataError(f"{self.record.uri}: record {key}: {exc}") from None
        label = _label_of(header)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{self.record.uri}: record {key} has label {label}, outside [0, {self.num_classes})")
        image = decode_image(payload, self.image_size, f"{self.record.uri}: record {key}")
        if self.flip and torch.rand(()) < 0.5:
            image = image[:, ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return chw, label


def decode_image(payload: bytes, size: int, where: str) -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 HxWx3 array, resized to size x size when it differs."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"{where}: cannot decode image ({exc})") from None
