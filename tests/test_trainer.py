"""Trainer and optimisation: LR schedule formula, exact vs arcface_torch backbone gradients over 2 ranks, the
strategy seam (registry, split optimizers, backbone-only clipping), one host read per step."""

import copy
import math

import pytest
import torch
from torch import nn

from fr.config import ConfigError, OptimConfig, TrainConfig
from fr.distributed import DistEnv, env_from_group
from fr.heads import PartialFC, build_loss
from fr.train.head import Head
from fr.train.logging import MetricLogger
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.strategies import STRATEGIES
from fr.train.strategy import DDPStrategy
from fr.train.trainer import NonFiniteLossError, Trainer, TrainOptions
from tests.helpers.distributed import run_distributed

D, CLASSES, LOCAL_B = 6, 5, 4


def test_legacy_poly_schedule_matches_formula():
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.4, schedule="poly_legacy", power=2.0)
    opt = build_optimizer([{"params": model.parameters()}], cfg)
    sched = build_scheduler(opt, cfg, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.4 * s / 4 for s in range(4)] + [0.4 * (1 - (s - 4) / 16) ** 2 for s in range(4, 20)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def make_parts(env):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, D))  # no BatchNorm: batch statistics would differ
    head = PartialFC(build_loss("arcface", s=8.0, m=0.3), D, CLASSES, env=env, seed=1)
    return backbone, head


def data():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2 * LOCAL_B, 3, 2, 2, generator=generator)
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 4, 0])
    return images, labels


def make_trainer(backbone, head, env, loader=None, lr=0.5, amp_dtype=None, metrics=None, **options):
    """A Trainer with plain SGD for both parts and a constant schedule."""
    constant = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    strategy = DDPStrategy(backbone, env, lambda groups: torch.optim.SGD(groups, lr=lr), constant, amp_dtype)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=lr)
    options = TrainOptions(**{"total_steps": 1, "log_every": 1, **options})
    return Trainer(
        strategy, Head(head, head_optimizer, constant(head_optimizer)), loader, None, options, metrics=metrics
    )


def one_step(backbone, head, env, images, labels, exact):
    trainer = make_trainer(backbone, head, env, exact_backbone_grad=exact)
    loss = trainer.train_step(images, labels)
    return loss.item(), backbone[1].weight.detach().clone()


def _two_rank_step(rank, world_size, exact):
    env = env_from_group()
    backbone, head = make_parts(env)
    images, labels = data()
    part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    # Same class centres as the single process: copy this rank's shard of a dense head.
    dense_backbone, dense_head = make_parts(DistEnv())
    with torch.no_grad():
        head.weight.copy_(dense_head.weight[head.class_start : head.class_start + head.num_local])
    return one_step(backbone, head, env, images[part], labels[part], exact)


@pytest.mark.parametrize("exact", [True, False])
def test_backbone_update_over_two_ranks(exact):
    images, labels = data()
    backbone, head = make_parts(DistEnv())
    before = backbone[1].weight.detach().clone()
    dense_loss, dense_after = one_step(backbone, head, DistEnv(), images, labels, exact)
    results = run_distributed(_two_rank_step, 2, exact)
    for loss, after in results:
        assert loss == pytest.approx(dense_loss, rel=1e-5)
        if exact:  # the gradient of the global-batch loss, as one process with the whole batch
            torch.testing.assert_close(after, dense_after, rtol=1e-5, atol=1e-6)
        else:  # arcface_torch semantics: DDP averages, so the backbone step is 1/world of it
            torch.testing.assert_close(after - before, (dense_after - before) / 2, rtol=1e-5, atol=1e-6)


def test_the_two_optimizers_step_as_one_sgd_over_both_groups():
    """The backbone's optimizer (the strategy's) and the head's, each with its own schedule, give what one SGD
    over both parameter groups gave before the split: the same momentum maths, the same learning rates."""
    images, labels = data()
    backbone, head = make_parts(DistEnv())
    twin_backbone, twin_head = copy.deepcopy(backbone), copy.deepcopy(head)
    cfg = OptimConfig(lr=0.3, momentum=0.9, weight_decay=0.01, warmup_epochs=0)
    schedule = lambda optimizer: build_scheduler(optimizer, cfg, total_steps=4, warmup_steps=1)
    strategy = DDPStrategy(backbone, DistEnv(), lambda groups: build_optimizer(groups, cfg), schedule)
    head_optimizer = build_optimizer([{"params": head.parameters()}], cfg)
    trainer = Trainer(
        strategy,
        Head(head, head_optimizer, schedule(head_optimizer)),
        None,
        None,
        TrainOptions(total_steps=3, clip_grad_norm=0.0),
    )
    joint = build_optimizer([{"params": twin_backbone.parameters()}, {"params": twin_head.parameters()}], cfg)
    joint_schedule = schedule(joint)
    for _ in range(3):
        trainer.train_step(images, labels)
        loss = twin_head(twin_backbone(images).float(), labels)
        joint.zero_grad(set_to_none=True)
        loss.backward()
        joint.step()
        joint_schedule.step()
        assert strategy.lr() == head_optimizer.param_groups[0]["lr"] == joint.param_groups[0]["lr"]
    assert all(torch.equal(a, b) for a, b in zip(backbone.parameters(), twin_backbone.parameters()))
    assert torch.equal(head.weight, twin_head.weight)


