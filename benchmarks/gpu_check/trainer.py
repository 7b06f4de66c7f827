"""GPU check, part: the full trainer's samples/s on the synthetic set against a backbone-only loop on one batch.

The trainer is `fr.train.run.train` (torch loader decoding JPEGs in worker processes, pinned transfers, Partial FC,
AMP as `train.amp=auto` picks: fp16 on CUDA, channels_last) on iresnet50; its samples/s are the logged rates after
the first log window. The backbone-only loop trains the same backbone, in the same precision and memory format, on
one batch already on the device. trainer / backbone-only well below 1 means the step waits for data (or the head).
The rendered set stays in the work directory for the DALI part.
"""

from __future__ import annotations

import os
import statistics

import torch
from _shared import device_for, environment, part_args, timed, write_result

from fr.config import load_config
from fr.train.run import amp_dtype_for, build_model, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def overrides(data: str, out: str, dry_run: bool) -> list:
    values = {
        "data.root": data,
        "eval.every": 0,
        "eval.at_start": "false",
        "output.dir": out,
        "output.overwrite": "true",
        "output.tensorboard": "false",
    }
    if dry_run:
        values.update({
            "data.synth.identities": 8, "data.synth.per_identity": 4, "data.synth.holdout_identities": 2,
            "data.synth.pairs": 20, "data.synth.workers": 1, "data.batch_size": 4, "data.num_workers": 0,
            "model.kwargs": '{"width": 16, "stem_stride": 2}', "model.embedding_size": 64, "train.device": "cpu",
            "train.max_steps": 2, "train.log_every": 1, "eval.bins": "[]",
        })  # fmt: skip
    else:
        values.update({
            "data.synth.identities": 100, "data.synth.per_identity": 40, "data.synth.holdout_identities": 20,
            "data.synth.pairs": 40, "data.batch_size": 256, "data.num_workers": 8, "model.backbone": "iresnet50",
            "model.kwargs": "{}", "model.embedding_size": 512, "train.device": "cuda", "train.max_steps": 45,
            "train.log_every": 5,
        })  # fmt: skip
    return [f"{k}={v}" for k, v in values.items()]


def backbone_only(cfg, device: torch.device, warmup: int, steps: int) -> float:
    """Samples/s of the configured backbone alone, as the trainer would run it, on one device-resident batch."""
    model = build_model(cfg).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = amp_dtype_for(cfg.train.amp, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images = torch.randn(cfg.data.batch_size, 3, 112, 112, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(images).float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return cfg.data.batch_size / timed(step, device, warmup=warmup, steps=steps)


def main() -> None:
    args = part_args(__doc__.splitlines()[0])
    device = device_for(args.dry_run)
    data, out = os.path.join(args.work, "synthetic"), os.path.join(args.work, "trainer_run")
    cfg = load_config(os.path.join(ROOT, "configs", "synthetic.py"), overrides(data, out, args.dry_run))
    results = train(cfg)
    rates = [rate for _, rate in results["history"]["samples_per_sec"]]
    trainer_rate = statistics.median(rates[1:] or rates)
    bare_rate = backbone_only(cfg, device, *((0, 1) if args.dry_run else (3, 20)))
    write_result(
        args.out_json,
        {
            "status": "ok",
            **environment(device),
            "backbone": cfg.model.backbone,
            "batch": cfg.data.batch_size,
            "loader": cfg.data.loader,
            "num_workers": cfg.data.num_workers,
            "amp": str(amp_dtype_for(cfg.train.amp, device)),
            "images": results["num_images"],
            "steps": results["steps"],
            "trainer_samples_per_s": round(trainer_rate, 1),
            "trainer_rates": [round(r, 1) for r in rates],
            "backbone_only_samples_per_s": round(bare_rate, 1),
            "trainer_over_backbone_only": round(trainer_rate / bare_rate, 3),
        },
    )


if __name__ == "__main__":
    main()
