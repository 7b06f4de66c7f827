"""Resumable runs: a run stopped mid-epoch and resumed ends bit-identical to one that never stopped, on one
process and over 2 gloo ranks, with the torch and the DALI loader; bad checkpoints fail naming the file."""
import json
import os
import signal

import pytest
import torch

from fr.config import load_config
from fr.distributed import DistEnv, env_from_group
from fr.cli.train import main as train_main
from fr.train.checkpoint import CheckpointError
from fr.train.preemption import TrainingInterrupted
from fr.train.resume import MANIFEST, POINTER, Checkpointer, load_rank_state, resolve_resume, run_settings
from fr.train.run import train
from fr.train.trainer import Trainer

from dist_utils import run_distributed
from tiny_run import RECIPE, tiny_overrides

def tiny_values(**extra):
    # 128 images, batch 16: 8 steps per epoch on one rank, 4 per rank on two; 20 steps in all.
    values = {"train.epochs": 3, "train.max_steps": 20, "train.log_every": 1, "eval.every": 0,
              "eval.at_start": "false", "output.tensorboard": "false", "output.keep_checkpoints": 2,
              "partial_fc.sample_rate": 0.5, "optim.warmup_epochs": 0.5}
    values.update(extra)
    return values


def tiny_config(data_dir, out_dir, **extra):
    return load_config(RECIPE, tiny_overrides(data_dir, out_dir, **tiny_values(**extra)))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return str(tmp_path_factory.mktemp("resume_data"))


class Crash(RuntimeError):
    pass


