"""Fine-tuning: model.pretrained (fr's model.pt with DDP's `module.` prefix, insightface's layouts, run and step
directories), partial_fc.pretrained (each rank its own rows), one-line errors on mismatches, and model.pt
snapshots during training that fr-eval reads while the run goes on."""

import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.bin_format import encode_png, write_bin
from fr.cli.eval import main as eval_main
from fr.cli.train import main as train_main
from fr.config import ConfigError, load_config
from fr.distributed import DistEnv, env_from_group
from fr.heads import PartialFC, build_loss
from fr.models import build_backbone
from fr.train.pretrained import load_backbone, load_pretrained
from fr.train.run import train
from fr.train.snapshots import ModelSnapshots
from tests.helpers.tiny_run import RECIPE, tiny_overrides

KWARGS = {"width": 8, "stem_stride": 2}
EMBEDDING = 16


def overrides(data, out, **extra):
    """A tiny run on a grey record set (batch 16), no evaluation."""
    values = {
        "data.synthetic": "false",
        "data.batch_size": 16,
        "model.kwargs": json.dumps(KWARGS),
        "model.embedding_size": EMBEDDING,
        "eval.bins": "[]",
        "eval.every": 0,
        "eval.at_start": "false",
        "output.tensorboard": "false",
        "train.log_every": 1,
        "train.max_steps": 3,
    }
    values.update(extra)
    return tiny_overrides(data, out, **values)


def config(data, out, **extra):
    return load_config(RECIPE, overrides(data, out, **extra))


def tiny_backbone(seed, embedding=EMBEDDING):
    torch.manual_seed(seed)
    return build_backbone("iresnet18", num_features=embedding, **KWARGS)


@pytest.fixture(scope="module")
def data(record_dir):
    """8 classes of 2 images: one step of 16 per epoch."""
    return str(record_dir(8, 2))


class SnapshotProbe:
    """At each epoch's end (after ModelSnapshots, which run.py puts first): model.pt as fr-eval reads it, against
    the backbone training has at that moment; and, the first time, fr-eval verify on the run directory."""

    def __init__(self, out, bin_path):
        self.out, self.bin_path, self.seen = out, bin_path, []

    def on_epoch_end(self, trainer, epoch):
        loaded = load_backbone(self.out).state_dict()
        current = trainer.strategy.export_backbone()
        same = sorted(loaded) == sorted(current) and all(torch.equal(loaded[k], current[k]) for k in current)
        status, results = None, None
        if epoch == 1:
            result = os.path.join(self.out, "eval.json")
            status = eval_main(["verify", "--checkpoint", self.out, "--bin", self.bin_path, "--json", result])
            results = json.load(open(result))["results"]
        self.seen.append((epoch, trainer.state.step, same, status, results))


def test_module_prefixed_model_pt_fine_tunes_and_model_pt_appears_each_epoch(data, tmp_path):
    start = tiny_backbone(123).state_dict()
    ddp_file = tmp_path / "ddp_model.pt"
    torch.save({f"module.{k}": v for k, v in start.items()}, ddp_file)  # as saved from a DDP-wrapped model
    rng = np.random.default_rng(0)
    bin_path = str(tmp_path / "pairs.bin")
    write_bin(bin_path, [encode_png(x) for x in rng.integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)], [1, 0] * 5)
    out = str(tmp_path / "run")
    probe = SnapshotProbe(out, bin_path)
    # A learning rate of 1e-9 and no weight decay: the weights stay where model.pretrained started them.
    cfg = config(data, out, **{"model.pretrained": str(ddp_file), "optim.lr": 1e-9, "optim.weight_decay": 0})
    train(cfg, listeners=[probe])
    # 3 steps of 1 per epoch: model.pt after epochs 1 and 2, each what training had then, read by fr-eval.
    assert [(epoch, step, same, status) for epoch, step, same, status, _ in probe.seen] == [
        (1, 1, True, 0),
        (2, 2, True, None),
    ]
    assert list(probe.seen[0][-1]) == ["pairs"]
    final = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    parameters = dict(tiny_backbone(0).named_parameters())  # names only: BatchNorm statistics do move
    for name in parameters:
        torch.testing.assert_close(final[name], start[name], atol=1e-6, rtol=0)


