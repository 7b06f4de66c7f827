"""Writes a physically shuffled copy of a record file (plain layout: every record an image, keys 0..N-1)."""
from __future__ import annotations

import logging
import os
import numpy as np

from fr.data.layout import checked_keys, read_layout, record_paths
from fr.data.recordio import IndexedRecordIO

log = logging.getLogger(__name__)


def shuffle_records(src: str, out_dir: str, seed: int = 0, progress: bool = True) -> dict:
    """Copy the image records of `src` in a random order to `out_dir/train.rec`/`.idx`.

    Identity ranges cannot survive a shuffle, so the copy has no header or identity records (fr reads it as
    the plain layout). Record bodies are copied byte for byte; garbled records are left out.
    """
    rec_path, idx_path = record_paths(src)
    if os.path.abspath(out_dir) == os.path.abspath(src):
        raise ValueError(f"shuffle output {out_dir} must differ from the source directory")
    record = IndexedRecordIO(idx_path, rec_path, "r")
    layout = read_layout(record)
    keys, garbled = checked_keys(record, layout, layout.num_classes)
    order = np.random.default_rng(seed).permutation(len(keys))
    os.makedirs(out_dir, exist_ok=True)
    out_rec, out_idx = os.path.join(out_dir, "train.rec"), os.path.join(out_dir, "train.idx")
    writer = IndexedRecordIO(out_idx + ".partial", out_rec + ".partial", "w")
    steps = range(len(order))
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, unit="rec", desc="shuffle")
    try:
        for new_key in steps:
            writer.write_idx(new_key, record.read_idx(keys[order[new_key]]))
    except BaseException:
        writer.close()
        os.remove(out_rec + ".partial")
        os.remove(out_idx + ".partial")
        raise
    writer.close()
    record.close()
    os.replace(out_idx + ".partial", out_idx)
    os.replace(out_rec + ".partial", out_rec)
    return {"out": out_dir, "images": len(keys), "garbled_skipped": garbled, "seed": seed}
