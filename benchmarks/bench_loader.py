"""Loader throughput (images/s) of the DALI CPU pipeline and the torch DataLoader path, in one run, as JSON.

Builds (once, cached in --workdir) an insightface-layout record file of synthetic faces at 112x112, JPEG
quality 90, then times batches of flip + normalise: DALI with `--threads` threads, torch with as many workers.
With CUDA and DALI, also DALI's mixed (GPU) decode into float batches on GPU 0 (`dali_mixed_images_per_s`,
over `--gpu-epochs` epochs).
A pool of rendered faces is reused cyclically (decode cost depends on the bytes, not on their novelty).
With `--repeats N` the loaders take turns N times and each figure is the median (every run is listed too);
the load average and the share of CPU time stolen by the hypervisor show how quiet the machine was.

    python benchmarks/bench_loader.py [--images 20000] [--batch 128] [--threads 2] [--epochs 1] [--repeats 1]
                                      [--gpu-epochs 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from evaluation.preprocess import normalize
from fr.config import DataConfig
from fr.data.loader import LOADERS, dali_available
from fr.data.writer import InsightfaceRecordWriter
from fr.distributed import DistEnv
from fr.synth.identity import identity_for
from fr.synth.render import render_face

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


def images_per_second(loader, epochs: int, warmup: int = 3):
    """(images/s, CPU-us per image) over `epochs` passes, not counting the first `warmup` batches.

    CPU time is this process's (time.process_time: DALI's threads included, DataLoader worker processes not).
    """
    seen, start, cpu = 0, None, None
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for step, (images, _labels) in enumerate(loader):
            if epoch == 0 and step == warmup:
                _finish(images)
                start, cpu, seen = time.perf_counter(), time.process_time(), 0
            seen += images.shape[0]
    _finish(images)
    return seen / (time.perf_counter() - start), (time.process_time() - cpu) / seen * 1e6


def _finish(images: torch.Tensor) -> None:
    """Wait for the work queued on the batch's GPU (DALI's copy and the conversion run asynchronously)."""
    if images.is_cuda:
        torch.cuda.synchronize(images.device)


def pipeline_images_per_second(pipe, batch: int, iters: int = 40) -> float:
    """The DALI pipeline alone (read, decode, and flip when OpenCV is missing; uint8 out), without the conversion."""
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


def cpu_steal_jiffies():
    """(stolen, total) CPU jiffies from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat", "r", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return None
    return fields[7], sum(fields[:8])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--per-identity", type=int, default=20)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="DALI threads and DataLoader workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="take turns this many times; report medians")
    parser.add_argument("--gpu-epochs", type=int, default=5, help="epochs for the mixed-decode figure (GPU only)")
    parser.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "fr", "bench_loader"))
    args = parser.parse_args()
    root = os.path.join(args.workdir, f"{args.images}_q{args.quality}")
    build_records(root, args.images, args.per_identity, args.quality)
    rec_mb = os.path.getsize(os.path.join(root, "train.rec")) / 2**20
    cfg = DataConfig(
        root=root, batch_size=args.batch, num_workers=args.threads, cache_dir=os.path.join(args.workdir, "cache")
    )
    result = {
        "device": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "images": args.images,
        "rec_mib": round(rec_mb, 1),
        "batch": args.batch,
        "threads": args.threads,
    }
    timed = {"torch": ("torch", DistEnv(), args.epochs)}  # figure name: (loader, where it delivers, epochs)
    if dali_available():
        import nvidia.dali

        result["dali"] = nvidia.dali.__version__
        from fr.data.dali import _opencv

        cv2 = _opencv()  # with OpenCV the CPU pipeline's flips and conversion run on the host
        result["opencv"] = cv2.__version__ if cv2 is not None else None
        timed = {"dali": ("dali", DistEnv(), args.epochs), **timed}
        if torch.cuda.is_available():
            result["gpu"] = torch.cuda.get_device_name(0)
            timed["dali_mixed"] = ("dali", DistEnv(device=torch.device("cuda", 0)), args.gpu_epochs)
    runs = defaultdict(list)
    load_before, steal_before = os.getloadavg()[0], cpu_steal_jiffies()
    for _ in range(args.repeats):
        for name, (kind, env, epochs) in timed.items():
            loader = LOADERS[kind](cfg, env, seed=0)
            rate, cpu_us = images_per_second(loader, epochs)
            runs[f"{name}_images_per_s"].append(rate)
            if name == "dali":
                runs["dali_cpu_us_per_image"].append(cpu_us)
                runs["dali_pipeline_only_images_per_s"].append(pipeline_images_per_second(loader.pipe, args.batch))
            del loader
        # On a GPU run the uint8 -> [-1, 1] conversion runs on the device; on CPU it competes for the cores.
        runs["cpu_normalise_images_per_s"].append(normalise_images_per_second(args.batch))
    for key, values in runs.items():
        result[key] = round(statistics.median(values), 1)
        if args.repeats > 1:
            result[key + "_runs"] = [round(v) for v in values]
    result["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    steal_after = cpu_steal_jiffies()
    if steal_before and steal_after:
        stolen, total = (after - before for after, before in zip(steal_after, steal_before))
        result["cpu_steal_percent"] = round(100 * stolen / max(total, 1), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
