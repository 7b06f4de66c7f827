"""Loader throughput (images/s) of the DALI CPU pipeline and the torch DataLoader path, in one run, as JSON.

Builds (once, cached in --workdir) an insightface-layout record file of synthetic faces at 112x112, JPEG
quality 90, then times batches of flip + normalise: DALI with `--threads` threads, torch with as many workers.
A pool of rendered faces is reused cyclically (decode cost depends on the bytes, not on their novelty).

    python benchmarks/bench_loader.py [--images 20000] [--batch 128] [--threads 2] [--epochs 1]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np
import torch
from PIL import Image

from fr.config import DataConfig
from fr.data.loader import LOADERS, dali_available, normalize
from fr.data.synthetic import identity_for, render_face
from fr.data.writer import InsightfaceRecordWriter
from fr.distributed import DistEnv

POOL = 400  # distinct rendered faces


def build_records(root: str, images: int, per_identity: int, quality: int) -> str:
    if os.path.isfile(os.path.join(root, "train.rec")):
        return root
    rng = np.random.default_rng(0)
    pool = []
    for i in range(POOL):
        buf = io.BytesIO()
        Image.fromarray(render_face(identity_for(0, i % 50), rng)).save(buf, format="JPEG", quality=quality)
        pool.append(buf.getvalue())
    with InsightfaceRecordWriter(root) as writer:
        for start in range(0, images, per_identity):
            count = min(per_identity, images - start)
            writer.add_identity([pool[(start + j) % POOL] for j in range(count)])
    return root


def images_per_second(loader, epochs: int, warmup: int = 3) -> float:
    """Images/s over `epochs` passes, not counting the first `warmup` batches (pipeline/worker start)."""
    seen, start = 0, None
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for step, (images, labels) in enumerate(loader):
            if epoch == 0 and step == warmup:
                start, seen = time.perf_counter(), 0
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def pipeline_images_per_second(pipe, batch: int, iters: int = 40) -> float:
    """The DALI pipeline alone (read, decode, flip; uint8 out), without the torch conversion."""
    for _ in range(3):
        pipe.run()
    start = time.perf_counter()
    for _ in range(iters):
        pipe.run()
    return batch * iters / (time.perf_counter() - start)


def normalise_images_per_second(batch: int, iters: int = 20) -> float:
    images = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8)
    start = time.perf_counter()
    for _ in range(iters):
        normalize(images).permute(0, 3, 1, 2)
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--per-identity", type=int, default=20)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads and DataLoader workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "fr", "bench_loader"))
    args = parser.parse_args()
    root = os.path.join(args.workdir, f"{args.images}_q{args.quality}")
    build_records(root, args.images, args.per_identity, args.quality)
    rec_mb = os.path.getsize(os.path.join(root, "train.rec")) / 2**20
    env = DistEnv()
    cfg = DataConfig(root=root, batch_size=args.batch, num_workers=args.threads,
                     cache_dir=os.path.join(args.workdir, "cache"))
    result = {"device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "images": args.images, "rec_mib": round(rec_mb, 1),
              "batch": args.batch, "threads": args.threads}
    names = ["dali", "torch"] if dali_available() else ["torch"]
    for name in names:
        loader = LOADERS[name](cfg, env, seed=0)
        result[f"{name}_images_per_s"] = round(images_per_second(loader, args.epochs), 1)
        if name == "dali":
            result["dali_pipeline_only_images_per_s"] = round(pipeline_images_per_second(loader.pipe, args.batch), 1)
        del loader
    # On a GPU run the uint8 -> [-1, 1] conversion runs on the device; on CPU it competes for the cores.
    result["cpu_normalise_images_per_s"] = round(normalise_images_per_second(args.batch), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
