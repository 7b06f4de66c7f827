"""Packs an image folder (one sub-folder per identity) or an im2rec `.lst` into insightface-layout records."""

from __future__ import annotations

import io
import logging
import os
from multiprocessing import get_context
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from fr.data.base import DataError
from fr.data.ownership import check_apart, staged_output
from fr.data.writer import InsightfaceRecordWriter

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_image_folder(src: str) -> List[Tuple[str, int]]:
    """(path, label) for every image of `src/<identity>/`; identities sorted by name get labels 0..C-1."""
    if not os.path.isdir(src):
        raise DataError(f"image folder not found: {src}")
    identities = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    if not identities:
        raise DataError(f"{src} holds no sub-folders: expected one folder of images per identity")
    items: List[Tuple[str, int]] = []
    for label, name in enumerate(identities):
        folder = os.path.join(src, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        items.extend((os.path.join(folder, f), label) for f in files)
    return items


def read_lst(lst_path: str, image_root: Optional[str] = None) -> List[Tuple[str, int]]:
    """(path, label) from an im2rec list: `index<TAB>label<TAB>relative path` per line."""
    root = image_root or os.path.dirname(os.path.abspath(lst_path))
    items: List[Tuple[str, int]] = []
    with open(lst_path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            try:
                if len(fields) < 3:
                    raise ValueError
                label = float(fields[1])
            except ValueError:
                raise DataError(
                    f"{lst_path}:{lineno}: expected 'index<TAB>label<TAB>path', got {line[:60]!r}"
                ) from None
            if label != int(label) or label < 0:
                raise DataError(f"{lst_path}:{lineno}: label {fields[1]} is not a non-negative integer class")
            items.append((os.path.join(root, fields[-1]), int(label)))
    if not items:
        raise DataError(f"{lst_path} lists no images")
    return items


def group_by_label(items: List[Tuple[str, int]], source: str) -> List[Tuple[str, int]]:
    """Sort by label (stable) and check the classes are exactly 0..C-1, as the layout needs."""
    if not items:
        raise DataError(f"{source} lists no images: nothing to pack")
    items = sorted(items, key=lambda item: item[1])
    present = sorted({label for _, label in items})
    missing = sorted(set(range(present[-1] + 1)) - set(present))
    if missing:
        raise DataError(f"{source}: class {missing[0]} has no images; labels must be 0..C-1 without gaps")
    return items


def encode_image(job: Tuple[str, int, int]) -> Tuple[Optional[bytes], str]:
    """Read one image, make it RGB size x size (0 keeps the size), encode JPEG; (None, reason) on failure."""
    path, size, quality = job
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
            return buf.getvalue(), ""
    except Exception as exc:  # unreadable files are reported and left out, never packed
        return None, f"{path}: {exc}"


def pack_images(
    items: List[Tuple[str, int]],
    out_dir: str,
    size: int = 112,
    quality: int = 95,
    workers: int = 0,
    progress: bool = True,
    sources: Sequence[str] = (),
) -> dict:
    """Encode `items` with `workers` processes and write `out_dir/train.rec`/`.idx`; returns counts.

    `out_dir` must lie apart from `sources` (the folder or `.lst` the items came from) and may not be or hold
    an image's folder (symlinks resolved); it may hold nothing but fr's earlier outputs (`fr.data.ownership`).
    Both are checked before anything is written.
    """
    if not items:
        raise DataError("nothing to pack: no images given")
    check_apart(out_dir, sources, input_dirs=sorted({os.path.dirname(os.path.abspath(p)) for p, _ in items}))
    workers = workers or os.cpu_count() or 1
    jobs = [(path, size, quality) for path, _ in items]
    failed: List[str] = []
    with (
        staged_output(out_dir, "fr-data pack", last=("train.rec",)) as stage,
        get_context("spawn").Pool(workers) as pool,
        InsightfaceRecordWriter(stage) as writer,
    ):
        results: Iterable = pool.imap(encode_image, jobs, chunksize=64)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), unit="img", desc="pack")
        current, batch = 0, []
        for (payload, error), (_, label) in zip(results, items):
            if label != current:
                _flush(writer, batch, current)
                current, batch = label, []
            if payload is None:
                failed.append(error)
                log.warning("skipping unreadable image %s", error)
            else:
                batch.append(payload)
        _flush(writer, batch, current)
    return {"out": out_dir, "images": len(items) - len(failed), "identities": current + 1, "failed": failed}


def _flush(writer: InsightfaceRecordWriter, payloads: List[bytes], label: int) -> None:
    if not payloads:
        raise DataError(f"class {label}: none of its images could be read, so it would have no records")
    got = writer.add_identity(payloads)
    assert got == label, "writer labels follow the sorted class order"


def random_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random RGB image (for tests and benchmarks that need realistic JPEG sizes)."""
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))
