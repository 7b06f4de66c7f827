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
    """arcface_torch's PolynomialLRWarmup (train_v2.py, power 1 by default), step for step.

    Step 0 runs at the base lr, warmup or not (their scheduler leaves its first step untouched); steps
    1..warmup_steps ramp linearly as step / warmup_steps; then the lr decays as
    ((total_steps - step) / (total_steps - warmup_steps)) ** power to 0 at total_steps and stays there.
    """
    if step == 0 or total_steps <= 0:
        return 1.0
    step = min(step, total_steps)  # past the end their scheduler keeps the last lr
    if step <= warmup_steps:
        return step / warmup_steps
    return ((total_steps - step) / (total_steps - warmup_steps)) ** power


@SCHEDULES.register("poly_legacy")
def poly_legacy_factor(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """fr's schedule before "poly" matched arcface_torch: linear warmup from 0 at step 0 to 1 over `warmup_steps`,
    then (1 - progress) ** power down to 0 at `total_steps`. Kept so that results measured with it reproduce."""
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
    """A scheduler multiplying each group's base lr by the named schedule's factor, stepped once per optimizer step.

    `total_steps` and `warmup_steps` count optimizer steps. arcface_torch steps its scheduler once per loader
    batch, gradient accumulation or not, and counts its lengths in loader batches; so with
    `optim.gradient_accumulation` = k, optimizer step j runs at the factor of loader batch j*k + k - 1 over
    lengths k times as long: the lr arcface_torch applies at that update (exact when an epoch's batches are a
    multiple of k). With k = 1 this is the schedule itself.
    """
    schedule = SCHEDULES.get(cfg.schedule)
    k = max(1, cfg.gradient_accumulation)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule(step * k + k - 1, total_steps * k, warmup_steps * k, cfg.power)
    )
