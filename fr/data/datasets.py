"""Torch datasets over insightface-layout RecordIO files (`train.rec`/`train.idx`)."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from fr.data.decode import Decoder, get_decoder, resize_rgb
from fr.data.recordio import IndexedRecordIO, RecordIOError, unpack
from fr.data.verify import check_records, label_of, scan_headers

log = logging.getLogger(__name__)


class DataError(ValueError):
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


class RecordDataset(torch.utils.data.Dataset):
    """Images and int labels from `root/train.rec`; yields (uint8 CHW tensor, int64 label).

    Labels and identity records are checked from the headers when the dataset is built (an error names the
    record). A record that fails to read or decode while training is replaced by the next good one and
    counted (`load` returns the count), so batches keep their size and no label is ever wrong.
    Normalisation happens on the training device (see fr.data.loader), so workers ship uint8, 4x less data.
    Each worker process opens its own file handle (the reader reopens after fork).
    """

    max_replacements = 16  # consecutive bad records before giving up: the file is then unusable

    def __init__(self, root: str, num_classes: int = 0, image_size: int = 112, flip: bool = True,
                 decoder: str = "auto", augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
                 validate: bool = True):
        rec, idx = record_paths(root)
        self.root = root
        self.record = IndexedRecordIO(idx, rec, "r")
        self.layout = read_layout(self.record)
        if num_classes and num_classes < self.layout.num_classes:
            raise DataError(f"data.num_classes={num_classes} but {rec} holds {self.layout.num_classes} classes")
        self.num_classes = num_classes or self.layout.num_classes
        self.keys, self.garbled = (checked_keys(self.record, self.layout, self.num_classes) if validate
                                   else (list(self.layout.image_keys), 0))
        if not self.keys:
            raise DataError(f"{rec}: no readable image records")
        self.image_size = image_size
        self.flip = flip
        self.decode = get_decoder(decoder)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        image, label, _ = self.load(index)
        return image, label

    def read(self, key: int) -> Tuple[np.ndarray, int]:
        """Decode record `key` to (HxWx3 uint8, label); DataError naming the record when it cannot."""
        try:
            header, payload = unpack(self.record.read_idx(key))
        except (RecordIOError, KeyError) as exc:
            raise DataError(f"{self.record.uri}: record {key}: {exc}") from None
        label = label_of(header)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{self.record.uri}: record {key} has label {label}, outside [0, {self.num_classes})")
        return decode_image(payload, self.image_size, f"{self.record.uri}: record {key}", self.decode), label

    def load(self, index: int, seed: Optional[int] = None) -> Tuple[torch.Tensor, int, int]:
        """(uint8 CHW, label, records skipped): a bad record is logged and replaced by the next good one.

        `seed` fixes this sample's flip and augmentation (see `to_chw`)."""
        for skipped in range(self.max_replacements + 1):
            key = self.keys[(index + skipped) % len(self.keys)]
            try:
                image, label = self.read(key)
                break
            except DataError as exc:
                log.warning("skipping record: %s", exc)
        else:
            raise DataError(f"{self.record.uri}: {self.max_replacements + 1} consecutive records from key "
                            f"{self.keys[index]} are unreadable; run `fr-data verify {self.root}`")
        return to_chw(image, self.flip, self.augment, seed), label, skipped


def to_chw(image: np.ndarray, flip: bool, augment=None, seed: Optional[int] = None) -> torch.Tensor:
    """Optional augmentation and random horizontal flip, then HWC uint8 -> CHW uint8 tensor.

    With a `seed` (a well-mixed 63-bit integer, as the loader's sampler gives) the draws depend on it alone,
    so a resumed run or another worker count sees the same flips; without one, the process's generators.
    """
    if seed is None:
        seed = random.getrandbits(63)  # DataLoader seeds `random` per worker
    if augment is not None:
        image = augment(image, np.random.default_rng(seed))
    if flip and (seed >> 17) & 1:  # a bit of the mixed seed is a fair coin, and far cheaper than a generator
        image = image[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def decode_image(payload: bytes, size: int, where: str, decode: Optional[Decoder] = None) -> np.ndarray:
    """Decode JPEG/PNG bytes to an RGB uint8 HxWx3 array, resized to size x size when it differs."""
    try:
        image = (decode or get_decoder("pillow"))(payload)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"decoded to shape {image.shape}, expected HxWx3")
        return resize_rgb(image, size)
    except Exception as exc:  # decoders raise many types for corrupt data
        raise DataError(f"{where}: cannot decode image ({exc})") from None


class ImageFolderDataset(torch.utils.data.Dataset):
    """Aligned crops in `root/<identity>/*.jpg`: identities sorted by name are classes 0..C-1.

    Same interface as RecordDataset (`num_classes`, `load`, `garbled`); unreadable files are replaced and counted.
    """

    max_replacements = RecordDataset.max_replacements

    def __init__(self, root: str, num_classes: int = 0, image_size: int = 112, flip: bool = True,
                 decoder: str = "auto", augment=None):
        from fr.data.pack import list_image_folder

        self.root = root
        self.items = list_image_folder(root)
        found = self.items[-1][1] + 1
        if num_classes and num_classes < found:
            raise DataError(f"data.num_classes={num_classes} but {root} holds {found} identity folders")
        self.num_classes = num_classes or found
        self.garbled = 0
        self.image_size, self.flip, self.augment = image_size, flip, augment
        self.decode = get_decoder(decoder)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, label, _ = self.load(index)
        return image, label

    def load(self, index: int, seed: Optional[int] = None) -> Tuple[torch.Tensor, int, int]:
        for skipped in range(self.max_replacements + 1):
            path, label = self.items[(index + skipped) % len(self.items)]
            try:
                with open(path, "rb") as fh:
                    image = decode_image(fh.read(), self.image_size, path, self.decode)
                break
            except (OSError, DataError) as exc:
                log.warning("skipping image: %s", exc)
        else:
            raise DataError(f"{self.root}: {self.max_replacements + 1} consecutive images from "
                            f"{self.items[index][0]} are unreadable")
        return to_chw(image, self.flip, self.augment, seed), label, skipped


def open_dataset(root: str, **kwargs) -> torch.utils.data.Dataset:
    """RecordDataset when `root` holds train.rec, else ImageFolderDataset over its identity folders."""
    if os.path.isdir(root) and not os.path.isfile(os.path.join(root, "train.rec")) and any(
            os.path.isdir(os.path.join(root, d)) for d in os.listdir(root)):
        return ImageFolderDataset(root, **kwargs)
    return RecordDataset(root, **kwargs)
