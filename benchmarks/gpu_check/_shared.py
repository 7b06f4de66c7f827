"""What the GPU-check parts share: the command line every part takes, timing on the device, writing the result."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, Dict

import torch

# Dense bf16 peaks of one H200 (SXM) for MFU: measured on the lent machine (8192^3 bf16 products, device KINDS.md)
# and the vendor's datasheet.
PEAK_TFLOPS = {"measured": 790.0, "datasheet": 989.0}


def part_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-json", required=True, help="where this part writes its result")
    parser.add_argument("--work", required=True, help="a scratch directory (data sets, runs)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the code, measures nothing")
    args = parser.parse_args()
    if args.dry_run:  # tiny ops gain nothing from more threads, and on a busy CPU OpenMP's spinning makes them slow
        torch.set_num_threads(1)
    return args


def device_for(dry_run: bool) -> torch.device:
    """CUDA when present (never in a dry run), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() and not dry_run else torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per step: `warmup` untimed calls, then the mean over `steps` calls between two synchronisations."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def environment(device: torch.device) -> Dict[str, object]:
    info: Dict[str, object] = {"torch": torch.__version__, "device": str(device), "cpus": os.cpu_count()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    return info


def write_result(path: str, result: Dict[str, object]) -> None:
    """The part's JSON (status: ok | skipped | failed, with `reason` unless ok), also printed for the log."""
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1), flush=True)
