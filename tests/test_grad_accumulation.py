"""Gradient accumulation (optim.gradient_accumulation): two half batches per optimizer step equal one full batch,
at world 1 and 2 (gloo), dense and sparse head; a frozen backbone or head stays bitwise unchanged; the DDP
strategy's fp16 settings (GradScaler growth interval, fp16 gradient compression only on CUDA/NCCL).

The backbone has no BatchNorm in the equality checks: batch statistics of a half batch differ from the full
batch's, so with BatchNorm accumulation is close to, not equal to, a full batch (docs/training.md)."""

import pytest
import torch
from torch import nn

from fr.config import OptimConfig
from fr.distributed import DistEnv, env_from_group
from fr.heads import PartialFC, build_loss, build_sparse_optimizer
from fr.train.head import Head
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.strategy import GROWTH_INTERVAL, DDPStrategy
from fr.train.trainer import Trainer, TrainOptions
from tests.helpers.distributed import run_distributed

D, CLASSES, B, STEPS = 6, 10, 8, 3  # embedding size, classes, per-rank full batch, optimizer steps


class Loader(list):
    def set_epoch(self, epoch):
        pass


def full_batches(world_size, rank):
    """STEPS full batches: this rank's slice of each global batch."""
    batches = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(100 + step)
        images = torch.randn(B * world_size, 3, 2, 2, generator=generator)
        labels = torch.randint(0, CLASSES, (B * world_size,), generator=generator)
        part = slice(rank * B, (rank + 1) * B)
        batches.append((images[part].clone(), labels[part].clone()))
    return batches


