"""Builds the synthetic data set on disk: training identities as insightface RecordIO plus a held-out pairs `.bin`."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from evaluation.bin_format import encode_jpeg, write_bin
from fr.config import SynthConfig
from fr.data.ownership import ForeignFileError, first_foreign, staged_output
from fr.data.writer import InsightfaceRecordWriter
from fr.synth.render import SynthStyle, render_identity_images

log = logging.getLogger(__name__)

VERIFICATION_BIN = "synthetic_val.bin"
META_FILE = "synthetic.json"
JPEG_QUALITY = 95


class RenderJob(NamedTuple):
    """Images of one identity for one worker process to render and encode."""

    seed: int
    identity: int
    images: Tuple[int, ...]  # image indices, in the order their JPEGs are returned
    difficulty: float


class ImageRef(NamedTuple):
    """One rendered image: image number `image` of identity `identity`."""

    identity: int
    image: int


class Pair(NamedTuple):
    """One verification pair and whether both images show the same identity."""

    first: ImageRef
    second: ImageRef
    same: bool


def _render_job(job: RenderJob) -> List[bytes]:
    """Render the job's images and JPEG-encode them (runs in a worker process)."""
    count = max(job.images) + 1
    images = render_identity_images(job.seed, job.identity, count, style=SynthStyle(difficulty=job.difficulty))
    return [encode_jpeg(images[j], quality=JPEG_QUALITY) for j in job.images]


def plan_pairs(cfg: SynthConfig) -> List[Pair]:
    """Verification pairs over the held-out identities.

    Each of the `SynthConfig.FOLDS` contiguous folds holds equally many positive and negative pairs, in a
    shuffled order. Image numbers count up per identity, so no image appears twice.
    """
    rng = np.random.default_rng([cfg.seed, 7919])
    first = cfg.identities  # held-out identities come after the training ones: disjoint by construction
    holdout = np.arange(first, first + cfg.holdout_identities)
    next_image = {int(i): 0 for i in holdout}

    def take(identity: int) -> ImageRef:
        index = next_image[identity]
        next_image[identity] += 1
        return ImageRef(identity, index)

    per_fold = cfg.pairs // cfg.FOLDS
    pairs = []
    for _ in range(cfg.FOLDS):
        flags = np.array([True] * (per_fold // 2) + [False] * (per_fold // 2))
        rng.shuffle(flags)
        for same in flags:
            if same:
                identity = int(rng.choice(holdout))
                pairs.append(Pair(take(identity), take(identity), True))
            else:
                a, b = (int(x) for x in rng.choice(holdout, size=2, replace=False))
                pairs.append(Pair(take(a), take(b), False))
    return pairs


def _pool(workers: int):
    processes = workers or os.cpu_count() or 1
    # fork is cheapest where available; rendering needs no torch state
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    return ctx.Pool(processes)


def _render_pairs(pool, cfg: SynthConfig, pairs: List[Pair]) -> List[bytes]:
    """JPEGs of both images of every pair, in pair order (first, second, first, second, ...)."""
    wanted: Dict[int, List[int]] = {}
    for pair in pairs:
        for ref in (pair.first, pair.second):
            wanted.setdefault(ref.identity, []).append(ref.image)
    jobs = [RenderJob(cfg.seed, k, tuple(sorted(wanted[k])), cfg.difficulty) for k in sorted(wanted)]
    encoded: Dict[ImageRef, bytes] = {}
    for job, jpegs in zip(jobs, pool.map(_render_job, jobs, chunksize=4)):
        encoded.update((ImageRef(job.identity, j), jpeg) for j, jpeg in zip(job.images, jpegs))
    return [encoded[ref] for pair in pairs for ref in (pair.first, pair.second)]


def generate(out_dir: str, cfg: SynthConfig, command: str = "fr-data synth") -> None:
    """Render the data set into `out_dir` (train.rec/.idx, synthetic_val.bin, synthetic.json).

    `out_dir` may be absent, empty, or hold only files fr wrote there (`fr.data.ownership`): those are
    replaced; anything else is a ForeignFileError before any work. The set is rendered into a staging
    directory and moved in at the end, synthetic.json last, so an interrupted run leaves nothing that looks
    like a finished data set.
    """
    cfg.validate()
    start = time.perf_counter()
    with staged_output(out_dir, command, last=(META_FILE,)) as stage:
        pairs = plan_pairs(cfg)
        train_jobs = [
            RenderJob(cfg.seed, k, tuple(range(cfg.per_identity)), cfg.difficulty) for k in range(cfg.identities)
        ]
        with _pool(cfg.workers) as pool:
            with InsightfaceRecordWriter(stage) as writer:
                for encoded in pool.imap(_render_job, train_jobs, chunksize=4):
                    writer.add_identity(encoded)
            images = _render_pairs(pool, cfg, pairs)
        write_bin(os.path.join(stage, VERIFICATION_BIN), images, [pair.same for pair in pairs])
        with open(os.path.join(stage, META_FILE), "w", encoding="utf-8") as fh:
            json.dump(asdict(cfg), fh, indent=2)
    log.info(
        "synthetic set written to %s: %d identities x %d images, %d verification pairs (%.1f s)",
        out_dir,
        cfg.identities,
        cfg.per_identity,
        cfg.pairs,
        time.perf_counter() - start,
    )


def _recipe(cfg: SynthConfig) -> dict:
    """The settings that decide the images: all but the number of rendering processes."""
    recipe = asdict(cfg)
    recipe.pop("workers")
    return recipe


def _saved_recipe(out_dir: str) -> Optional[dict]:
    """The settings stored with the set in `out_dir`, or None when there is no readable synthetic.json."""
    try:
        with open(os.path.join(out_dir, META_FILE), encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def ensure_synthetic(out_dir: str, cfg: SynthConfig) -> str:
    """Generate the set into `out_dir` unless its synthetic.json records the same settings; returns out_dir.

    Only synthetic.json is read to decide: the set's other files are trusted, not checked. Otherwise the set
    is regenerated through `generate`, which replaces only files fr's manifest lists; any other entry of
    `out_dir` (but the manifest, the loaders' `.fr_cache` and fr's staging directories) is a ForeignFileError
    naming it, raised before anything changes.
    """
    saved = _saved_recipe(out_dir)
    differing = [k for k, v in _recipe(cfg).items() if saved is not None and saved.get(k) != v]
    if saved is not None and not differing:
        log.info("using cached synthetic set in %s", out_dir)
        return out_dir
    cfg.validate()
    held = (
        f"a synthetic set made with other settings ({', '.join(differing)}) and"
        if saved is not None
        else "no synthetic set fr wrote:"
    )
    foreign = first_foreign(out_dir)
    if foreign:
        path, why = foreign
        raise ForeignFileError(
            f"data.root={out_dir} holds {held} {path} {why}; fr replaces only files it wrote, "
            f"so choose another data.root for data.synthetic=true (or clear this one yourself)"
        )
    if saved is not None:
        log.info("synthetic set in %s was made with other settings (%s); regenerating", out_dir, ", ".join(differing))
    generate(out_dir, cfg, command="fr-train data.synthetic=true")
    return out_dir
