"""Writes a physically shuffled copy of a record file (plain layout: every record an image, keys 0..N-1)."""

from __future__ import annotations

import logging
import os

import numpy as np

from evaluation.fileio import sync_file
from fr.data.base import DataError
from fr.data.layout import checked_keys, read_layout, record_paths
from fr.data.ownership import check_apart, staged_output
from fr.data.recordio import IndexedRecordIO

log = logging.getLogger(__name__)


def shuffle_records(src: str, out_dir: str, seed: int = 0, progress: bool = True) -> dict:
    """Copy the image records of `src` in a random order to `out_dir/train.rec`/`.idx`.

    Identity ranges cannot survive a shuffle, so the copy has no header or identity records (fr reads it as
    the plain layout). Record bodies are copied byte for byte; corrupt records are skipped. `out_dir` must
    lie apart from `src` and its files (symlinks resolved) and hold nothing but fr's earlier outputs
    (`fr.data.ownership`); both are checked before anything is written.
    """
    rec_path, idx_path = record_paths(src)
    check_apart(out_dir, [src, rec_path, idx_path])
    record = IndexedRecordIO(idx_path, rec_path, "r")
    try:
        layout = read_layout(record)
        keys, skipped = checked_keys(record, layout, layout.num_classes)
        if not keys:
            raise DataError(f"{rec_path} holds no readable image records: nothing to shuffle")
        order = np.random.default_rng(seed).permutation(len(keys))
        with staged_output(out_dir, "fr-data shuffle", last=("train.rec",)) as stage:
            writer = IndexedRecordIO(os.path.join(stage, "train.idx"), os.path.join(stage, "train.rec"), "w")
            steps = range(len(order))
            if progress:
                from tqdm import tqdm

                steps = tqdm(steps, unit="rec", desc="shuffle")
            try:
                for new_key in steps:
                    writer.write_idx(new_key, record.read_idx(keys[order[new_key]]))
            finally:
                writer.close()
            for name in ("train.idx", "train.rec"):  # on disk before staged_output renames them into out_dir
                sync_file(os.path.join(stage, name))
    finally:
        record.close()
    return {"out": out_dir, "images": len(keys), "skipped_records": len(skipped), "seed": seed}
