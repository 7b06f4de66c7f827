"""DDP vs DeepSpeed ZeRO-1/ZeRO-2 on 2 ranks: per-rank optimizer-state and gradient memory of an iResNet-50, and
steps/s of each with a tiny backbone; JSON on stdout.

Memory is measured, not estimated: after one step (so SGD's momentum exists), rank 0 sums the bytes of the tensors
in the torch optimizer's state (under ZeRO, the optimizer DeepSpeed wraps, whose parameters are this rank's flat
fp32 partitions), and, after the next backward (before its update), the bytes of the gradients alive: the
backbone parameters' `.grad` plus, under ZeRO, the reduced gradient partitions DeepSpeed keeps
(`averaged_gradients`). The backbone trains in fp32 with SGD + momentum; the Partial FC head (outside every
strategy) is not counted. Speed: `--steps` timed steps after `--warmup`, rank 0's wall clock, gloo on 127.0.0.1.

    python benchmarks/bench_strategies.py [--batch 2] [--tiny-batch 32] [--steps 20] [--warmup 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from datetime import timedelta
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fr.distributed import cleanup, env_from_group
from fr.heads import PartialFC, build_loss
from fr.models import build_backbone
from fr.train.head import Head
from fr.train.strategy import DDPStrategy
from fr.train.trainer import Trainer, TrainOptions

WORLD, CLASSES, EMBEDDING = 2, 64, 512
SETUPS = {"ddp": None, "zero1": 1, "zero2": 2}


def tensor_bytes(values: Any) -> int:
    if isinstance(values, torch.Tensor):
        return values.numel() * values.element_size()
    if isinstance(values, dict):
        return sum(tensor_bytes(v) for v in values.values())
    if isinstance(values, (list, tuple)):
        return sum(tensor_bytes(v) for v in values)
    return 0


def build(env, name: str, backbone: nn.Module, batch: int, embedding: int):
    from fr.train.deepspeed_strategy import DeepSpeedStrategy

    optimizer = lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if SETUPS[name] is None:
        strategy = DDPStrategy(backbone, env, optimizer, schedule)
    else:
        config = {
            "train_micro_batch_size_per_gpu": batch,
            "gradient_accumulation_steps": 1,
            "train_batch_size": batch * env.world_size,
            "gradient_clipping": 0.0,
            "zero_optimization": {"stage": SETUPS[name]},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }
        strategy = DeepSpeedStrategy(backbone, env, optimizer, schedule, config=config)
    head = PartialFC(build_loss("arcface"), embedding, CLASSES, env=env)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9)
    head_part = Head(head, head_optimizer, schedule(head_optimizer))
    return Trainer(strategy, head_part, None, None, TrainOptions(total_steps=0, clip_grad_norm=0.0))


def batch_of(size: int, image: int, rank: int):
    generator = torch.Generator().manual_seed(rank)
    return torch.randn(size, 3, image, image, generator=generator), torch.randint(0, CLASSES, (size,))


def optimizer_state(strategy) -> Dict[str, torch.Tensor]:
    engine = getattr(strategy, "engine", None)
    inner = engine.optimizer.optimizer if engine is not None else strategy.optimizer
    return inner.state


def gradients(strategy) -> int:
    live = sum(tensor_bytes(p.grad) for p in strategy.module.parameters() if p.grad is not None)
    engine = getattr(strategy, "engine", None)
    averaged = getattr(engine.optimizer, "averaged_gradients", None) if engine is not None else None
    return live + (tensor_bytes(averaged) if averaged else 0)


def memory(env, name: str, batch: int) -> Dict[str, float]:
    backbone = build_backbone("iresnet50", num_features=EMBEDDING)
    params = sum(p.numel() for p in backbone.parameters())
    trainer = build(env, name, backbone, batch, EMBEDDING)
    images, labels = batch_of(batch, 112, env.rank)
    trainer.train_step(images, labels)  # creates the momentum buffers
    state_bytes = tensor_bytes(dict(optimizer_state(trainer.strategy)))
    strategy = trainer.strategy
    strategy.zero_grad()
    trainer.head.zero_grad()
    loss = trainer._forward(images, labels)
    strategy.backward(loss)
    grad_bytes = gradients(strategy)
    strategy.skip()
    trainer.head.skip()
    return {
        "backbone_params": params,
        "optimizer_state_mib": round(state_bytes / 2**20, 2),
        "gradient_mib": round(grad_bytes / 2**20, 2),
    }


def speed(env, name: str, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.PReLU(16),
        nn.Flatten(),
        nn.Linear(16 * 56 * 56, 128),
    )
    trainer = build(env, name, backbone, batch, 128)
    images, labels = batch_of(batch, 112, env.rank)
    for _ in range(warmup):
        trainer.train_step(images, labels)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(images, labels)
    dist.barrier()
    return round(steps / (time.perf_counter() - start), 2)


def worker(rank: int, port: int, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(minutes=20)
    )
    env = env_from_group()
    results: Dict[str, Dict[str, float]] = {}
    for name in SETUPS:
        results[name] = memory(env, name, args.batch)
        results[name]["tiny_steps_per_sec"] = speed(env, name, args.tiny_batch, args.steps, args.warmup)
    cleanup()
    if rank == 0:
        torch.save(results, out)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="per-rank batch of the iResNet-50 memory step")
    parser.add_argument("--tiny-batch", type=int, default=32, help="per-rank batch of the speed runs")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.spawn(worker, args=(port, out, args), nprocs=WORLD, join=True)
        results = torch.load(out)
    print(
        json.dumps(
            {
                "world_size": WORLD,
                "backbone_memory": "iresnet50, fp32, SGD momentum; per rank (rank 0)",
                "results": results,
                "settings": vars(args),
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "torch": torch.__version__,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