def half_batches(batches):
    """Each full batch as two micro-batches of half its size (the same samples, on the same rank)."""
    return [(images[part], labels[part]) for images, labels in batches for part in (slice(0, B // 2), slice(B // 2, B))]


def build(env, batches, accumulation, update="dense", batchnorm=False, freeze=""):
    """SGD with momentum and weight decay for both parts, warmup + poly schedule, clipping on, sample rate 1."""
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, D)]
    if batchnorm:
        layers.insert(2, nn.BatchNorm1d(16))
    backbone = nn.Sequential(*layers)
    if freeze == "backbone":  # as fr.train.run does for train.freeze=backbone
        backbone.requires_grad_(False)
    head = PartialFC(build_loss("arcface", s=16.0, m=0.3), D, CLASSES, env=env, seed=2, update=update)
    cfg = OptimConfig(lr=0.02, momentum=0.9, weight_decay=5e-4)
    schedule = lambda optimizer: build_scheduler(optimizer, cfg, total_steps=STEPS, warmup_steps=1)
    strategy = DDPStrategy(backbone, env, lambda groups: build_optimizer(groups, cfg), schedule)
    groups = [{"params": head.parameters()}]
    head_optimizer = build_sparse_optimizer(groups, [head], cfg) if update == "sparse" else build_optimizer(groups, cfg)
    options = TrainOptions(
        total_steps=STEPS,
        log_every=100,
        clip_grad_norm=50.0,
        exact_backbone_grad=True,
        gradient_accumulation=accumulation,
    )
    head_part = Head(head, head_optimizer, schedule(head_optimizer), frozen=freeze == "head")
    return Trainer(strategy, head_part, Loader(batches), None, options)


def trained(env, world_size, accumulation, update="dense"):
    batches = full_batches(world_size, env.rank)
    trainer = build(env, half_batches(batches) if accumulation == 2 else batches, accumulation, update)
    trainer.fit()
    return {
        "backbone": {k: v.clone() for k, v in trainer.strategy.module.state_dict().items()},
        "head": trainer.head.module.weight.detach().clone(),
        "loss": trainer.state.last_loss,
        "steps": trainer.state.step,
        "lr_steps": trainer.strategy.scheduler.last_epoch,
        "head_lr_steps": trainer.head.scheduler.last_epoch,
    }


def assert_same(full, accumulated):
    for name, value in full["backbone"].items():
        assert torch.allclose(value, accumulated["backbone"][name], atol=1e-6, rtol=0), name
    assert torch.allclose(full["head"], accumulated["head"], atol=1e-6, rtol=0)
    assert full["loss"] == pytest.approx(accumulated["loss"], rel=1e-6)  # a mean of halves: fp32 rounding


def frozen_run(env, world_size, freeze):
    """(state before, state after) of a run with `freeze`, BatchNorm in the backbone."""
    trainer = build(env, full_batches(world_size, env.rank), 1, batchnorm=True, freeze=freeze)
    before = {
        "backbone": {k: v.clone() for k, v in trainer.strategy.module.state_dict().items()},
        "head": trainer.head.module.weight.detach().clone(),
    }
    trainer.fit()
    after = {"backbone": trainer.strategy.module.state_dict(), "head": trainer.head.module.weight.detach()}
    return before, after, type(trainer.strategy.model).__name__


def assert_frozen(before, after, freeze):
    frozen, trained_part = ("backbone", "head") if freeze == "backbone" else ("head", "backbone")
    if frozen == "backbone":
        assert all(torch.equal(before["backbone"][k], after["backbone"][k]) for k in before["backbone"])
        assert not torch.equal(before["head"], after["head"])
    else:
        assert torch.equal(before["head"], after["head"])
        changed = [k for k in before["backbone"] if not torch.equal(before["backbone"][k], after["backbone"][k])]
        assert "1.weight" in changed and "2.running_mean" in changed


@pytest.mark.parametrize("update", ["dense", "sparse"])
def test_two_half_batches_equal_one_full_batch(update):
    env = DistEnv()
    full, accumulated = trained(env, 1, 1, update), trained(env, 1, 2, update)
    assert_same(full, accumulated)
    # One trainer step, one LR-schedule step = one optimizer step, for both parts.
    assert accumulated["steps"] == accumulated["lr_steps"] == accumulated["head_lr_steps"] == STEPS


def _two_ranks(rank, world_size):
    env = env_from_group()
    results = {"full": trained(env, world_size, 1), "accumulated": trained(env, world_size, 2)}
    for freeze in ("backbone", "head"):
        results[freeze] = frozen_run(env, world_size, freeze)
    fp16 = DDPStrategy(
        nn.Linear(4, 2),
        env,
        lambda groups: torch.optim.SGD(groups, lr=0.1),
        lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        amp_dtype=torch.float16,
    )
    results["fp16"] = {"wrapped": type(fp16.model).__name__, "hooks": len(fp16.model._comm_hooks)}
    return results


def test_accumulation_freeze_and_fp16_hook_on_two_ranks():
    for rank, result in enumerate(run_distributed(_two_ranks, 2)):
        assert_same(result["full"], result["accumulated"])
        before, after, wrapper = result["backbone"]
        assert_frozen(before, after, "backbone")
        assert wrapper == "Sequential", f"rank {rank}: a frozen backbone must not be wrapped in DDP"
        before, after, wrapper = result["head"]
        assert_frozen(before, after, "head")
        assert wrapper == "DistributedDataParallel"
        # fp16 on gloo: DDP all-reduces fp32 gradients (no fp16_compress_hook).
        assert result["fp16"] == {"wrapped": "DistributedDataParallel", "hooks": 0}


def test_accumulated_half_batches_are_not_a_single_half_batch():
    """The check above can fail: stepping on each half batch separately gives other weights."""
    env = DistEnv()
    full = trained(env, 1, 1)
    batches = half_batches(full_batches(1, 0))
    trainer = build(env, batches, 1)
    trainer.options.total_steps = len(batches)
    trainer.fit()
    assert not torch.allclose(full["head"], trainer.head.module.weight.detach(), atol=1e-6)


@pytest.mark.parametrize("freeze", ["backbone", "head"])
def test_freeze_keeps_its_part_bitwise(freeze):
    before, after, _ = frozen_run(DistEnv(), 1, freeze)
    assert_frozen(before, after, freeze)


def test_fp16_scaler_growth_interval_and_no_compression_on_cpu():
    backbone = nn.Linear(4, 2)
    strategy = DDPStrategy(
        backbone,
        DistEnv(),
        lambda groups: torch.optim.SGD(groups, lr=0.1),
        lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        amp_dtype=torch.float16,
    )
    assert GROWTH_INTERVAL == 100  # arcface_torch's setting, not torch's 2000
    assert strategy.scaler.is_enabled() and strategy.scaler.get_growth_interval() == 100
    assert not strategy.compresses_gradients()