def arcface_torch_iresnet(layers, num_features, seed=0):
    """A state_dict laid out as insightface arcface_torch's iresnet saves it, names and shapes written out from
    its structure (stem conv-bn-prelu, IBasicBlocks bn1-conv1-bn2-prelu-conv2-bn3 with a strided conv+bn
    downsample opening every stage, then bn2, fc from 512x7x7 and the BatchNorm1d `features`)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, out_c, in_c, k):
        state[f"{name}.weight"] = torch.randn(out_c, in_c, k, k, generator=gen)

    def bn(name, c):
        state[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 3)
    bn("bn1", 64)
    state["prelu.weight"] = torch.rand(64, generator=gen)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            bn(f"{p}.bn1", inplanes)
            conv(f"{p}.conv1", planes, inplanes, 3)
            bn(f"{p}.bn2", planes)
            state[f"{p}.prelu.weight"] = torch.rand(planes, generator=gen)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn3", planes)
            if b == 0:
                conv(f"{p}.downsample.0", planes, inplanes, 1)
                bn(f"{p}.downsample.1", planes)
            inplanes = planes
    bn("bn2", 512)
    state["fc.weight"] = torch.randn(num_features, 512 * 7 * 7, generator=gen) * 0.01
    state["fc.bias"] = torch.randn(num_features, generator=gen)
    bn("features", num_features)
    return state


def fresh_config(**model):
    cfg = load_config(RECIPE, [])
    cfg.model.backbone, cfg.model.embedding_size, cfg.model.kwargs = "iresnet18", 32, {}
    for key, value in model.items():
        setattr(cfg.model, key, value)
    return cfg


@pytest.mark.parametrize("layout", ["model.pt", "checkpoint_gpu_0.pt"])
def test_insightface_model_pt_loads(tmp_path, layout):
    state = arcface_torch_iresnet((2, 2, 2, 2), 32)
    path = tmp_path / layout
    if layout == "model.pt":
        torch.save(state, path)
    else:  # arcface_torch's resumable checkpoint: the backbone beside the optimizer and its counters
        torch.save({"epoch": 3, "global_step": 900, "state_dict_backbone": state, "state_optimizer": {}}, path)
    backbone = build_backbone("iresnet18", num_features=32)
    load_pretrained(fresh_config(pretrained=str(path)), backbone, None, DistEnv(), resumed=False)
    loaded = backbone.state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_resumed_run_ignores_pretrained_weights_and_says_so(tmp_path, caplog):
    path = tmp_path / "model.pt"
    torch.save(arcface_torch_iresnet((2, 2, 2, 2), 32), path)
    backbone = build_backbone("iresnet18", num_features=32)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="fr.train"):
        load_pretrained(fresh_config(pretrained=str(path)), backbone, None, DistEnv(), resumed=True)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert f"model.pretrained={path} is ignored: the run resumes from its checkpoint" in caplog.text


def one_line_error(cfg, backbone):
    with pytest.raises(ConfigError) as info:
        load_pretrained(cfg, backbone, None, DistEnv(), resumed=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mismatched_weights_are_one_line_errors_naming_the_first_keys(tmp_path):
    state = arcface_torch_iresnet((2, 2, 2, 2), 32)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    # Another embedding size: fc and features disagree in shape, the first few named with both shapes.
    message = one_line_error(fresh_config(pretrained=str(path)), build_backbone("iresnet18", num_features=64))
    assert message.startswith(f"model.pretrained: {path} does not match backbone 'iresnet18': 6 shape mismatches")
    assert "fc.weight: checkpoint (32, 25088) vs model (64, 25088)" in message
    assert "fc.bias: checkpoint (32,) vs model (64,)" in message
    # Keys missing and unexpected: the first three of each are named.
    renamed = {("head." + k if k.startswith("features.") else k): v for k, v in state.items()}
    torch.save(renamed, path)
    message = one_line_error(fresh_config(pretrained=str(path)), build_backbone("iresnet18", num_features=32))
    assert "5 missing keys (e.g. features.weight, features.bias, features.running_mean)" in message
    assert "5 unexpected keys (e.g. head.features.weight, head.features.bias, head.features.running_mean)" in message
    missing = tmp_path / "absent.pt"
    message = one_line_error(fresh_config(pretrained=str(missing)), build_backbone("iresnet18", num_features=32))
    assert message == f"model.pretrained: checkpoint not found: {missing}"


def test_fr_train_refuses_a_mismatched_head_before_writing_anything(data, tmp_path, capsys):
    merged = tmp_path / "merged.pt"
    torch.save({"head_weight": torch.randn(9, EMBEDDING), "step": 3}, merged)  # the data set has 8 classes
    out = tmp_path / "run"
    assert train_main([RECIPE] + overrides(data, str(out), **{"partial_fc.pretrained": str(merged)})) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fr-train: error: partial_fc.pretrained: {merged}: holds 9 class centres of dimension {EMBEDDING}, "
        f"but this run has 8 classes and model.embedding_size={EMBEDDING}"
    )
    assert not out.exists()


def _load_head_rows(rank, world_size, merged):
    env = env_from_group()
    head = PartialFC(build_loss("arcface"), 4, 5, env=env)
    cfg = fresh_config()
    cfg.partial_fc.pretrained = merged
    load_pretrained(cfg, None, head, env, resumed=False)
    return head.weight.detach().clone()


def test_partial_fc_pretrained_gives_each_rank_its_rows(tmp_path, run_distributed):
    centres = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    merged = tmp_path / "merged.pt"
    torch.save({"backbone": {}, "head_weight": centres, "step": 7, "epoch": 1, "config": {}}, merged)
    rank0, rank1 = run_distributed(_load_head_rows, 2, str(merged))
    # 5 classes over 2 ranks: the first rank owns one more (classes 0-2), the second classes 3-4.
    assert torch.equal(rank0, centres[0:3]) and torch.equal(rank1, centres[3:5])


class FakeTrainer:
    def __init__(self, total_steps):
        self.state = SimpleNamespace(step=0, epoch=0)
        self.options = SimpleNamespace(total_steps=total_steps)
        self.env = DistEnv()
        self.strategy = SimpleNamespace(export_backbone=lambda: {"step": torch.tensor(self.state.step)})


def snapshots_written(every, total_steps, steps_per_epoch, path):
    """The step saved in `path` after each step (None: no file yet), driving ModelSnapshots as the loop does."""
    trainer, snapshots, seen = FakeTrainer(total_steps), ModelSnapshots(str(path), every), []
    for step in range(1, total_steps + 1):
        trainer.state.step = step
        snapshots.on_step_end(trainer, step)
        if step % steps_per_epoch == 0:
            trainer.state.epoch += 1
            snapshots.on_epoch_end(trainer, trainer.state.epoch)
        seen.append(int(torch.load(path, weights_only=True)["step"]) if path.exists() else None)
    return seen


def test_snapshot_cadence(tmp_path):
    # Every 3 steps; the last step (9) is left to the end of the run, which writes model.pt anyway.
    assert snapshots_written(3, 9, 4, tmp_path / "a.pt") == [None, None, 3, 3, 3, 6, 6, 6, 6]
    # Each epoch's end (every=0): steps 4 and 8 of 10.
    assert snapshots_written(0, 10, 4, tmp_path / "b.pt") == [None] * 3 + [4] * 4 + [8] * 3
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt"]  # no temporary file left
