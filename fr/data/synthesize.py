"""Builds the synthetic data set on disk: training identities as insightface RecordIO plus a held-out pairs `.bin`."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict
from typing import List, Sequence, Tuple

import numpy as np

from evaluation.bin_format import encode_jpeg, write_bin
from fr.config import SynthConfig
from fr.data.synthetic import SynthStyle, render_identity_images
from fr.data.writer import InsightfaceRecordWriter

log = logging.getLogger(__name__)

VERIFICATION_BIN = "synthetic_val.bin"
META_FILE = "synthetic.json"
JPEG_QUALITY = 95
_FOLDS = 10


def _render_job(job: Tuple[int, int, Sequence[int], float]) -> List[bytes]:
    """Render the given image indices of one identity and JPEG-encode them (runs in a worker process)."""
    seed, identity, image_indices, difficulty = job
    count = max(image_indices) + 1
    images = render_identity_images(seed, identity, count, style=SynthStyle(difficulty=difficulty))
    return [encode_jpeg(images[j], quality=JPEG_QUALITY) for j in image_indices]


def plan_pairs(cfg: SynthConfig) -> Tuple[List[Tuple[int, int, int, int]], List[bool]]:
    """Verification pairs over held-out identities as (identity_a, image_a, identity_b, image_b), with issame.

    Each of the 10 contiguous folds holds equally many positive and negative pairs, in a shuffled order.
    Image indices count up per identity, so no image appears twice.
    """
    rng = np.random.default_rng([cfg.seed, 7919])
    first = cfg.identities  # held-out identities come after the training ones: disjoint by construction
    holdout = np.arange(first, first + cfg.holdout_identities)
    next_image = {int(i): 0 for i in holdout}

    def take(identity: int) -> Tuple[int, int]:
        index = next_image[identity]
        next_image[identity] += 1
        return identity, index

    per_fold = cfg.pairs // _FOLDS
    pairs, issame = [], []
    for _ in range(_FOLDS):
        flags = np.array([True] * (per_fold // 2) + [False] * (per_fold // 2))
        rng.shuffle(flags)
        for same in flags:
            if same:
                identity = int(rng.choice(holdout))
                pairs.append(take(identity) + take(identity))
            else:
                a, b = (int(x) for x in rng.choice(holdout, size=2, replace=False))
                pairs.append(take(a) + take(b))
            issame.append(bool(same))
    return pairs, issame


def _pool(workers: int):
    processes = workers or os.cpu_count() or 1
    # fork is cheapest where available; rendering needs no torch state
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    return ctx.Pool(processes)


def generate(out_dir: str, cfg: SynthConfig) -> None:
    """Render the data set into `out_dir` (train.rec/.idx, synthetic_val.bin, synthetic.json).

    Writes into a sibling temporary directory and renames it at the end, so an interrupted run
    leaves nothing that looks like a finished data set.
    """
    if cfg.pairs % (2 * _FOLDS):
        raise ValueError(f"data.synth.pairs must be a multiple of {2 * _FOLDS} (balanced folds), got {cfg.pairs}")
    if cfg.holdout_identities < 2:
        raise ValueError("data.synth.holdout_identities must be >= 2 to form negative pairs")
    start = time.perf_counter()
    tmp_dir = out_dir.rstrip("/") + f".partial{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    try:
        pairs, issame = plan_pairs(cfg)
        wanted = {}
        for a, ia, b, ib in pairs:
            wanted.setdefault(a, []).append(ia)
            wanted.setdefault(b, []).append(ib)
        train_jobs = [(cfg.seed, k, list(range(cfg.per_identity)), cfg.difficulty) for k in range(cfg.identities)]
        holdout_ids = sorted(wanted)
        holdout_jobs = [(cfg.seed, k, sorted(wanted[k]), cfg.difficulty) for k in holdout_ids]
        with _pool(cfg.workers) as pool:
            with InsightfaceRecordWriter(tmp_dir) as writer:
                for encoded in pool.imap(_render_job, train_jobs, chunksize=4):
                    writer.add_identity(encoded)
            rendered = dict(zip(holdout_ids, pool.map(_render_job, holdout_jobs, chunksize=4)))
        lookup = {k: dict(zip(sorted(wanted[k]), rendered[k])) for k in holdout_ids}
        images = []
        for a, ia, b, ib in pairs:
            images += [lookup[a][ia], lookup[b][ib]]
        write_bin(os.path.join(tmp_dir, VERIFICATION_BIN), images, issame)
        with open(os.path.join(tmp_dir, META_FILE), "w", encoding="utf-8") as fh:
            json.dump(asdict(cfg), fh, indent=2)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("synthetic set written to %s: %d identities x %d images, %d verification pairs (%.1f s)",
             out_dir, cfg.identities, cfg.per_identity, cfg.pairs, time.perf_counter() - start)


def _same_recipe(saved: dict, cfg: SynthConfig) -> bool:
    wanted = asdict(cfg)
    wanted.pop("workers")  # how many processes rendered it does not change the images
    return all(saved.get(k) == v for k, v in wanted.items())


def ensure_synthetic(out_dir: str, cfg: SynthConfig) -> str:
    """Generate the set into `out_dir` unless an identical one is cached there; returns out_dir.

    A directory holding a different synthetic set, or other data, is an error rather than overwritten.
    """
    meta_path = os.path.join(out_dir, META_FILE)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if _same_recipe(saved, cfg):
            log.info("using cached synthetic set in %s", out_dir)
            return out_dir
        differing = [k for k, v in asdict(cfg).items() if k != "workers" and saved.get(k) != v]
        log.info("synthetic set in %s was made with other settings (%s); regenerating", out_dir, ", ".join(differing))
    elif os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"data.root={out_dir} is not empty and holds no synthetic set ({META_FILE} missing); "
                              f"choose another data.root for data.synthetic=true")
    generate(out_dir, cfg)
    return out_dir
