"""Optimizers and learning-rate schedules, looked up by name from the config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch

from fr.registry import Registry

if TYPE_CHECKING:  # fr.config validates names against these registries, so it must not be imported back
    from fr.config import OptimConfig

# name -> (param_groups, OptimConfig) -> optimizer
OPTIMIZERS = Registry("optimizer")
# name -> (step, total_steps, warmup_steps, power) -> factor on the base learning rate
SCHEDULES = Registry("LR schedule")


@OPTIMIZERS.register("sgd")
def sgd(param_groups: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(param_groups: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def build_optimizer(param_groups: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `param_groups` (the backbone's, built by its strategy, or the head's)."""
    return OPTIMIZERS.get(cfg.name)(param_groups, cfg)


@SCHEDULES.register("poly")
def poly_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then (1 - progress) ** power down to 0 at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return (1.0 - progress) ** power


@SCHEDULES.register("constant")
def constant_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Linear warmup, then the base learning rate."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler multiplying each group's base lr by the named schedule's factor."""
    schedule = SCHEDULES.get(cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step, total_steps, warmup_steps, cfg.power)
    )
