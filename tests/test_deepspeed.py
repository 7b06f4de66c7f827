"""train.strategy=deepspeed: ZeRO-0/1/2 against the DDP strategy on 2 gloo ranks (losses, head shards), gradient
accumulation, an exact resume, the consolidated backbone export (fp32 and ZeRO-2 bf16), and the DeepSpeed JSON's
one-line errors before any process-group work.

The 2-rank checks share one spawned job: importing DeepSpeed and building its engines dominates their cost."""

import json
import os

import pytest
import torch
from torch import nn

from fr.config import Config, ConfigError
from fr.distributed import env_from_group
from fr.heads import PartialFC, build_loss
from fr.train.checkpoint import CheckpointManager, export_backbone, step_dir_name
from fr.train.head import Head
from fr.train.strategy import DDPStrategy
from fr.train.trainer import Trainer, TrainOptions
from tests.helpers.distributed import run_distributed

D, CLASSES, B, STEPS, LR = 6, 10, 4, 5, 0.05


class Loader:
    """Fixed batches with a resumable position (the trainer's checkpoints save it)."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def batches(rank, world_size, half=False):
    """STEPS batches of this rank's slice of each global batch (or each as two half batches)."""
    out = []
    for step in range(STEPS):
        generator = torch.Generator().manual_seed(10 + step)
        images = torch.randn(B * world_size, 3, 2, 2, generator=generator)
        labels = torch.randint(0, CLASSES, (B * world_size,), generator=generator)
        images, labels = images[rank * B : (rank + 1) * B], labels[rank * B : (rank + 1) * B]
        parts = (slice(0, B // 2), slice(B // 2, B)) if half else (slice(0, B),)
        out.extend((images[p].clone(), labels[p].clone()) for p in parts)
    return out


def ds_config(stage, accumulation=1, world_size=2, precision=None):
    config = {
        "train_micro_batch_size_per_gpu": B // accumulation,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": B * world_size,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    if precision:
        config[precision] = {"enabled": True}
    return config


def build(env, strategy_name, data, accumulation=1, stage=0, precision=None, checkpoints=None, total=STEPS):
    """A trainer over a 2-layer backbone (no BatchNorm) and a Partial FC shard, SGD with momentum for both."""
    from fr.train.deepspeed_strategy import DeepSpeedStrategy

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, D))
    head = PartialFC(build_loss("arcface", s=16.0, m=0.3), D, CLASSES, env=env, seed=2)
    optimizer = lambda groups: torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=5e-4)
    schedule = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / (2 * STEPS))
    if strategy_name == "ddp":
        strategy = DDPStrategy(backbone, env, optimizer, schedule)
    else:
        config = ds_config(stage, accumulation, env.world_size, precision)
        strategy = DeepSpeedStrategy(backbone, env, optimizer, schedule, config=config)
    head_optimizer = torch.optim.SGD(head.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    options = TrainOptions(total_steps=total, log_every=1, exact_backbone_grad=True, gradient_accumulation=accumulation)
    head_part = Head(head, head_optimizer, schedule(head_optimizer))
    return Trainer(strategy, head_part, Loader(data), checkpoints, options)


def summary(trainer):
    return {
        "losses": [loss for _, loss in trainer.state.history["loss"]],
        "backbone": {k: v.detach().float().clone() for k, v in trainer.strategy.module.state_dict().items()},
        "head": trainer.head.module.weight.detach().clone(),
    }


def _deepspeed_job(rank, world_size, out_dir):
    env = env_from_group()
    results = {}
    ddp = build(env, "ddp", batches(rank, world_size))
    ddp.fit()
    results["ddp"] = summary(ddp)
    for stage in (0, 1, 2):
        trainer = build(env, "deepspeed", batches(rank, world_size), stage=stage)
        trainer.fit()
        results[f"zero{stage}"] = summary(trainer)
    trainer = build(env, "deepspeed", batches(rank, world_size, half=True), accumulation=2, stage=2)
    trainer.fit()
    results["zero2_accumulated"] = summary(trainer)

    # A NaN image on rank 0 at step 3: both strategies skip that step on every rank and train on identically.
    for name in ("ddp", "deepspeed"):
        poisoned = batches(rank, world_size)
        if rank == 0:
            poisoned[2][0][0, 0, 0, 0] = float("nan")
        trainer = build(env, name, poisoned, stage=2)
        trainer.fit()
        results[f"{name}_skipped"] = {**summary(trainer), "skipped": trainer.state.skipped_steps}

    # Resume: 3 steps with a checkpoint at step 3, then a new run from it to STEPS; against the ZeRO-1 run.
    first_dir, second_dir = os.path.join(out_dir, "first"), os.path.join(out_dir, "second")
    manager = CheckpointManager(first_dir, env, every=3)
    manager.prepare({"num_classes": CLASSES})
    build(env, "deepspeed", batches(rank, world_size), stage=1, checkpoints=manager, total=3).fit()
    step_dir = os.path.join(first_dir, "checkpoints", step_dir_name(3))
    manager = CheckpointManager(second_dir, env, resume=step_dir)
    manager.prepare({"num_classes": CLASSES})
    resumed = build(env, "deepspeed", batches(rank, world_size), stage=1, checkpoints=manager)
    resumed.fit()
    results["resumed"] = summary(resumed)
    final_dir = os.path.join(second_dir, "checkpoints", step_dir_name(STEPS))
    results["exported"] = export_backbone(final_dir) if rank == 0 else None
    results["engine_export"] = resumed.strategy.export_backbone()

    # ZeRO-2 with bf16: model.pt from the files = the engine's fp32 master weights, gathered here.
    from deepspeed.utils import safe_get_full_fp32_param

    bf16_dir = os.path.join(out_dir, "bf16")
    manager = CheckpointManager(bf16_dir, env)
    manager.prepare({"num_classes": CLASSES})
    bf16 = build(env, "deepspeed", batches(rank, world_size), stage=2, precision="bf16", checkpoints=manager)
    bf16.fit()
    results["bf16_masters"] = {
        name: safe_get_full_fp32_param(p).detach().clone() for name, p in bf16.strategy.module.named_parameters()
    }
    results["bf16_dtype"] = next(bf16.strategy.module.parameters()).dtype
    results["bf16_model_pt"] = bf16.strategy.export_backbone() if rank == 0 else None
    return results


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    pytest.importorskip("deepspeed")
    return run_distributed(_deepspeed_job, 2, str(tmp_path_factory.mktemp("ds")), timeout_s=300)


def close(a, b, tol=1e-5):
    return all(torch.allclose(a[k], b[k], atol=tol, rtol=0) for k in a) and sorted(a) == sorted(b)


def test_zero_stages_match_ddp(job):
    for rank, result in enumerate(job):
        ddp = result["ddp"]
        assert len(ddp["losses"]) == STEPS
        for stage in (0, 1, 2):
            ours = result[f"zero{stage}"]
            assert ours["losses"] == pytest.approx(ddp["losses"], abs=1e-5), f"rank {rank} ZeRO-{stage}"
            assert close(ours["backbone"], ddp["backbone"])
            # The head stayed outside the engine: this rank's shard, as DDP's run trained it, never averaged.
            assert torch.allclose(ours["head"], ddp["head"], atol=1e-5, rtol=0)
    assert not torch.allclose(job[0]["zero2"]["head"], job[1]["zero2"]["head"])
    assert ddp["losses"][0] != pytest.approx(ddp["losses"][-1], abs=1e-3)  # the runs did train


def test_nonfinite_step_is_skipped_as_under_ddp(job):
    for result in job:
        ddp, ours = result["ddp_skipped"], result["deepspeed_skipped"]
        assert ddp["skipped"] == ours["skipped"] == 1
        assert ours["losses"] == pytest.approx(ddp["losses"], abs=1e-5, nan_ok=True)
        assert close(ours["backbone"], ddp["backbone"]) and all(
            torch.isfinite(v).all() for v in ours["backbone"].values()
        )
        assert torch.allclose(ours["head"], ddp["head"], atol=1e-5, rtol=0)


def test_accumulation_of_half_batches_equals_full_batches(job):
    for result in job:
        full, accumulated = result["zero2"], result["zero2_accumulated"]
        # Within fp32 rounding of weights of magnitude ~10 (a mean of halves sums in another order).
        assert close(full["backbone"], accumulated["backbone"], 1e-5)
        assert torch.allclose(full["head"], accumulated["head"], atol=1e-5, rtol=0)


def test_resumed_run_continues_exactly(job):
    for result in job:
        straight, resumed = result["zero1"], result["resumed"]
        assert close(straight["backbone"], resumed["backbone"], 1e-6)
        assert torch.allclose(straight["head"], resumed["head"], atol=1e-6, rtol=0)
        assert resumed["losses"][-2:] == pytest.approx(straight["losses"][3:], abs=1e-6)  # steps 4 and 5


def test_exported_model_equals_engine_weights(job):
    exported, engine = job[0]["exported"], job[0]["resumed"]["backbone"]
    assert sorted(exported) == sorted(engine)
    assert all(torch.equal(exported[k], engine[k]) for k in engine)
    assert all(torch.equal(job[0]["engine_export"][k], engine[k]) for k in engine)


def test_bf16_zero2_model_pt_is_the_fp32_masters(job):
    result = job[0]
    assert result["bf16_dtype"] == torch.bfloat16
    masters, model_pt = result["bf16_masters"], result["bf16_model_pt"]
    assert all(model_pt[k].dtype == torch.float32 and torch.equal(model_pt[k], masters[k]) for k in masters)
    # The masters are finer than the bf16 weights the engine computes with.
    assert any(not torch.equal(masters[k], masters[k].bfloat16().float()) for k in masters)


# ---------------------------------------------------------------------------------------------- config errors
def config_with(tmp_path, content, **train):
    path = tmp_path / "ds.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    cfg = Config()
    cfg.data.batch_size, cfg.optim.clip_grad_norm = 32, 5.0
    cfg.train.strategy, cfg.train.deepspeed_config = "deepspeed", str(path)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage=3 is not supported"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer"),
        ({"zero_optimization": {"stage": 1, "offload_param": {"device": "nvme"}}}, "offload_param"),
        ({"optimizer": {"type": "Adam"}}, "remove the 'optimizer' block"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove the 'scheduler' block"),
        ({"train_micro_batch_size_per_gpu": 64}, "train_micro_batch_size_per_gpu=64 disagrees with data.batch_size=32"),
        ({"gradient_clipping": 1.0}, "gradient_clipping=1.0 disagrees with optim.clip_grad_norm=5.0"),
        (
            {"gradient_accumulation_steps": 4},
            "gradient_accumulation_steps=4 disagrees with optim.gradient_accumulation=1",
        ),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16 and bf16 are both enabled"),
        ('{"zero_optimization": {"stage": 1},}', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_config_errors_are_one_line(tmp_path, content, expected):
    from fr.train.deepspeed_strategy import deepspeed_config

    with pytest.raises(ConfigError) as info:
        deepspeed_config(config_with(tmp_path, content))
    message = str(info.value)
    assert expected in message and "\n" not in message and "train.deepspeed_config=" in message


def test_fr_fills_its_settings(tmp_path):
    from fr.train.deepspeed_strategy import deepspeed_config

    cfg = config_with(tmp_path, {"zero_optimization": {"stage": 2}, "train_batch_size": "auto"})
    cfg.optim.gradient_accumulation = 2
    filled = deepspeed_config(cfg, world_size=4)
    assert filled["train_micro_batch_size_per_gpu"] == 32 and filled["gradient_accumulation_steps"] == 2
    assert filled["train_batch_size"] == 32 * 2 * 4 and filled["gradient_clipping"] == 5.0
    with pytest.raises(ConfigError, match="train_batch_size=64 disagrees"):
        deepspeed_config(config_with(tmp_path, {"train_batch_size": 64}), world_size=4)


def test_errors_come_before_any_process_group_work(tmp_path, monkeypatch):
    import fr.train.run as run

    def no_group(*args, **kwargs):
        raise AssertionError("init_distributed was called before the DeepSpeed config was checked")

    monkeypatch.setattr(run, "init_distributed", no_group)
    cfg = config_with(tmp_path, {"zero_optimization": {"stage": 3}})
    cfg.data.root = str(tmp_path)
    with pytest.raises(ConfigError, match="stage=3"):
        run.train(cfg)
    cfg.train.deepspeed_config = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="missing.json: no such file"):
        run.train(cfg)
    cfg.train.deepspeed_config = ""
    with pytest.raises(ConfigError, match="needs train.deepspeed_config"):
        run.train(cfg)


def test_deepspeed_is_not_imported_by_fr():
    import subprocess
    import sys

    code = (
        "import sys, fr.train.run, fr.train.strategy as s; "
        "assert 'deepspeed' in s.STRATEGIES; print('deepspeed' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
