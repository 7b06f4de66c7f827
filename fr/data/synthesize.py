"""Builds the synthetic data set on disk: training identities as insightface RecordIO plus a held-out pairs `.bin`."""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from typing import List, Optional, Sequence, Tuple

import numpy as np

from evaluation.bin_format import encode_jpeg, write_bin
from fr.config import ConfigError, SynthConfig
from fr.data.ownership import ForeignFileError, first_foreign, staged_output
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


def check_recipe(cfg: SynthConfig) -> None:
    """ConfigError naming the first setting that would give an empty or unbalanced data set."""
    rules = [("identities", cfg.identities > 0, "> 0"), ("per_identity", cfg.per_identity > 0, "> 0"),
             ("holdout_identities", cfg.holdout_identities >= 2, ">= 2 (negative pairs need two identities)"),
             ("pairs", cfg.pairs > 0 and cfg.pairs % (2 * _FOLDS) == 0,
              f"a positive multiple of {2 * _FOLDS} (balanced folds)"),
             ("workers", cfg.workers >= 0, ">= 0")]
    for name, ok, wanted in rules:
        if not ok:
            raise ConfigError(f"data.synth.{name} (fr-data synth --{name.replace('_', '-')}) must be {wanted}, "
                              f"got {getattr(cfg, name)}")


def generate(out_dir: str, cfg: SynthConfig, command: str = "fr-data synth") -> None:
    """Render the data set into `out_dir` (train.rec/.idx, synthetic_val.bin, synthetic.json).

    `out_dir` may be absent, empty, or hold only files fr wrote there (`fr.data.ownership`): those are
    replaced; anything else is a ForeignFileError before any work. The set is rendered into a staging
    directory and moved in at the end, synthetic.json last, so an interrupted run leaves nothing that looks
    like a finished data set.
    """
    check_recipe(cfg)
    start = time.perf_counter()
    with staged_output(out_dir, command, last=(META_FILE,)) as stage:
        pairs, issame = plan_pairs(cfg)
        wanted = {}
        for a, ia, b, ib in pairs:
            wanted.setdefault(a, []).append(ia)
            wanted.setdefault(b, []).append(ib)
        train_jobs = [(cfg.seed, k, list(range(cfg.per_identity)), cfg.difficulty) for k in range(cfg.identities)]
        holdout_ids = sorted(wanted)
        holdout_jobs = [(cfg.seed, k, sorted(wanted[k]), cfg.difficulty) for k in holdout_ids]
        with _pool(cfg.workers) as pool:
            with InsightfaceRecordWriter(stage) as writer:
                for encoded in pool.imap(_render_job, train_jobs, chunksize=4):
                    writer.add_identity(encoded)
            rendered = dict(zip(holdout_ids, pool.map(_render_job, holdout_jobs, chunksize=4)))
        lookup = {k: dict(zip(sorted(wanted[k]), rendered[k])) for k in holdout_ids}
        images = []
        for a, ia, b, ib in pairs:
            images += [lookup[a][ia], lookup[b][ib]]
        write_bin(os.path.join(stage, VERIFICATION_BIN), images, issame)
        with open(os.path.join(stage, META_FILE), "w", encoding="utf-8") as fh:
            json.dump(asdict(cfg), fh, indent=2)
    log.info("synthetic set written to %s: %d identities x %d images, %d verification pairs (%.1f s)",
             out_dir, cfg.identities, cfg.per_identity, cfg.pairs, time.perf_counter() - start)


def _same_recipe(saved: dict, cfg: SynthConfig) -> bool:
    wanted = asdict(cfg)
    wanted.pop("workers")  # how many processes rendered it does not change the images
    return all(saved.get(k) == v for k, v in wanted.items())


def _saved_recipe(out_dir: str) -> Optional[dict]:
    """The settings stored with the set in `out_dir`, or None when there is no readable synthetic.json."""
    try:
        with open(os.path.join(out_dir, META_FILE), encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def ensure_synthetic(out_dir: str, cfg: SynthConfig) -> str:
    """Generate the set into `out_dir` unless one with the same settings is there already; returns out_dir.

    The cached check reads only synthetic.json. Otherwise fr regenerates, replacing only files its manifest
    says it wrote; any other file or folder in `out_dir` is a ForeignFileError naming it, before any change.
    """
    saved = _saved_recipe(out_dir)
    if saved is not None and _same_recipe(saved, cfg):
        log.info("using cached synthetic set in %s", out_dir)
        return out_dir
    check_recipe(cfg)
    differing = [k for k, v in asdict(cfg).items() if saved is not None and k != "workers" and saved.get(k) != v]
    held = f"a synthetic set made with other settings ({', '.join(differing)}) and" if saved is not None \
        else "no synthetic set fr wrote:"
    foreign = first_foreign(out_dir)
    if foreign:
        path, why = foreign
        raise ForeignFileError(f"data.root={out_dir} holds {held} {path} {why}; fr replaces only files it wrote, "
                               f"so choose another data.root for data.synthetic=true (or clear this one yourself)")
    if saved is not None:
        log.info("synthetic set in %s was made with other settings (%s); regenerating", out_dir, ", ".join(differing))
    generate(out_dir, cfg, command="fr-train data.synthetic=true")
    return out_dir