def crash_after(monkeypatch, steps):
    """Make Trainer.train_step raise on its call number `steps + 1`, as a killed process would stop."""
    original, calls = Trainer.train_step, {"n": 0}

    def step(self, images, labels):
        calls["n"] += 1
        if calls["n"] > steps:
            raise Crash(f"simulated crash before step {calls['n']}")
        return original(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", step)


def final_state(out_dir, rank=0):
    pointer = json.load(open(os.path.join(out_dir, "checkpoints", POINTER)))
    path = os.path.join(out_dir, "checkpoints", pointer["dir"], f"rank{rank:05d}.pt")
    return torch.load(path, weights_only=True)


def assert_same_training(a_dir, b_dir, rank=0):
    a, b = final_state(a_dir, rank), final_state(b_dir, rank)
    assert a["trainer"]["step"] == b["trainer"]["step"] == 20
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            if isinstance(a[part][key], torch.Tensor):
                assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    assert a["trainer"]["history"]["loss"] == b["trainer"]["history"]["loss"]


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_crash_then_resume_auto_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    straight = str(tmp_path / "straight")
    train(tiny_config(tiny_data, straight, **{"data.loader": loader, "output.checkpoint_every": 3}))

    crashed = str(tmp_path / "crashed")
    crash_after(monkeypatch, 13)  # mid-epoch 1; the last checkpoint is step 12
    with pytest.raises(Crash):
        train(tiny_config(tiny_data, crashed, **{"data.loader": loader, "output.checkpoint_every": 3}))
    monkeypatch.undo()
    assert resolve_resume("auto", crashed).endswith("step_00000012")
    workers = 2 if loader == "torch" else 1  # the per-sample seeds make flips independent of the worker count
    results = train(tiny_config(tiny_data, crashed, **{"data.loader": loader, "output.checkpoint_every": 3,
                                                       "train.resume": "auto", "data.num_workers": workers}))
    assert results["steps"] == 20
    assert_same_training(straight, crashed)
    assert torch.equal(torch.load(os.path.join(straight, "model.pt"))["fc.weight"],
                       torch.load(os.path.join(crashed, "model.pt"))["fc.weight"])
    kept = sorted(d for d in os.listdir(os.path.join(crashed, "checkpoints")) if d.startswith("step_"))
    assert kept == ["step_00000018", "step_00000020"]  # keep_checkpoints=2


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_resume_at_an_epoch_boundary_and_with_per_epoch_checkpoints(tiny_data, tmp_path, loader):
    """checkpoint_every=0 saves at each epoch end (steps 8 and 16); resuming from step 8 starts epoch 1."""
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    straight = str(tmp_path / "straight")
    train(tiny_config(tiny_data, straight, **{"output.keep_checkpoints": 5, "data.loader": loader}))
    steps = sorted(d for d in os.listdir(os.path.join(straight, "checkpoints")) if d.startswith("step_"))
    assert steps == ["step_00000008", "step_00000016", "step_00000020"]
    manifest = json.load(open(os.path.join(straight, "checkpoints", "step_00000008", MANIFEST)))
    assert manifest["epoch"] == 1 and manifest["world_size"] == 1
    resumed = str(tmp_path / "resumed")
    train(tiny_config(tiny_data, resumed, **{"train.resume": os.path.join(straight, "checkpoints", "step_00000008"),
                                             "data.loader": loader}))
    assert_same_training(straight, resumed)


def _train_two_ranks(rank, world_size, data_dir, out_dir, extra):
    return train(tiny_config(data_dir, out_dir, **extra), env_from_group())


def test_two_rank_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_distributed(_train_two_ranks, 2, tiny_data, straight,
                    {"output.checkpoint_every": 5, "output.keep_checkpoints": 5}, timeout_s=300)
    start = os.path.join(straight, "checkpoints", "step_00000005")  # epoch 1, one batch in
    run_distributed(_train_two_ranks, 2, tiny_data, resumed, {"train.resume": start}, timeout_s=300)
    for rank in range(2):  # each rank's head shard, optimizer state and loader position
        assert_same_training(straight, resumed, rank)


def test_bad_checkpoints_are_errors_naming_the_file(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_config(tiny_data, out, **{"train.max_steps": 4, "output.checkpoint_every": 2}))
    step_dir = resolve_resume("auto", out)
    assert step_dir.endswith("step_00000004")
    env = DistEnv(rank=0, world_size=1)
    cfg = tiny_config(tiny_data, out)
    settings = run_settings(cfg, 16)
    assert load_rank_state(step_dir, env, settings)["trainer"]["step"] == 4

    with pytest.raises(CheckpointError, match="written by 1 ranks but this run has 2"):
        load_rank_state(step_dir, DistEnv(rank=1, world_size=2), settings)
    with pytest.raises(CheckpointError, match=r"model.embedding_size was 64 .* but is 128 now"):
        load_rank_state(step_dir, env, run_settings(tiny_config(tiny_data, out, **{"model.embedding_size": 128}), 16))
    with pytest.raises(CheckpointError, match="num_classes was 16"):
        load_rank_state(step_dir, env, {**settings, "num_classes": 17})

    rank_path = os.path.join(step_dir, "rank00000.pt")
    data = open(rank_path, "rb").read()
    open(rank_path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"rank00000.pt is \d+ bytes but .*manifest.json records \d+"):
        load_rank_state(step_dir, env, settings)
    with pytest.raises(CheckpointError, match="rank00000.pt"):  # a run resuming from it stops before training
        train(tiny_config(tiny_data, out, **{"train.resume": "auto"}))

    # A step directory the run never finished (no manifest) is not resumable, and `auto` ignores it.
    unfinished = os.path.join(out, "checkpoints", "step_00000006")
    os.makedirs(unfinished)
    with pytest.raises(CheckpointError, match="never completed"):
        resolve_resume(unfinished, out)
    assert resolve_resume("auto", out) == step_dir
    with open(os.path.join(out, "checkpoints", POINTER), "w") as fh:
        fh.write("{not json")
    with pytest.raises(CheckpointError, match="latest.json: not a readable JSON file"):
        resolve_resume("auto", out)
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_resume(str(tmp_path / "missing"), out)
    assert resolve_resume("auto", str(tmp_path / "fresh")) is None and resolve_resume("", out) is None


class _Tiny:
    """Just enough of a Trainer for Checkpointer.save."""

    def __init__(self, step):
        self.state = type("S", (), {"step": step, "epoch": 0})()

    def state_dict(self):
        return {"format": 1, "step": self.state.step}


def test_pruning_keeps_the_newest_and_leaves_newer_abandoned_ones(tmp_path):
    directory = str(tmp_path / "checkpoints")
    saver = Checkpointer(directory, DistEnv(rank=0, world_size=1), {"num_classes": 3}, keep=2)
    os.makedirs(os.path.join(directory, "step_00000099"))  # from a run that was abandoned after a resume
    for step in (10, 20, 30):
        saver.save(_Tiny(step))
    assert sorted(os.listdir(directory)) == [POINTER, "step_00000020", "step_00000030", "step_00000099"]
    assert json.load(open(os.path.join(directory, POINTER)))["dir"] == "step_00000030"


def test_a_step_directory_being_rewritten_is_not_resumable_meanwhile(tmp_path):
    """Rewriting the step directory of an abandoned run drops its manifest before any file is replaced."""
    directory = str(tmp_path / "checkpoints")
    saver = Checkpointer(directory, DistEnv(rank=0, world_size=1), {"num_classes": 3}, keep=5)
    saver.save(_Tiny(40))
    step_dir = os.path.join(directory, "step_00000040")

    class Dies(_Tiny):
        def state_dict(self):
            assert not os.path.exists(os.path.join(step_dir, MANIFEST))
            raise Crash("killed while writing")

    with pytest.raises(Crash):
        saver.save(Dies(40))
    with pytest.raises(CheckpointError, match="never completed"):
        resolve_resume(step_dir, str(tmp_path))


def signal_at(steps, signum, only_rank=None):
    """Patch Trainer.train_step so that this process sends itself `signum` during call number `steps`."""
    original, calls = Trainer.train_step, {"n": 0}

    def step(self, images, labels):
        calls["n"] += 1
        if calls["n"] == steps and (only_rank is None or self.env.rank == only_rank):
            os.kill(os.getpid(), signum)
        return original(self, images, labels)

    Trainer.train_step = step
    return original


def test_sigterm_checkpoints_after_the_step_and_the_run_resumes_exactly(tiny_data, tmp_path):
    straight = str(tmp_path / "straight")
    train(tiny_config(tiny_data, straight, **{"output.checkpoint_every": 5}))
    stopped = str(tmp_path / "stopped")
    original = signal_at(11, signal.SIGTERM)
    try:
        overrides = tiny_overrides(tiny_data, stopped, **tiny_values(**{"output.checkpoint_every": 5}))
        assert train_main([RECIPE] + overrides) == 128 + signal.SIGTERM  # as if killed by it, after a checkpoint
    finally:
        Trainer.train_step = original
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is removed after the run
    assert resolve_resume("auto", stopped).endswith("step_00000011")
    assert not os.path.exists(os.path.join(stopped, "model.pt"))  # model.pt means a finished run
    train(tiny_config(tiny_data, stopped, **{"output.checkpoint_every": 5, "train.resume": "auto"}))
    assert_same_training(straight, stopped)


def _stop_on_one_rank(rank, world_size, data_dir, out_dir):
    original = signal_at(3, signal.SIGUSR1, only_rank=1)
    try:
        train(tiny_config(data_dir, out_dir), env_from_group())
    except TrainingInterrupted as stopped:
        return {"step": stopped.step, "signum": stopped.signum, "checkpoint": stopped.checkpoint}
    finally:
        Trainer.train_step = original
    return None


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    results = run_distributed(_stop_on_one_rank, 2, tiny_data, out, timeout_s=300)
    assert [r["step"] for r in results] == [3, 3] and {r["signum"] for r in results} == {signal.SIGUSR1}
    assert results[0]["checkpoint"].endswith("step_00000003")
    manifest = json.load(open(os.path.join(out, "checkpoints", "step_00000003", MANIFEST)))
    assert sorted(manifest["files"]) == ["rank00000.pt", "rank00001.pt"]
