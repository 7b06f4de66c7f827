"""Trainer overhead: steps/s of fr's Trainer against a bare training loop on the same model, 1 and 2 ranks; JSON.

Both variants train one slim iResNet-18 (width 16, stride-2 stem, channels_last, as configs/synthetic.py) with
the real Partial FC head and ArcFace loss, SGD and a poly LR schedule, from in-memory batches. Variant A is
fr.train.Trainer as fr.train.run builds it (DDP strategy, Head, MetricLogger logging every `--log-every` steps,
stop-signal polling; no checkpoints, TensorBoard or evaluation). Variant B is a hand-written loop over the same
modules and optimizers: zero_grad, forward, loss, backward, clip, both optimizer and schedule steps, and a loss
read at the same log cadence. Under 2 ranks both go through the same DDP wrapper (gloo on 127.0.0.1).

The variants take turns `--repeats` times (the order flips every turn); each turn runs `--warmup` untimed steps,
then `--steps` timed ones. A turn's clock starts when the loop asks for batch `warmup` and stops when it asks for
batch `warmup + steps` (one more step follows, untimed), so a step's whole cost (logging, bookkeeping) counts.
`overhead = median(B steps/s) / median(A steps/s) - 1`. Rank 0's clock; every rank runs `--threads` threads.
The `_cpu` figures count steps per second of rank 0's process CPU time instead (all its threads; time spent
waiting for the CPU or for another rank not counted): less sensitive to other processes on a shared machine.

    python benchmarks/bench_trainer.py [--world-sizes 1,2] [--repeats 5] [--steps 30] [--warmup 3] [--batch 32]
                                       [--profile trainer.prof]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import platform
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fr.config import OptimConfig
from fr.distributed import DistEnv, cleanup
from fr.heads import PartialFC, build_loss
from fr.models import build_backbone
from fr.train.head import Head
from fr.train.logging import MetricLogger
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.preemption import StopSignals
from fr.train.strategies import STRATEGIES
from fr.train.trainer import Trainer, TrainOptions

log = logging.getLogger("fr.train")


class TimedBatches:
    """The in-memory loader both variants read: `len`, `set_epoch` and iteration, as the Trainer needs. Records
    the clocks when batch `start` and batch `stop` are asked for: the wall and process CPU time of the steps in
    between."""

    def __init__(self, batches: list, start: int, stop: int):
        self.batches, self.start, self.stop = batches, start, stop
        self.clock: Dict[int, Tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self):
        for index, batch in enumerate(self.batches):
            if index in (self.start, self.stop):
                self.clock[index] = (time.perf_counter(), time.process_time())
            yield batch

    def steps_per_second(self, clock: int = 0) -> float:
        """Steps per wall-clock second (`clock` 0), or per second of this process's CPU time (1)."""
        return (self.stop - self.start) / (self.clock[self.stop][clock] - self.clock[self.start][clock])


