"""GPU check, part: iresnet50 112x112 training samples/s in bf16 + channels_last, eager and torch.compile, with MFU.

The FLOPs of one training step (forward + backward, convolutions and matmuls) are counted once with
torch.utils.flop_counter.FlopCounterMode on the eager model; MFU = counted FLOPs x steps/s over a dense bf16 peak:
790 TFLOP/s measured on the lent H200 (`mfu_measured_peak`) and 989 from the datasheet (`mfu_datasheet_peak`).
The step is backbone-only (loss: mean squared embedding) with SGD; no data loading.
"""

from __future__ import annotations

import time

import torch
from _shared import PEAK_TFLOPS, device_for, environment, part_args, sync, timed, write_result
from torch.utils.flop_counter import FlopCounterMode

from fr.models import build_backbone


def train_step(model, optimizer, images, amp_dtype):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            embeddings = model(images)
        embeddings.float().square().mean().backward()
        optimizer.step()

    return step


def measure(model, images, amp_dtype, warmup: int, steps: int) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = train_step(model, optimizer, images, amp_dtype)
    start = time.perf_counter()
    step()  # the first call pays for compilation (torch.compile) or cuDNN's algorithm choice
    sync(images.device)
    first = time.perf_counter() - start
    seconds = timed(step, images.device, warmup, steps)
    return {"first_step_s": round(first, 2), "step_s": round(seconds, 5), "samples_per_s": images.shape[0] / seconds}


def main() -> None:
    args = part_args(__doc__.splitlines()[0])
    device = device_for(args.dry_run)
    if args.dry_run:  # a slim network, fp32 (autocast convolutions are slow on CPUs), no compile
        name, kwargs, batch, amp_dtype, warmup, steps = "iresnet18", {"width": 16, "stem_stride": 2}, 2, None, 0, 1
    else:
        name, kwargs, batch, amp_dtype, warmup, steps = "iresnet50", {}, 256, torch.bfloat16, 5, 20
    torch.manual_seed(0)
    model = build_backbone(name, num_features=512, **kwargs).to(device).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(images)
        out.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    result = {
        "status": "ok",
        **environment(device),
        "backbone": name,
        "kwargs": kwargs,
        "batch": batch,
        "image_size": 112,
        "dtype": str(amp_dtype or torch.float32).replace("torch.", ""),
        "channels_last": True,
        "flops_per_step": flops,
        "flops_per_sample": flops / batch,
        "peak_tflops": PEAK_TFLOPS,
        "target": "mfu_measured_peak >= 0.45 (issue 18)",
        "variants": {},
    }
    variants = {"eager": lambda: model}
    if device.type == "cuda":
        variants["compile"] = lambda: torch.compile(model)
    else:
        result["variants"]["compile"] = {"status": "skipped", "reason": "dry run: torch.compile only on the GPU"}
    for label, build in variants.items():
        try:
            row = measure(build(), images, amp_dtype, warmup, steps)
        except Exception as exc:  # one variant's failure (e.g. the compiler) must not hide the other's figure
            result["variants"][label] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        tflops = flops * row["samples_per_s"] / batch / 1e12
        row.update(status="ok", achieved_tflops=round(tflops, 1), samples_per_s=round(row["samples_per_s"], 1))
        if device.type == "cuda":
            row.update({f"mfu_{k}_peak": round(tflops / peak, 4) for k, peak in PEAK_TFLOPS.items()})
        result["variants"][label] = row
    if device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if any(v["status"] == "failed" for v in result["variants"].values()):
        result["status"] = "failed"
        result["reason"] = "; ".join(
            f"{k}: {v['reason']}" for k, v in result["variants"].items() if v["status"] == "failed"
        )
    write_result(args.out_json, result)


if __name__ == "__main__":
    main()
