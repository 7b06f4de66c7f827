"""Torch datasets over insightface-layout RecordIO files (`train.rec`/`train.idx`)."""

from __future__ import annotations

import logging
import os
import random
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from fr.data.base import MAX_REPLACEMENTS, DataError, flip_coin
from fr.data.decode import Decoder, get_decoder, resize_rgb
from fr.data.headers import bad_label, label_of
from fr.data.image_index import build_index, read_index_keys
from fr.data.layout import checked_keys, log_skipped, read_layout, record_paths
from fr.data.recordio import IndexedRecordIO, RecordIOError, unpack

log = logging.getLogger(__name__)


class RecordDataset(torch.utils.data.Dataset):
    """Images and int labels from `root/train.rec`; yields (uint8 CHW tensor, int64 label).

    Labels and identity records are checked from the headers when the dataset is built: identity records that
    disagree with the header are an error naming the record; records with a corrupt header or a label that
    names no class are skipped (`skipped` counts them, one log line names the first). With a `cache_dir`
    ("" = the default place) the check is the one of `fr.data.image_index`, headers plus a structural image
    check, done once per record file and shared with the DALI loader; without, the headers are checked every
    time. A record that fails to read or decode (or has a bad label) while training is skipped: replaced by
    the next good one, its key returned by `load`, so batches keep their size and no label is ever wrong.
    Normalisation happens on the training device (see fr.data.loader), so workers ship uint8, 4x less data.
    Each worker process opens its own file handle (the reader reopens after fork).
    """

    max_replacements = MAX_REPLACEMENTS  # consecutive skipped records before giving up

    def __init__(
        self,
        root: str,
        num_classes: int = 0,
        image_size: int = 112,
        flip: bool = True,
        decoder: str = "auto",
        augment: Optional[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = None,
        validate: bool = True,
        cache_dir: Optional[str] = None,
    ):
        rec, idx = record_paths(root)
        self.root = root
        self.record = IndexedRecordIO(idx, rec, "r")
        self.layout = read_layout(self.record)
        if num_classes and num_classes < self.layout.num_classes:
            raise DataError(f"data.num_classes={num_classes} but {rec} holds {self.layout.num_classes} classes")
        self.num_classes = num_classes or self.layout.num_classes
        if validate and cache_dir is not None:
            index = build_index(root, self.num_classes, cache_dir)
            self.keys, self.skipped = read_index_keys(index.path), index.skipped
        elif validate:
            self.keys, skipped = checked_keys(self.record, self.layout, self.num_classes)
            log_skipped(rec, skipped)
            self.skipped = len(skipped)
        else:
            self.keys, self.skipped = list(self.layout.image_keys), 0
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
        problem = bad_label(label, self.num_classes)
        if problem is not None:
            raise DataError(f"{self.record.uri}: record {key} {problem}")
        image = decode_training_image(payload, self.image_size, f"{self.record.uri}: record {key}", self.decode)
        return image, int(label)

    def load(self, index: int, seed: Optional[int] = None) -> Tuple[torch.Tensor, int, torch.Tensor]:
        """(uint8 CHW, label, skipped): a bad record is logged and replaced by the next good one in the data
        set's key order (not the epoch's order, so the replacement depends on the record alone, whatever the rank
        or world size); `skipped` holds the keys of the records skipped for this sample (see `skipped_keys`).

        `seed` fixes this sample's flip and augmentation (see `to_chw`)."""
        bad = []
        for attempt in range(self.max_replacements + 1):
            key = self.keys[(index + attempt) % len(self.keys)]
            try:
                image, label = self.read(key)
                break
            except DataError as exc:
                log.warning("skipping record: %s", exc)
                bad.append(key)
        else:
            raise DataError(
                f"{self.record.uri}: {self.max_replacements + 1} consecutive records from key "
                f"{self.keys[index]} are unreadable; run `fr-data verify {self.root}`"
            )
        return to_chw(image, self.flip, self.augment, seed), label, skipped_keys(bad, self.max_replacements)


def skipped_keys(keys, size: int) -> torch.Tensor:
    """`keys` as an int64 tensor padded with -1 to `size`, so that samples collate into one batch tensor.

    The loader keeps the keys in a set: a record met again (as the replacement of another bad record, or in
    a later epoch) is counted once."""
    out = torch.full((size,), -1, dtype=torch.int64)
    out[: len(keys)] = torch.as_tensor(keys, dtype=torch.int64)
    return out


def to_chw(image: np.ndarray, flip: bool, augment=None, seed: Optional[int] = None) -> torch.Tensor:
    """Optional augmentation and random horizontal flip, then HWC uint8 -> CHW uint8 tensor.

    With a `seed` (a well-mixed 63-bit integer, as the loader's sampler gives) the draws depend on it alone,
    so a resumed run or another worker count sees the same flips; without one, the process's generators.
    """
    if seed is None:
        seed = random.getrandbits(63)  # DataLoader seeds `random` per worker
    if augment is not None:
        image = augment(image, np.random.default_rng(seed))
    if flip and flip_coin(seed):
        image = image[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def decode_training_image(payload: bytes, size: int, where: str, decode: Optional[Decoder] = None) -> np.ndarray:
    """A training image (record payload or image-folder file) as RGB uint8 HxWx3, resized to size x size when it
    differs; DataError naming `where` when it cannot be decoded."""
    try:
        image = (decode or get_decoder("pillow"))(payload)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"decoded to shape {image.shape}, expected HxWx3")
        return resize_rgb(image, size)
    except Exception as exc:  # decoders raise many types for corrupt data
        raise DataError(f"{where}: cannot decode image ({exc})") from None


class ImageFolderDataset(torch.utils.data.Dataset):
    """Aligned crops in `root/<identity>/*.jpg`: identities sorted by name are classes 0..C-1.

    Same interface as RecordDataset (`num_classes`, `load`, `skipped`); unreadable files are skipped (replaced,
    their item index returned by `load`).
    """

    max_replacements = RecordDataset.max_replacements

    def __init__(
        self,
        root: str,
        num_classes: int = 0,
        image_size: int = 112,
        flip: bool = True,
        decoder: str = "auto",
        augment=None,
    ):
        from fr.data.pack import list_image_folder

        self.root = root
        self.items = list_image_folder(root)
        found = self.items[-1][1] + 1
        if num_classes and num_classes < found:
            raise DataError(f"data.num_classes={num_classes} but {root} holds {found} identity folders")
        self.num_classes = num_classes or found
        self.skipped = 0
        self.image_size, self.flip, self.augment = image_size, flip, augment
        self.decode = get_decoder(decoder)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, label, _ = self.load(index)
        return image, label

    def load(self, index: int, seed: Optional[int] = None) -> Tuple[torch.Tensor, int, torch.Tensor]:
        bad = []
        for attempt in range(self.max_replacements + 1):
            item = (index + attempt) % len(self.items)
            path, label = self.items[item]
            try:
                with open(path, "rb") as fh:
                    image = decode_training_image(fh.read(), self.image_size, path, self.decode)
                break
            except (OSError, DataError) as exc:
                log.warning("skipping image: %s", exc)
                bad.append(item)
        else:
            raise DataError(
                f"{self.root}: {self.max_replacements + 1} consecutive images from "
                f"{self.items[index][0]} are unreadable"
            )
        return to_chw(image, self.flip, self.augment, seed), label, skipped_keys(bad, self.max_replacements)


def open_dataset(root: str, cache_dir: Optional[str] = None, **kwargs) -> torch.utils.data.Dataset:
    """RecordDataset when `root` holds train.rec (its checked index cached in `cache_dir`, see RecordDataset),
    else ImageFolderDataset over its identity folders."""
    if (
        os.path.isdir(root)
        and not os.path.isfile(os.path.join(root, "train.rec"))
        and any(os.path.isdir(os.path.join(root, d)) for d in os.listdir(root))
    ):
        return ImageFolderDataset(root, **kwargs)
    return RecordDataset(root, cache_dir=cache_dir, **kwargs)