def bare_loop(strategy, head: Head, loader: TimedBatches, first_step: int, log_every: int, clip: float) -> None:
    """Variant B: what a minimal hand-written loop does with the same modules, optimizers and schedules."""
    model, backbone, module = strategy.model, strategy.module, head.module
    model.train()
    module.train()
    step = first_step
    for images, labels in loader:
        strategy.optimizer.zero_grad(set_to_none=True)
        head.optimizer.zero_grad(set_to_none=True)
        loss = module(model(images), labels)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), clip)
        strategy.optimizer.step()
        head.optimizer.step()
        strategy.scheduler.step()
        head.scheduler.step()
        step += 1
        if step % log_every == 0:
            log.info("step %d loss %.4f lr %.5f", step, loss.item(), strategy.scheduler.get_last_lr()[0])


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    torch.set_num_threads(args.threads)
    if world_size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=300),
        )
    # The trainer's log lines are formatted and written as in a run, to a sink instead of the console.
    handler = logging.StreamHandler(open(os.devnull, "w"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    env = DistEnv(rank=rank, world_size=world_size, local_rank=rank)
    torch.manual_seed(rank)
    backbone = build_backbone("iresnet18", num_features=args.dim, width=16, stem_stride=2)
    backbone = backbone.to(memory_format=torch.channels_last)
    head_module = PartialFC(build_loss("arcface"), args.dim, args.classes, sample_rate=args.sample_rate, env=env)
    optim = OptimConfig(clip_grad_norm=args.clip)
    per_turn = args.warmup + args.steps + 1
    total_steps = 2 * args.repeats * per_turn
    schedule = lambda optimizer: build_scheduler(optimizer, optim, total_steps, 0)
    strategy = STRATEGIES.build(
        "ddp", backbone=backbone, env=env, optimizer=lambda groups: build_optimizer(groups, optim), scheduler=schedule
    )
    head_optimizer = build_optimizer([{"params": head_module.parameters()}], optim)
    head = Head(head_module, head_optimizer, schedule(head_optimizer))

    gen = torch.Generator().manual_seed(1000 + rank)
    batches = [
        (
            torch.randn(args.batch, 3, 112, 112, generator=gen).contiguous(memory_format=torch.channels_last),
            torch.randint(0, args.classes, (args.batch,), generator=gen),
        )
        for _ in range(per_turn)
    ]
    loader = TimedBatches(batches, args.warmup, args.warmup + args.steps)
    metrics = MetricLogger(None, args.batch * world_size, total_steps, enabled=env.is_main)
    options = TrainOptions(total_steps=0, log_every=args.log_every, clip_grad_norm=args.clip, channels_last=True)
    trainer = Trainer(strategy, head, loader, None, options, metrics=metrics)
    profiler = cProfile.Profile() if args.profile and rank == 0 else None

    def run_trainer() -> None:
        trainer.options.total_steps = trainer.state.step + per_turn  # continues the step count across turns
        with StopSignals() as stop, profiler or contextlib.nullcontext():
            trainer.stop_requested = stop.requested
            trainer.fit()

    rates: Dict[str, List[float]] = {"trainer": [], "bare": [], "trainer_cpu": [], "bare_cpu": []}
    step = 0
    for turn in range(args.repeats):
        for variant in ("trainer", "bare") if turn % 2 == 0 else ("bare", "trainer"):
            if variant == "trainer":
                run_trainer()
            else:
                bare_loop(strategy, head, loader, step, args.log_every, args.clip)
            step += per_turn
            rates[variant].append(loader.steps_per_second())
            rates[f"{variant}_cpu"].append(loader.steps_per_second(clock=1))
    if profiler is not None:
        profiler.dump_stats(args.profile)
    if rank == 0:
        with open(os.path.join(out_dir, "rates.json"), "w") as fh:
            json.dump(rates, fh)
    log.removeHandler(handler)
    handler.stream.close()
    cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(world_size: int, args: argparse.Namespace) -> Dict[str, object]:
    """Spawn `world_size` fresh processes (one also for a single rank: same isolation) and summarise rank 0's turns."""
    with tempfile.TemporaryDirectory(prefix="fr_bench_trainer_") as out_dir:
        mp.spawn(worker, args=(world_size, free_port(), args, out_dir), nprocs=world_size, join=True)
        with open(os.path.join(out_dir, "rates.json")) as fh:
            rates = json.load(fh)
    result: Dict[str, object] = {"world_size": world_size}
    for suffix in ("", "_cpu"):  # wall clock, then per CPU-second of rank 0's process
        trainer, bare = rates["trainer" + suffix], rates["bare" + suffix]
        ratios = [b / a - 1 for a, b in zip(trainer, bare)]
        result.update(
            {
                f"trainer_steps_per_s{suffix}": round(statistics.median(trainer), 3),
                f"bare_steps_per_s{suffix}": round(statistics.median(bare), 3),
                f"overhead{suffix}": round(statistics.median(bare) / statistics.median(trainer) - 1, 4),
                f"overhead_per_turn{suffix}": [round(r, 4) for r in ratios],
                f"overhead_per_turn_median{suffix}": round(statistics.median(ratios), 4),
                f"trainer_turns{suffix}": [round(r, 3) for r in trainer],
                f"bare_turns{suffix}": [round(r, 3) for r in bare],
            }
        )
    return result


def cpu_steal_jiffies() -> Optional[tuple]:
    """(stolen, total) CPU jiffies from /proc/stat (Linux), or None."""
    try:
        with open("/proc/stat", "r", encoding="ascii") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except OSError:
        return None
    return fields[7], sum(fields[:8])


def loadavg() -> Optional[List[float]]:
    try:
        with open("/proc/loadavg", "r", encoding="ascii") as fh:
            return [float(v) for v in fh.read().split()[:3]]
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-sizes", default="1,2", help="comma-separated numbers of gloo ranks")
    parser.add_argument("--repeats", type=int, default=5, help="turns of each variant; report medians")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each turn")
    parser.add_argument("--batch", type=int, default=32, help="per-rank batch")
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=OptimConfig.clip_grad_norm, help="0: no clipping")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--profile", help="write a cProfile of rank 0's Trainer turns (the last world size) here")
    args = parser.parse_args()
    before_load, before_steal = loadavg(), cpu_steal_jiffies()
    start = time.perf_counter()
    results = [measure(int(n), args) for n in args.world_sizes.split(",")]
    after_steal = cpu_steal_jiffies()
    steal = None
    if before_steal and after_steal and after_steal[1] > before_steal[1]:
        steal = round((after_steal[0] - before_steal[0]) / (after_steal[1] - before_steal[1]), 4)
    print(
        json.dumps(
            {
                "benchmark": "trainer_overhead",
                "device": "cpu",
                "torch": torch.__version__,
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "backbone": "iresnet18 width=16 stem_stride=2 channels_last",
                "loss": "arcface",
                "batch_per_rank": args.batch,
                "classes": args.classes,
                "dim": args.dim,
                "sample_rate": args.sample_rate,
                "clip_grad_norm": args.clip,
                "log_every": args.log_every,
                "threads_per_rank": args.threads,
                "steps": args.steps,
                "warmup": args.warmup,
                "repeats": args.repeats,
                "seconds": round(time.perf_counter() - start, 1),
                "loadavg_before": before_load,
                "loadavg_after": loadavg(),
                "cpu_steal": steal,
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
