"""Resumable runs: a run stopped mid-epoch and resumed ends bit-identical to one that never stopped, on one
process and over 2 gloo ranks, with the torch and the DALI loader; bad checkpoints fail naming the file, or with
train.resume=auto are passed over for the previous whole one, on every rank alike."""

import json
import logging
import os
import signal

import pytest
import torch

from fr.cli.train import main as train_main
from fr.config import load_config
from fr.distributed import DistEnv, env_from_group
from fr.train.checkpoint import (
    MANIFEST,
    POINTER,
    CheckpointManager,
    load_rank_state,
    rank_file,
    resume_candidates,
    run_settings,
)
from fr.train.model_file import CheckpointError
from fr.train.preemption import TrainingInterrupted
from fr.train.run import train
from fr.train.trainer import Trainer
from tests.helpers.distributed import run_distributed
from tests.helpers.tiny_run import RECIPE, tiny_overrides


def tiny_values(**extra):
    # 128 images, batch 16: 8 steps per epoch on one rank, 4 per rank on two; 20 steps in all.
    values = {
        "train.epochs": 3,
        "train.max_steps": 20,
        "train.log_every": 1,
        "eval.every": 0,
        "eval.at_start": "false",
        "output.tensorboard": "false",
        "output.keep_checkpoints": 2,
        "partial_fc.sample_rate": 0.5,
        "optim.warmup_epochs": 0.5,
    }
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
    path = os.path.join(out_dir, "checkpoints", pointer["dir"], rank_file(rank))
    return torch.load(path, weights_only=True)


def assert_same_training(a_dir, b_dir, rank=0, steps=20):
    a, b = final_state(a_dir, rank), final_state(b_dir, rank)
    assert a["trainer"]["step"] == b["trainer"]["step"] == steps
    for part, module in (("strategy", "model"), ("head", "module")):  # the backbone, this rank's head shard
        assert a[part][module].keys() == b[part][module].keys()
        for key in a[part][module]:
            if isinstance(a[part][module][key], torch.Tensor):
                assert torch.equal(a[part][module][key], b[part][module][key]), f"{part}.{key} differs"
        # Each part's own optimizer: its momentum; and its LR schedule.
        momentum_a = [s["momentum_buffer"] for s in a[part]["optimizer"]["state"].values()]
        momentum_b = [s["momentum_buffer"] for s in b[part]["optimizer"]["state"].values()]
        assert momentum_a and all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
        assert a[part]["scheduler"] == b[part]["scheduler"]
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
    assert resume_candidates("auto", crashed)[0].endswith("step_00000012")
    workers = 2 if loader == "torch" else 1  # the per-sample seeds make flips independent of the worker count
    results = train(
        tiny_config(
            tiny_data,
            crashed,
            **{
                "data.loader": loader,
                "output.checkpoint_every": 3,
                "train.resume": "auto",
                "data.num_workers": workers,
            },
        )
    )
    assert results["steps"] == 20
    assert_same_training(straight, crashed)
    assert torch.equal(
        torch.load(os.path.join(straight, "model.pt"))["fc.weight"],
        torch.load(os.path.join(crashed, "model.pt"))["fc.weight"],
    )
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
    train(
        tiny_config(
            tiny_data,
            resumed,
            **{"train.resume": os.path.join(straight, "checkpoints", "step_00000008"), "data.loader": loader},
        )
    )
    assert_same_training(straight, resumed)


def _train_two_ranks(rank, world_size, data_dir, out_dir, extra):
    return train(tiny_config(data_dir, out_dir, **extra), env_from_group())


@pytest.fixture(scope="module")
def two_rank_straight(tiny_data, tmp_path_factory):
    straight = str(tmp_path_factory.mktemp("two_rank") / "straight")
    run_distributed(
        _train_two_ranks,
        2,
        tiny_data,
        straight,
        {"output.checkpoint_every": 5, "output.keep_checkpoints": 5},
        timeout_s=300,
    )
    return straight


def test_two_rank_resume_matches_an_uninterrupted_run(tiny_data, two_rank_straight, tmp_path):
    straight, resumed = two_rank_straight, str(tmp_path / "resumed")
    start = os.path.join(straight, "checkpoints", "step_00000005")  # epoch 1, one batch in
    run_distributed(_train_two_ranks, 2, tiny_data, resumed, {"train.resume": start}, timeout_s=300)
    for rank in range(2):  # each rank's head shard, optimizer state and loader position
        assert_same_training(straight, resumed, rank)


