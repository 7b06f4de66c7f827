"""Optimizers and learning-rate schedules, looked up by name from the config."""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch

from fr.config import OptimConfig

OPTIMIZERS: Dict[str, Callable[[Iterable, OptimConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), weight_decay=c.weight_decay),
}


def build_optimizer(param_groups: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    """One optimizer over the backbone's and the head's parameter groups (as arcface_torch does)."""
    return OPTIMIZERS[cfg.name](param_groups, cfg)


def poly_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then (1 - progress) ** power down to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return (1.0 - progress) ** power


def constant_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Linear warmup, then the base learning rate."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return 1.0


SCHEDULES: Dict[str, Callable[[int, int, int, float], float]] = {
    "poly": poly_factor,
    "constant": constant_factor,
}


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler multiplying each group's base lr by the named schedule's factor."""
    schedule = SCHEDULES[cfg.schedule]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step, total_steps, warmup_steps, cfg.power))
