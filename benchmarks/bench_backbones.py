"""Training throughput (forward + backward + SGD step, images/s) of backbones on this machine, as JSON.

CPU suites (medians over `--iters` timed steps after two warm-up steps, every setting against a baseline measured
in the same run, because these machines are noisy):
  backbones  iresnet50 (baseline), mobilefacenet, vit_t, edgeface_xs_gamma_06 at 112x112 (default batch 32)
  slim       insightface's iresnet18 (baseline) against the slim CPU settings (width/stem_stride, channels_last)

GPU part (when CUDA is present, skipped otherwise): iresnet50, iresnet100 and vit_t at batch 256 in bf16 autocast
with channels_last, eager and torch.compile'd, with model FLOPs utilisation: MFU = 3 x forward FLOPs per image
(FlopCounterMode; backward counted as twice the forward) x images/s / the device's peak dense bf16 FLOPS.

    python benchmarks/bench_backbones.py [--suite backbones|slim] [--batch 32] [--iters 5] [--threads 0]
        [--gpu-batch 256] [--gpu-iters 20] [--peak-tflops N] [--no-gpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from typing import Dict, List, Optional, Tuple

import torch

from fr.models import build_backbone
from fr.models.complexity import count_macs

Setting = Tuple[str, dict, bool]  # (backbone, kwargs, channels_last)

SUITES: Dict[str, List[Setting]] = {
    "backbones": [
        ("iresnet50", {}, False),  # baseline
        ("mobilefacenet", {}, False),
        ("vit_t", {}, False),
        ("edgeface_xs_gamma_06", {}, False),
    ],
    "slim": [
        ("iresnet18", {}, False),  # baseline
        ("iresnet18", {"width": 16, "stem_stride": 2}, False),
        ("iresnet18", {"width": 16, "stem_stride": 2}, True),
        ("mobilefacenet", {"scale": 1}, True),
        ("mobilefacenet", {}, True),
    ],
}
EMBEDDING = {"backbones": 512, "slim": 128}  # slim: as first recorded in docs/benchmarks.md
GPU_SETTINGS = ["iresnet50", "iresnet100", "vit_t"]
# Dense bf16 tensor-core peaks (no sparsity), TFLOPS, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def step_times(model, images, iters: int, warmup: int, sync=lambda: None, autocast=None) -> List[float]:
    """Seconds of each timed training step (forward, backward, SGD step) after `warmup` untimed ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for step in range(iters + warmup):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast or contextlib.nullcontext():
            loss = model(images).float().square().mean()
        loss.backward()
        optimizer.step()
        sync()
        if step >= warmup:  # the first steps pay for oneDNN primitive creation / compilation / autotuning
            times.append(time.perf_counter() - start)
    return times


def cpu_rate(name: str, kwargs: dict, channels_last: bool, batch: int, iters: int, embedding: int) -> float:
    torch.manual_seed(0)
    model = build_backbone(name, num_features=embedding, **kwargs).train()
    images = torch.randn(batch, 3, 112, 112)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return batch / statistics.median(step_times(model, images, iters, warmup=2))


def run_cpu(suite: str, batch: int, iters: int) -> List[dict]:
    rows = []
    for name, kwargs, channels_last in SUITES[suite]:
        rate = cpu_rate(name, kwargs, channels_last, batch, iters, EMBEDDING[suite])
        rows.append(
            {"backbone": name, "kwargs": kwargs, "channels_last": channels_last, "images_per_s": round(rate, 2)}
        )
    baseline = rows[0]
    for row in rows:
        row[f"ratio_vs_{baseline['backbone']}"] = round(row["images_per_s"] / baseline["images_per_s"], 3)
    return rows


def peak_tflops(explicit: Optional[float]) -> Optional[float]:
    if explicit:
        return explicit
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def run_gpu(batch: int, iters: int, peak: Optional[float]) -> List[dict]:
    device = torch.device("cuda")
    rows = []
    for name in GPU_SETTINGS:
        with torch.device("meta"):
            flops_per_image = 2 * count_macs(build_backbone(name), 112)
        for compiled in (False, True):
            torch.manual_seed(0)
            model = build_backbone(name).to(device).train().to(memory_format=torch.channels_last)
            runner = torch.compile(model) if compiled else model
            images = torch.randn(batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
            times = step_times(
                runner,
                images,
                iters,
                warmup=3,
                sync=torch.cuda.synchronize,
                autocast=torch.autocast("cuda", dtype=torch.bfloat16),
            )
            rate = batch / statistics.median(times)
            achieved = 3 * flops_per_image * rate / 1e12
            rows.append(
                {
                    "backbone": name,
                    "compiled": compiled,
                    "images_per_s": round(rate, 1),
                    "forward_gflops_per_image": round(flops_per_image / 1e9, 3),
                    "achieved_tflops": round(achieved, 1),
                    "mfu": round(achieved / peak, 4) if peak else None,
                }
            )
            del model, runner
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="backbones")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--gpu-iters", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak (default: known)")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU part even when CUDA is present")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU suite")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {
        "benchmark": "backbone_training_throughput",
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if not args.no_cpu:
        report["cpu"] = {
            "suite": args.suite,
            "batch": args.batch,
            "iters": args.iters,
            "results": run_cpu(args.suite, args.batch, args.iters),
        }
    if torch.cuda.is_available() and not args.no_gpu:
        peak = peak_tflops(args.peak_tflops or None)
        report["gpu"] = {
            "device": torch.cuda.get_device_name(),
            "precision": "bf16 autocast, channels_last",
            "batch": args.gpu_batch,
            "iters": args.gpu_iters,
            "peak_bf16_tflops": peak,
            "results": run_gpu(args.gpu_batch, args.gpu_iters, peak),
        }
    else:
        report["gpu"] = "skipped: no CUDA device" if not torch.cuda.is_available() else "skipped: --no-gpu"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