def test_bad_checkpoints_are_errors_naming_the_file(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_config(tiny_data, out, **{"train.max_steps": 4, "output.checkpoint_every": 2}))
    step_dir = resume_candidates("auto", out)[0]
    assert step_dir.endswith("step_00000004")
    env = DistEnv(rank=0, world_size=1)
    cfg = tiny_config(tiny_data, out)
    settings = run_settings(cfg, 16)
    assert load_rank_state(step_dir, env, settings)["trainer"]["step"] == 4

    # Another world size or per-rank batch is no longer an error: rank 1 of 2 gets the second half of the classes.
    saved = load_rank_state(step_dir, env, settings)["head"]["module"]["weight"]
    resharded = load_rank_state(
        step_dir, DistEnv(rank=1, world_size=2), run_settings(tiny_config(tiny_data, out, **{"data.batch_size": 8}), 16)
    )
    assert torch.equal(resharded["head"]["module"]["weight"], saved[8:])
    with pytest.raises(CheckpointError, match=r"model.embedding_size was 64 .* but is 128 now"):
        load_rank_state(step_dir, env, run_settings(tiny_config(tiny_data, out, **{"model.embedding_size": 128}), 16))
    with pytest.raises(CheckpointError, match="num_classes was 16"):
        load_rank_state(step_dir, env, {**settings, "num_classes": 17})
    for key, value in (("optim.name", "adamw"), ("loss.name", "cosface"), ("model.backbone", "iresnet34")):
        other = run_settings(tiny_config(tiny_data, out, **{key: value}), 16)
        with pytest.raises(CheckpointError, match=rf"{key} was '\w+' in the checkpointed run but is '{value}' now"):
            load_rank_state(step_dir, DistEnv(rank=0, world_size=2), other)
    # A checkpoint of other settings is an error even for auto: the older ones were written with them too.
    with pytest.raises(CheckpointError, match="model.embedding_size was 64"):
        train(tiny_config(tiny_data, out, **{"train.resume": "auto", "model.embedding_size": 128}))

    rank_path = os.path.join(step_dir, "rank00000.pt")
    data = open(rank_path, "rb").read()
    open(rank_path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"rank00000.pt is \d+ bytes but .*manifest.json records \d+"):
        load_rank_state(step_dir, env, settings)
    with pytest.raises(CheckpointError, match="rank00000.pt"):  # named explicitly: it stops before training
        train(tiny_config(tiny_data, out, **{"train.resume": step_dir}))

    # A step directory the run never finished (no manifest) is not resumable, and `auto` ignores it.
    unfinished = os.path.join(out, "checkpoints", "step_00000006")
    os.makedirs(unfinished)
    with pytest.raises(CheckpointError, match="never completed"):
        resume_candidates(unfinished, out)
    assert resume_candidates("auto", out) == [step_dir, os.path.join(out, "checkpoints", "step_00000002")]
    with open(os.path.join(out, "checkpoints", POINTER), "w") as fh:
        fh.write("{not json")
    with pytest.raises(CheckpointError, match="latest.json: not a readable JSON file"):
        resume_candidates("auto", out)
    with pytest.raises(CheckpointError, match="no such file"):
        resume_candidates(str(tmp_path / "missing"), out)
    assert resume_candidates("auto", str(tmp_path / "fresh")) == [] and resume_candidates("", out) == []


