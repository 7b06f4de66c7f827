"""Trainer and optimisation: LR schedule formula, exact vs arcface_torch backbone gradients over 2 ranks, NaN stop."""
import copy
import math

import pytest
import torch
from torch import nn

from dist_utils import run_distributed
from fr.config import OptimConfig
from fr.distributed import DistEnv, env_from_group
from fr.heads import PartialFC, build_loss
from fr.train.logging import MetricLogger
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.trainer import NonFiniteLossError, Trainer

D, CLASSES, LOCAL_B = 6, 5, 4


def test_poly_schedule_matches_formula():
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.4, power=2.0)
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


def one_step(backbone, head, env, images, labels, exact):
    wrapped = nn.parallel.DistributedDataParallel(backbone) if env.is_distributed else backbone
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": head.parameters()}], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    trainer = Trainer(wrapped, backbone, head, None, opt, sched, env, total_steps=1,
                      metrics=MetricLogger(None, 8, 1, enabled=False), log_every=1, exact_backbone_grad=exact)
    loss = trainer.train_step(images, labels)
    return loss, backbone[1].weight.detach().clone()


def _two_rank_step(rank, world_size, exact):
    env = env_from_group()
    backbone, head = make_parts(env)
    images, labels = data()
    part = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    # Same class centres as the single process: copy this rank's shard of a dense head.
    dense_backbone, dense_head = make_parts(DistEnv())
    with torch.no_grad():
        head.weight.copy_(dense_head.weight[head.class_start:head.class_start + head.num_local])
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
        else:      # arcface_torch semantics: DDP averages, so the backbone step is 1/world of it
            torch.testing.assert_close(after - before, (dense_after - before) / 2, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_the_run():
    backbone, head = make_parts(DistEnv())
    images, labels = data()
    images[0, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteLossError, match="step 1"):
        one_step(backbone, head, DistEnv(), images, labels, exact=False)


def test_bf16_autocast_step_on_cpu():
    backbone, head = make_parts(DistEnv())
    images, labels = data()
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.1)
    trainer = Trainer(backbone, backbone, head, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                      DistEnv(), 1, MetricLogger(None, 8, 1, enabled=False), 1, amp_dtype=torch.bfloat16)
    start = copy.deepcopy(backbone.state_dict())
    assert math.isfinite(trainer.train_step(images, labels))
    assert not torch.equal(start["1.weight"], backbone[1].weight)


def test_adamw_uses_the_configured_betas_and_decay():
    cfg = OptimConfig(name="adamw", lr=1e-3, betas=(0.8, 0.95), weight_decay=0.05)
    opt = build_optimizer([{"params": nn.Linear(2, 2).parameters()}], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.05 and group["lr"] == 1e-3


def test_loader_and_loss_statistics_reach_the_logs():
    """SFace's intra/inter terms and the loader's skipped-record count are logged with the loss."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, D))
    head = PartialFC(build_loss("sface"), D, CLASSES, env=DistEnv(), seed=1)
    images, labels = data()

    class Loader(list):
        stats = {"skipped_records": 3}

        def set_epoch(self, epoch):
            pass

    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.1)
    logged = {}

    class Metrics(MetricLogger):
        def scalars(self, step, values):
            logged.update(values)

    metrics = Metrics(None, 8, 1, enabled=True)
    trainer = Trainer(backbone, backbone, head, Loader([(images, labels)]), opt,
                      torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), DistEnv(), 1, metrics, 1)
    trainer.fit()
    assert logged["data/skipped_records"] == 3.0
    stats = head.margin_loss.last_stats
    assert {f"loss/{k}" for k in stats} <= set(logged) and {"intra", "inter"} <= set(stats)
    assert logged["loss/intra"] == pytest.approx(stats["intra"])
