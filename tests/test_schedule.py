"""The learning-rate schedule against formulas written out here: arcface_torch's PolynomialLRWarmup as train_v2.py
steps it (the default), and fr's earlier schedule (poly_legacy, pinned by configs/synthetic.py)."""

import os

import pytest
import torch

from fr.config import OptimConfig, load_file
from fr.train.optim import build_optimizer, build_scheduler
from tests.helpers import ROOT

BASE_LR = 0.4


def lrs_of(cfg, total, warmup, steps):
    """The lr each optimizer step runs at, for `steps` steps (the backbone's and the head's schedules are alike)."""
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg)
    sched = build_scheduler(opt, cfg, total_steps=total, warmup_steps=warmup)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def arcface_torch_lr(s, total, warmup, power):
    """Their scheduler's lr at scheduler step s, in closed form: step 0 untouched, warmup s/W, then decay."""
    if s == 0:
        return BASE_LR
    s = min(s, total)
    if s <= warmup:
        return BASE_LR * s / warmup
    return BASE_LR * (1.0 - (s - warmup) / (total - warmup)) ** power


def arcface_torch_chained(total, warmup, power, steps):
    """Their get_lr as it runs: each step multiplies the previous lr by a ratio (past the end it stays)."""
    lrs, lr = [], BASE_LR
    for s in range(steps):
        if 0 < s <= total:
            if s <= warmup:
                lr = BASE_LR * s / warmup
            else:
                lr *= ((1.0 - (s - warmup) / (total - warmup)) / (1.0 - (s - 1 - warmup) / (total - warmup))) ** power
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("total, warmup, power", [(20, 4, 1.0), (30, 0, 1.0), (17, 5, 2.0), (9, 9, 1.0)])
def test_default_schedule_is_arcface_torchs_at_every_step(total, warmup, power):
    cfg = OptimConfig(lr=BASE_LR, power=power)
    got = lrs_of(cfg, total, warmup, total + 3)  # a few steps past the end too
    assert got == pytest.approx([arcface_torch_lr(s, total, warmup, power) for s in range(total + 3)], abs=1e-12)
    assert got == pytest.approx(arcface_torch_chained(total, warmup, power, total + 3), abs=1e-12)


def test_defaults_are_arcface_torchs_linear_decay():
    cfg = OptimConfig()
    assert (cfg.schedule, cfg.power) == ("poly", 1.0)
    # 10 steps, 2 of warmup: full lr at step 0, then 1/2, 1, and linear to 0
    expected = [1.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8, 0.0, 0.0]
    assert lrs_of(OptimConfig(lr=BASE_LR), 10, 2, 12) == pytest.approx([BASE_LR * f for f in expected], abs=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_gradient_accumulation_runs_at_their_lr_of_each_update(k):
    # arcface_torch steps its scheduler every loader batch; update j (0-based) happens at loader batch j*k + k - 1
    total, warmup = 12, 3  # optimizer steps; theirs are k times as many loader batches
    got = lrs_of(OptimConfig(lr=BASE_LR, gradient_accumulation=k), total, warmup, total)
    micro = [arcface_torch_lr(s, total * k, warmup * k, 1.0) for s in range(total * k)]
    assert got == pytest.approx([micro[j * k + k - 1] for j in range(total)], abs=1e-12)


def test_legacy_schedule_is_frs_earlier_one():
    cfg = OptimConfig(lr=BASE_LR, schedule="poly_legacy", power=2.0)
    expected = [BASE_LR * s / 4 for s in range(4)] + [BASE_LR * (1 - (s - 4) / 16) ** 2 for s in range(4, 20)]
    assert lrs_of(cfg, 20, 4, 20) == pytest.approx(expected, abs=1e-12)


def test_synthetic_recipe_keeps_its_measured_schedule():
    optim = load_file(os.path.join(ROOT, "configs", "synthetic.py")).optim
    assert (optim.schedule, optim.power, optim.warmup_epochs) == ("poly_legacy", 2.0, 0.5)