def damage(path, how):
    """Spoil a finished checkpoint's rank file as a crash, a bad disk or a stray copy could."""
    data = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(data[: len(data) // 3])
    elif how == "garbage":  # the size the manifest records, but not a readable file
        open(path, "wb").write(bytes(len(data)))
    elif how == "manifest":  # the manifest disagrees with the file
        manifest_path = os.path.join(os.path.dirname(path), MANIFEST)
        manifest = json.load(open(manifest_path))
        manifest["files"][os.path.basename(path)] += 1
        json.dump(manifest, open(manifest_path, "w"))


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight") / "run")
    train(tiny_config(tiny_data, out, **{"output.checkpoint_every": 3}))
    return out


@pytest.mark.parametrize("how", ["truncated", "garbage", "manifest"])
def test_auto_passes_over_a_damaged_checkpoint_for_the_previous_whole_one(
    tiny_data, straight_run, tmp_path, monkeypatch, caplog, how
):
    crashed = str(tmp_path / "crashed")
    crash_after(monkeypatch, 13)  # checkpoints at steps 9 and 12 are kept (keep_checkpoints=2)
    with pytest.raises(Crash):
        train(tiny_config(tiny_data, crashed, **{"output.checkpoint_every": 3}))
    monkeypatch.undo()
    newest = os.path.join(crashed, "checkpoints", "step_00000012", "rank00000.pt")
    damage(newest, how)
    with caplog.at_level(logging.WARNING, logger="fr.train"):
        results = train(tiny_config(tiny_data, crashed, **{"output.checkpoint_every": 3, "train.resume": "auto"}))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(newest in w and "falling back to the previous checkpoint" in w for w in warnings), warnings
    assert results["steps"] == 20
    assert_same_training(straight_run, crashed)  # resumed from step 9, it ends as if never stopped


def test_auto_with_every_checkpoint_damaged_is_one_error(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train(tiny_config(tiny_data, out, **{"train.max_steps": 4, "output.checkpoint_every": 2}))
    for step in (2, 4):
        damage(os.path.join(out, "checkpoints", f"step_0000000{step}", "rank00000.pt"), "truncated")
    with pytest.raises(CheckpointError, match=r"train.resume=auto: no whole checkpoint left in .*step_00000004"):
        train(tiny_config(tiny_data, out, **{"train.resume": "auto"}))


def _crash_two_ranks(rank, world_size, data_dir, out_dir):
    original, calls = Trainer.train_step, []

    def step(self, images, labels):
        calls.append(1)
        if len(calls) > 12:  # every rank stops before step 13, as if the job were killed
            raise Crash("simulated crash")
        return original(self, images, labels)

    Trainer.train_step = step
    try:
        train(tiny_config(data_dir, out_dir, **{"output.checkpoint_every": 5}), env_from_group())
    except Crash:
        pass
    finally:
        Trainer.train_step = original


def _damaged_on_rank_1(rank, world_size, data_dir, out_dir):
    if rank == 1:  # one rank's file only: both ranks must still agree on the same checkpoint
        damage(os.path.join(out_dir, "checkpoints", "step_00000010", rank_file(1)), "truncated")
    torch.distributed.barrier()  # before any rank reads the checkpoint
    train(tiny_config(data_dir, out_dir, **{"output.checkpoint_every": 5, "train.resume": "auto"}), env_from_group())


def test_two_ranks_agree_to_fall_back_when_one_rank_file_is_damaged(tiny_data, two_rank_straight, tmp_path):
    straight, resumed = two_rank_straight, str(tmp_path / "resumed")
    run_distributed(_crash_two_ranks, 2, tiny_data, resumed, timeout_s=300)  # checkpoints at steps 5 and 10
    run_distributed(_damaged_on_rank_1, 2, tiny_data, resumed, timeout_s=300)
    for rank in range(2):
        assert_same_training(straight, resumed, rank)


class _Tiny:
    """Just enough of a Trainer for CheckpointManager.save."""

    def __init__(self, step):
        self.step = step

    def state_dict(self):
        return {"step": self.step, "epoch": 0}


def _manager(directory, keep):
    manager = CheckpointManager(os.path.dirname(directory), DistEnv(rank=0, world_size=1), keep=keep)
    manager.prepare({"num_classes": 3})
    return manager


def test_pruning_keeps_the_newest_and_leaves_newer_abandoned_ones(tmp_path):
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory, keep=2)
    os.makedirs(os.path.join(directory, "step_00000099"))  # from a run that was abandoned after a resume
    for step in (10, 20, 30):
        manager.track(trainer=_Tiny(step))
        manager.save(step)
    assert sorted(os.listdir(directory)) == [POINTER, "step_00000020", "step_00000030", "step_00000099"]
    assert json.load(open(os.path.join(directory, POINTER)))["dir"] == "step_00000030"


def test_checkpoint_cadence_and_once_per_step(tmp_path):
    directory = str(tmp_path / "checkpoints")
    every = CheckpointManager(str(tmp_path), DistEnv(), every=3, keep=10)
    per_epoch = CheckpointManager(str(tmp_path / "b"), DistEnv(), every=0, keep=10)
    for manager in (every, per_epoch):
        manager.prepare({})
        manager.track(trainer=_Tiny(0))
    assert [every.maybe_save(step) is not None for step in (1, 2, 3, 6, 7)] == [False, False, True, True, False]
    assert every.maybe_save(8, epoch_end=True) is None and per_epoch.maybe_save(8, epoch_end=True) is not None
    assert per_epoch.maybe_save(9) is None
    written = os.stat(os.path.join(directory, "step_00000006", "rank00000.pt")).st_mtime_ns
    assert every.save(6).endswith("step_00000006")  # already written at step 6: not again
    assert os.stat(os.path.join(directory, "step_00000006", "rank00000.pt")).st_mtime_ns == written


def test_a_step_directory_being_rewritten_is_not_resumable_meanwhile(tmp_path):
    """Rewriting the step directory of an abandoned run drops its manifest before any file is replaced."""
    directory = str(tmp_path / "checkpoints")
    manager = _manager(directory, keep=5)
    manager.track(trainer=_Tiny(40))
    manager.save(40)
    step_dir = os.path.join(directory, "step_00000040")

    class Dies(_Tiny):
        def state_dict(self):
            assert not os.path.exists(os.path.join(step_dir, MANIFEST))
            raise Crash("killed while writing")

    rewriting = _manager(directory, keep=5)
    rewriting.track(trainer=Dies(40))
    with pytest.raises(Crash):
        rewriting.save(40)
    with pytest.raises(CheckpointError, match="never completed"):
        resume_candidates(step_dir, str(tmp_path))


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
    assert resume_candidates("auto", stopped)[0].endswith("step_00000011")
    assert not os.path.exists(os.path.join(stopped, "results.json"))  # results.json means a finished run
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
