"""Checked image-only index files: built once per record file, cached, read by both loaders.

The user's `.idx` also lists the header record 0 and the identity records, which are not samples, and DALI
cannot skip an image it fails to decode. So both loaders train on an index of the image records that passed the
header check and the structural image check (`fr.data.verify.check_record_images`), written once to a cache
directory (the torch loader thereby skips the full header scan at each start). Its order is the one the epochs'
permutations index (fr.data.base.epoch_order); the DALI loader reads the records at the listed offsets itself
and feeds them to its pipeline (fr.data.dali).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from evaluation.fileio import atomic_write_json, atomic_write_text
from fr.data.base import DataError
from fr.data.layout import checked_keys, log_skipped, read_layout, record_paths
from fr.data.recordio import IndexedRecordIO, MXRecordIO, unpack
from fr.data.verify import check_record_images

log = logging.getLogger(__name__)

# Part of the cache name: indexes written by an older check are not reused (v4: labels that name no class,
# such as -0.5 or NaN, are skipped).
INDEX_VERSION = 4


@dataclass(frozen=True)
class ImageIndex:
    """An index file for DALI's reader and what was found while writing it."""

    path: str
    images: int
    num_classes: int
    skipped: int  # records skipped: corrupt headers, labels that name no class, images failing the check
    sizes: Dict[Tuple[int, int], int]  # (width, height) -> number of images


def build_index(root: str, num_classes: int = 0, cache_dir: str = "") -> ImageIndex:
    """The checked image-only index of `root/train.rec`, written on first use (one process writes, others wait).

    The cache name hashes the record file's path, size and mtime (and the class count the labels were checked
    against), so a changed file gets a new index. A `.json` beside it keeps the counts, the image sizes and
    one message per skipped record.
    """
    rec_path, idx_path = record_paths(root)
    with IndexedRecordIO(idx_path, rec_path, "r") as record:
        layout = read_layout(record)
        classes = num_classes or layout.num_classes
        if num_classes and num_classes < layout.num_classes:
            raise DataError(f"data.num_classes={num_classes} but {rec_path} holds {layout.num_classes} classes")
        stat = os.stat(rec_path)
        tag = hashlib.sha1(
            f"{os.path.abspath(rec_path)}|{stat.st_size}|{stat.st_mtime_ns}|{classes}|v{INDEX_VERSION}".encode()
        )
        directory = cache_dir or _default_cache_dir(root)
        os.makedirs(directory, exist_ok=True)
        out = os.path.join(directory, f"train.{tag.hexdigest()[:16]}.images.idx")
        meta_path = out + ".json"
        with _exclusive(out + ".lock"):  # ranks starting together would otherwise all scan the file
            if not (os.path.isfile(out) and os.path.isfile(meta_path)):
                _write_index(record, layout, classes, out, meta_path)
    with open(meta_path, "r", encoding="utf-8") as fh:
        meta = json.load(fh)
    log_skipped(rec_path, {int(key): why for key, why in meta["skipped"].items()}, meta_path)
    return ImageIndex(out, meta["images"], classes, len(meta["skipped"]), {(w, h): n for w, h, n in meta["sizes"]})


def _write_index(record: IndexedRecordIO, layout, classes: int, out: str, meta_path: str) -> None:
    keys, skipped = checked_keys(record, layout, classes)  # DataError for identity records
    images = check_record_images(record, keys)
    skipped.update(images.skipped)
    meta = {
        "images": len(images.keys),
        "sizes": [[w, h, n] for (w, h), n in sorted(images.sizes.items())],
        "skipped": {str(key): skipped[key] for key in sorted(skipped)},
    }
    # Meta first: a crash between the two writes leaves no index without its counts.
    atomic_write_text(meta_path, json.dumps(meta))
    atomic_write_text(out, "".join(f"{key}\t{record.idx[key]}\n" for key in images.keys))
    log.info("wrote the image-only index %s (%d images, %d records skipped)", out, len(images.keys), len(skipped))


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def skipped_path(index_path: str) -> str:
    """Where the records skipped while training (DALI failed to decode them) are listed, beside the index."""
    return index_path + ".skipped.json"


def read_skipped(index_path: str) -> Dict[int, str]:
    """{key: how it was found} of the records DALI failed to decode in earlier runs over this index.

    Also reads `<index>.undecodable.json`, the list's earlier name, so a cache written before keeps its list.
    """
    known: Dict[int, str] = {}
    for path in (index_path + ".undecodable.json", skipped_path(index_path)):
        try:
            with open(path, "r", encoding="utf-8") as fh:
                known.update({int(key): str(how) for key, how in json.load(fh).items()})
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError) as exc:  # a cache: losing it costs one search, not the run
            log.warning("ignoring %s (%s): records DALI cannot decode will be searched for again", path, exc)
    return known


def add_skipped(index_path: str, found: Dict[int, str]) -> None:
    """Adds `found` ({key: how}) to the list beside the index, so later runs leave them out from the start.

    Ranks that find records at the same time merge their lists under the index's lock.
    """
    with _exclusive(index_path + ".lock"):
        known = read_skipped(index_path)
        known.update(found)
        atomic_write_json(skipped_path(index_path), {str(key): known[key] for key in sorted(known)})


def _default_cache_dir(root: str) -> str:
    """Beside the data when writable (fast to share between ranks), else the user's cache."""
    if os.access(root, os.W_OK):
        return os.path.join(root, ".fr_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "fr")


def read_index_keys(index_path: str) -> List[int]:
    """The record keys listed in an index file, in its order."""
    with open(index_path, "r", encoding="ascii") as fh:
        return [int(line.split("\t", 1)[0]) for line in fh]


def read_index_entries(index_path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of the records listed in an index file, in its order, as int64 arrays (16 bytes per record;
    Python ints in lists would take several times that for tens of millions of records)."""
    with open(index_path, "rb") as fh:
        values = np.array(fh.read().split(), dtype=np.int64)
    return values[0::2], values[1::2]


def read_payloads(rec_path: str, entries: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, bytes]]:
    """(key, image payload) of each (key, offset), as the DALI loader feeds it to its pipeline."""
    with MXRecordIO(rec_path, "r") as reader:
        for key, offset in entries:
            reader.handle.seek(offset)
            yield key, unpack(reader.read())[1]
