"""Training throughput (forward + backward + SGD step, images/s) of backbone settings on this machine, as JSON.

The baseline is insightface's iresnet18; every other setting is also reported as a speed-up ratio against it,
measured in the same run (these machines are noisy). Medians over `--iters` timed steps after a warm-up.

    python benchmarks/bench_backbones.py [--batch 64] [--iters 5] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fr.models import build_backbone

SETTINGS = [
    ("iresnet18", {}, False),  # baseline
    ("iresnet18", {"width": 16, "stem_stride": 2}, False),
    ("iresnet18", {"width": 16, "stem_stride": 2}, True),
    ("mobilefacenet", {"scale": 1}, True),
    ("mobilefacenet", {}, True),
]


def images_per_second(name: str, kwargs: dict, channels_last: bool, batch: int, iters: int) -> float:
    torch.manual_seed(0)
    model = build_backbone(name, num_features=128, **kwargs)
    images = torch.randn(batch, 3, 112, 112)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for step in range(iters + 2):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(images).square().mean().backward()
        optimizer.step()
        if step >= 2:  # the first steps pay for oneDNN primitive creation
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name, kwargs, channels_last in SETTINGS:
        rate = images_per_second(name, kwargs, channels_last, args.batch, args.iters)
        rows.append(
            {"backbone": name, "kwargs": kwargs, "channels_last": channels_last, "images_per_s": round(rate, 1)}
        )
    baseline = rows[0]["images_per_s"]
    for row in rows:
        row["speedup_vs_iresnet18"] = round(row["images_per_s"] / baseline, 2)
    print(
        json.dumps(
            {
                "benchmark": "backbone_training_throughput",
                "device": "cpu",
                "processor": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "iters": args.iters,
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
