"""GPU check, part: the Partial FC head at 2M classes, global batch 1024, sample rate 0.1 and 1.0, on one GPU.

Each configuration runs benchmarks/bench_partial_fc.py's `run_one` (forward + backward + SGD with momentum on the
head alone) in this process, the peak CUDA memory reset in between. The floor is what any head of this size must
hold: the [C, D] fp32 weights and their momentum (dense mode also keeps a [C, D] gradient). `per_rank_of_8` is one
rank's share of the same problem on 8 GPUs (C/8 local classes, the gathered batch of 8 x 128): the setting whose
per-GPU memory arcface_torch documents (11,987 MB for "Fp16 + Partial FC 0.1", r100, 2M identities, batch 128 per
GPU, 8 GPUs: its README's GPU-memory table, March 2021), which also holds that GPU's backbone.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os

import torch
from _shared import device_for, environment, part_args, write_result

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench_partial_fc.py")
ARCFACE_TORCH_DOCUMENTED_MB = 11987


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_partial_fc", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    args = part_args(__doc__.splitlines()[0])
    device = device_for(args.dry_run)
    classes, dim, batch, steps, warmup = (2000, 64, 16, 1, 0) if args.dry_run else (2_000_000, 512, 1024, 5, 2)
    configs = [("rate_0.1_dense", classes, 0.1, "dense"), ("rate_1.0_dense", classes, 1.0, "dense")]
    configs += [("rate_0.1_sparse", classes, 0.1, "sparse"), ("per_rank_of_8", classes // 8, 0.1, "dense")]
    bench = load_bench()
    rows = {}
    for label, num_classes, rate, update in configs:
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        ns = argparse.Namespace(
            device=str(device), classes=num_classes, dim=dim, batch=batch, sample_rate=rate, update=update,
            steps=steps, warmup=warmup,
        )  # fmt: skip
        try:
            row = bench.run_one(ns)
        except Exception as exc:  # an out-of-memory in one configuration must not hide the others
            rows[label] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        floor_gb = 2 * num_classes * dim * 4 / 1e9
        row.update(status="ok", classes=num_classes, weights_momentum_floor_gb=round(floor_gb, 6))
        if "peak_cuda_gb" in row:
            row["peak_over_floor"] = round(row["peak_cuda_gb"] / floor_gb, 3)
        rows[label] = row
    result = {
        "status": "ok",
        **environment(device),
        "classes": classes,
        "dim": dim,
        "global_batch": batch,
        "loss": "arcface",
        "configs": rows,
        "arcface_torch_documented_mb": ARCFACE_TORCH_DOCUMENTED_MB,
        "target": "per_rank_of_8 peak <= half of arcface_torch's documented 11,987 MB (issue 18)",
    }
    per_rank = rows.get("per_rank_of_8", {})
    if "peak_cuda_gb" in per_rank:
        result["per_rank_of_8_vs_documented"] = round(per_rank["peak_cuda_gb"] * 1e3 / ARCFACE_TORCH_DOCUMENTED_MB, 3)
    failed = [k for k, v in rows.items() if v["status"] == "failed"]
    if failed:
        result.update(status="failed", reason="; ".join(f"{k}: {rows[k]['reason']}" for k in failed))
    write_result(args.out_json, result)


if __name__ == "__main__":
    main()
