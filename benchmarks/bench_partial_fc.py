"""Partial FC head step time and peak memory (CPU, or CUDA with --device cuda); prints JSON."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from fr.distributed import DistEnv
from fr.heads import ArcFace, PartialFC, SparseRowSGD

CONFIGS = [(0.1, "sparse"), (0.1, "dense"), (1.0, "dense")]


def peak_rss_gb() -> float:
    """This process's peak resident set size (VmHWM), in GB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def run_one(args: argparse.Namespace) -> dict:
    """Time forward + backward + SGD(momentum 0.9, wd 5e-4) of the head alone, in this process."""
    device = torch.device(args.device)
    env = DistEnv(device=device)
    head = PartialFC(ArcFace(), args.dim, args.classes, sample_rate=args.sample_rate, env=env, update=args.update)
    params = [{"params": head.parameters()}]
    optimizer = (
        SparseRowSGD(params, [head], lr=0.1, momentum=0.9, weight_decay=5e-4)
        if args.update == "sparse"
        else torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    )
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.warmup + args.steps):
        emb = torch.randn(args.batch, args.dim, generator=gen).to(device).requires_grad_(True)
        labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        head(emb, labels).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {
        "sample_rate": args.sample_rate,
        "update": args.update,
        "median_step_s": round(statistics.median(times), 4),
        "step_s": [round(t, 4) for t in times],
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    if device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample-rate", type=float, help="internal: run one configuration in this process")
    parser.add_argument("--update", default="dense")
    args = parser.parse_args()
    if args.sample_rate is not None:
        print(json.dumps(run_one(args)))
        return
    # One child per configuration, so that each peak RSS is that configuration's own.
    common = [
        f"--classes={args.classes}",
        f"--dim={args.dim}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--device={args.device}",
    ]
    results = []
    for rate, update in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, *common, f"--sample-rate={rate}", f"--update={update}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(
        json.dumps(
            {
                "classes": args.classes,
                "dim": args.dim,
                "global_batch": args.batch,
                "loss": "arcface",
                "device": args.device,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