def test_clipping_covers_the_backbone_only():
    images, labels = data()
    backbone, head = make_parts(DistEnv())
    twin_backbone, twin_head = copy.deepcopy(backbone), copy.deepcopy(head)
    before = [p.detach().clone() for p in backbone.parameters()]
    make_trainer(backbone, head, DistEnv(), lr=1.0, clip_grad_norm=1e-3).train_step(images, labels)
    # Independent computation: plain autograd; the backbone's gradient scaled to norm 1e-3, the head's as it is.
    twin_head(twin_backbone(images).float(), labels).backward()
    grads = [p.grad for p in twin_backbone.parameters()]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    assert norm > 1e-2  # so that clipping matters
    for after, start, grad in zip(backbone.parameters(), before, grads):
        torch.testing.assert_close(after.detach(), start - grad * (1e-3 / norm), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.weight.detach(), twin_head.weight.detach() - twin_head.weight.grad)


def test_a_non_finite_loss_with_max_nonfinite_steps_1_stops_the_run():
    backbone, head = make_parts(DistEnv())
    images, labels = data()
    images[0, 0, 0, 0] = math.nan
    before = copy.deepcopy(backbone.state_dict())
    trainer = make_trainer(backbone, head, DistEnv(), max_nonfinite_steps=1)
    with pytest.raises(NonFiniteLossError, match="the loss became nan at step 1;"):
        trainer.train_step(images, labels)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # no update was applied


def test_bf16_autocast_step_on_cpu():
    backbone, head = make_parts(DistEnv())
    images, labels = data()
    trainer = make_trainer(backbone, head, DistEnv(), lr=0.1, amp_dtype=torch.bfloat16)
    start = copy.deepcopy(backbone.state_dict())
    assert math.isfinite(trainer.train_step(images, labels).item())
    assert not torch.equal(start["1.weight"], backbone[1].weight)


def test_adamw_uses_the_configured_betas_and_decay():
    cfg = OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.95), weight_decay=0.05)
    opt = build_optimizer([{"params": nn.Linear(2, 2).parameters()}], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.05 and group["lr"] == 1e-3


def test_strategy_and_max_nonfinite_steps_are_checked_config_keys():
    assert "ddp" in STRATEGIES and TrainConfig().strategy == "ddp" and TrainConfig().max_nonfinite_steps == 20
    with pytest.raises(ConfigError, match=r"train.strategy='dpp' is not one of .*ddp.*did you mean ddp"):
        TrainConfig(strategy="dpp").validate()
    with pytest.raises(ConfigError, match="train.max_nonfinite_steps must be >= 1, got 0"):
        TrainConfig(max_nonfinite_steps=0).validate()


class Loader(list):
    stats = {"skipped_records": 3}

    def set_epoch(self, epoch):
        pass


def test_loader_and_loss_statistics_reach_the_logs():
    """SFace's intra/inter terms and the loader's skipped-record count are logged with the loss."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
    head = PartialFC(build_loss("sface"), D, CLASSES, env=DistEnv(), seed=1)
    images, labels = data()
    logged = {}

    class Metrics(MetricLogger):
        def scalars(self, step, values):
            logged.update(values)

    trainer = make_trainer(
        backbone, head, DistEnv(), Loader([(images, labels)]), lr=0.1, metrics=Metrics(None, 8, 1, enabled=True)
    )
    trainer.fit()
    assert logged["data/skipped_records"] == 3.0 and logged["train/skipped_steps"] == 0.0
    stats = head.margin_loss.last_stats
    assert {f"loss/{k}" for k in stats} <= set(logged) and {"intra", "inter"} <= set(stats)
    assert logged["loss/intra"] == pytest.approx(stats["intra"])


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


def test_a_step_reads_the_host_once_and_the_loss_only_at_log_steps(monkeypatch):
    """Between log steps the loop's only host read is the step's agreement (non-finite flag, stop signal):
    no float(loss), no read of the head's batch check, no separate stop poll. Counted on tensor methods."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
    head = PartialFC(build_loss("cosface"), D, CLASSES, env=DistEnv(), seed=1)  # sample_rate 1: no draws
    images, labels = data()
    metrics = MetricLogger(None, 8, 10, enabled=False)
    trainer = make_trainer(
        backbone,
        head,
        DistEnv(),
        Loader([(images, labels)] * 10),
        lr=0.1,
        metrics=metrics,
        total_steps=10,
        log_every=5,
        clip_grad_norm=5.0,
    )
    trainer.stop_requested = lambda: 0
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: reads.append(_n) or _o(self, *a, **k)
        )
    per_step = []
    original_step = Trainer.train_step

    def counted(self, *args):
        before = len(reads)
        result = original_step(self, *args)
        per_step.append(len(reads) - before)
        return result

    monkeypatch.setattr(Trainer, "train_step", counted)
    trainer.fit()
    monkeypatch.undo()
    assert per_step == [1] * 10, per_step
    assert trainer.state.step == 10 and trainer.state.history["loss"][0][0] == 5
