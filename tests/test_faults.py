"""Faults a run survives: a non-finite step is skipped and leaves no trace (bit-identical to never drawing its
batch, 1 and 2 ranks), too many in a row stop the run with the last good checkpoint kept, a loss-scaler overflow
backs off and counts, a bad batch is still an error on every rank, and a worker killed with SIGKILL at a random
step resumes (train.resume=auto, also under torchrun --max-restarts) to the very weights of an unbroken run."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fr.cli.train import main as train_main
from fr.config import OptimConfig
from fr.distributed import DistEnv, env_from_group
from fr.heads import PartialFC, build_loss, build_sparse_optimizer
from fr.train.checkpoint import POINTER, load_rank_state, rank_file, resume_candidates, run_settings
from fr.train.head import Head
from fr.train.optim import build_optimizer, build_scheduler
from fr.train.run import train
from fr.train.strategy import DDPStrategy
from fr.train.trainer import NonFiniteLossError, Trainer, TrainOptions
from tests.helpers import ROOT

D, CLASSES, B, STEPS = 8, 12, 6, 12  # embedding size, classes, per-rank batch, steps


# ------------------------------------------------------------------------- a small trainer, poisoned on purpose
class PoisonedHead(PartialFC):
    """PartialFC whose forward number n (1-based) in `nan_grad_calls` turns its weight's gradient to NaN while the
    loss stays finite: the test-only hook for the gradient-norm path (NaN losses come from NaN images)."""

    def __init__(self, *args, nan_grad_calls=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_grad_calls, self.calls, self.poison = set(nan_grad_calls), 0, False
        self.weight.register_hook(lambda grad: grad * math.nan if self.poison else grad)

    def forward(self, embeddings, labels):
        self.calls += 1
        self.poison = self.calls in self.nan_grad_calls
        return super().forward(embeddings, labels)


class Loader(list):
    def set_epoch(self, epoch):
        pass


def global_batches(world_size, rank, nan_image_steps=(), nan_rank=0):
    """STEPS batches of this rank's slice of the global batch; at `nan_image_steps` (1-based) rank `nan_rank`'s
    images hold a NaN, as a corrupt sample would."""
    batches = []
    for step in range(1, STEPS + 1):
        generator = torch.Generator().manual_seed(step)
        images = torch.randn(B * world_size, 3, 4, 4, generator=generator)
        labels = torch.randint(0, CLASSES, (B * world_size,), generator=generator)
        part = slice(rank * B, (rank + 1) * B)
        images, labels = images[part].clone(), labels[part].clone()
        if step in nan_image_steps and rank == nan_rank:
            images[0, 0, 0, 0] = math.nan
        batches.append((images, labels))
    return batches


def build_trainer(env, batches, loss="arcface", update="dense", nan_grad_calls=(), max_nonfinite_steps=20):
    """BatchNorm (running statistics) and dropout (torch's RNG) in the backbone, a sampled Partial FC (its draw
    counter), SGD with momentum and weight decay, warmup then poly decay, clipping: everything a skip must undo
    or leave alone."""
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, D)
    )
    head = PoisonedHead(
        build_loss(loss), D, CLASSES, sample_rate=0.5, env=env, seed=3, update=update, nan_grad_calls=nan_grad_calls
    )
    cfg = OptimConfig(lr=0.2, momentum=0.9, weight_decay=5e-4)
    schedule = lambda optimizer: build_scheduler(optimizer, cfg, total_steps=STEPS, warmup_steps=3)
    strategy = DDPStrategy(backbone, env, lambda groups: build_optimizer(groups, cfg), schedule)
    groups = [{"params": head.parameters()}]
    head_optimizer = build_sparse_optimizer(groups, [head], cfg) if update == "sparse" else build_optimizer(groups, cfg)
    options = TrainOptions(
        total_steps=len(batches), log_every=100, clip_grad_norm=5.0, max_nonfinite_steps=max_nonfinite_steps
    )
    return Trainer(strategy, Head(head, head_optimizer, schedule(head_optimizer)), Loader(batches), None, options)


def final_state(trainer):
    strategy, head = trainer.strategy, trainer.head
    return {
        "backbone": strategy.module.state_dict(),
        "head": head.module.state_dict(),
        "backbone_optimizer": strategy.optimizer.state_dict(),
        "head_optimizer": head.optimizer.state_dict(),
        "backbone_schedule": strategy.scheduler.state_dict(),
        "head_schedule": head.scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "skipped": trainer.state.skipped_steps,
    }


def assert_identical(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def poisoned_and_clean(world_size, rank, nan_image_steps, nan_grad_steps, nan_rank, **kwargs):
    """(the poisoned run's final state, that of a run over the same batches without the poisoned steps')."""
    env = env_from_group() if world_size > 1 else DistEnv()
    batches = global_batches(world_size, rank, nan_image_steps, nan_rank)
    poisoned = build_trainer(env, batches, nan_grad_calls=nan_grad_steps if rank == nan_rank else (), **kwargs)
    poisoned.fit()
    bad = set(nan_image_steps) | set(nan_grad_steps)
    clean = build_trainer(env, [b for step, b in enumerate(batches, 1) if step not in bad], **kwargs)
    clean.fit()
    return final_state(poisoned), final_state(clean)


@pytest.mark.parametrize("loss, update", [("arcface", "dense"), ("elastic_arc", "sparse"), ("adaface", "dense")])
def test_nan_steps_leave_weights_and_optimizer_state_as_if_their_batches_were_never_drawn(loss, update):
    grads = () if update == "sparse" else (7,)  # a sparse head's weight has no gradient to poison
    poisoned, clean = poisoned_and_clean(
        1, 0, nan_image_steps=(3, 4, 10), nan_grad_steps=grads, nan_rank=0, loss=loss, update=update
    )
    assert poisoned.pop("skipped") == 3 + len(grads) and clean.pop("skipped") == 0
    assert_identical(poisoned, clean)
    assert poisoned["backbone_schedule"]["last_epoch"] == STEPS - 3 - len(grads)  # the schedule waited too


def _two_ranks(rank, world_size):
    poisoned, clean = poisoned_and_clean(world_size, rank, nan_image_steps=(3,), nan_grad_steps=(6,), nan_rank=1)
    assert poisoned.pop("skipped") == 2 and clean.pop("skipped") == 0
    assert_identical(poisoned, clean, f"rank {rank}")
    return True


def test_over_two_ranks_a_nan_on_one_rank_skips_the_step_on_both(run_distributed):
    """Rank 1 alone gets a NaN image (step 3) and a NaN head gradient (step 6: rank 0's gradients are finite);
    both ranks skip both steps and end as a run without those batches."""
    assert run_distributed(_two_ranks, 2) == [True, True]


def test_a_strategy_that_skips_its_update_keeps_the_head_and_the_schedule_in_step(caplog):
    """The seam for loss scaling (fp16 GradScaler, DeepSpeed): when the strategy reports its update was not
    applied, the head does not step either, nothing else changes, and the step is counted and logged."""
    batches = global_batches(1, 0)
    scaled = build_trainer(DistEnv(), batches)
    strategy_step, calls = scaled.strategy.step, []

    def overflow_at_step_4():
        calls.append(1)
        if len(calls) == 4:
            strategy.skip()
            return False
        return strategy_step()

    strategy = scaled.strategy
    strategy.step = overflow_at_step_4
    with caplog.at_level("WARNING", logger="fr.train"):
        scaled.fit()
    clean = build_trainer(DistEnv(), batches[:3] + batches[4:])
    clean.fit()
    a, b = final_state(scaled), final_state(clean)
    assert a.pop("skipped") == 1 and b.pop("skipped") == 0
    assert_identical(a, b)
    assert any("step 4 skipped, no update: the loss scaler found an overflow" in r.getMessage() for r in caplog.records)


def test_a_gradscaler_backs_off_on_a_skipped_step():
    """With loss scaling on (fp16's GradScaler, here on the CPU), a step whose head gradient is not finite is
    skipped and the scale halves, as the scaler does for its own overflows; the next steps train."""
    batches = global_batches(1, 0)
    trainer = build_trainer(DistEnv(), batches[:4], nan_grad_calls=(2,))
    trainer.strategy.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer.fit()
    assert trainer.state.skipped_steps == 1 and trainer.strategy.scaler.get_scale() == 2.0**15
    assert trainer.strategy.scheduler.last_epoch == trainer.head.scheduler.last_epoch == 3
    assert all(torch.isfinite(p).all() for p in trainer.strategy.module.parameters())


def test_max_nonfinite_steps_in_a_row_stop_the_trainer():
    batches = global_batches(1, 0, nan_image_steps=(2, 3, 5, 6, 7))
    trainer = build_trainer(DistEnv(), batches, max_nonfinite_steps=3)
    with pytest.raises(
        NonFiniteLossError,
        match=r"the loss became nan at step 7; steps 5 to 7 were all skipped "
        r"\(train.max_nonfinite_steps=3\)",
    ):
        trainer.fit()
    assert trainer.state.skipped_steps == 5  # steps 2 and 3 were a shorter streak


# ------------------------------------------------------------------------- the head's batch check, deferred
def _late_bad_labels(rank, world_size):
    env = env_from_group()
    head = PartialFC(build_loss("cosface"), D, CLASSES, env=env)
    embeddings = torch.randn(B, D)
    labels = torch.zeros(B, dtype=torch.long)
    head(embeddings, labels)
    head(embeddings, labels + (CLASSES if rank == 1 else 0))  # reported at the next forward, not waited for
    errors = []
    try:
        head(embeddings, labels)
    except ValueError as exc:
        errors.append(str(exc))
    head(embeddings, labels + (CLASSES if rank == 1 else 0))
    try:
        head.check_last_batch()  # what the trainer calls after its last step
    except ValueError as exc:
        errors.append(str(exc))
    return errors


def test_a_bad_batch_after_the_first_is_still_an_error_on_every_rank(run_distributed):
    for errors in run_distributed(_late_bad_labels, 2):
        assert len(errors) == 2 and all(f"num_classes={CLASSES}), got [0, {CLASSES}]" in e for e in errors)


def test_the_trainer_checks_the_last_batch_before_it_finishes():
    batches = global_batches(1, 0)[:3]
    batches[2] = (batches[2][0], batches[2][1] + CLASSES)
    with pytest.raises(ValueError, match=f"labels must lie in \\[0, num_classes={CLASSES}\\)"):
        build_trainer(DistEnv(), batches).fit()


# ------------------------------------------------------------------------- whole runs
def test_max_nonfinite_steps_stop_the_run_with_the_last_good_checkpoint_loadable(
    tiny_run, tmp_path, monkeypatch, capsys
):
    forward, calls = PartialFC.forward, []

    def nan_from_call_6(self, *args):
        calls.append(1)
        loss = forward(self, *args)
        return loss * math.nan if len(calls) >= 6 else loss

    monkeypatch.setattr(PartialFC, "forward", nan_from_call_6)
    out = str(tmp_path / "run")
    settings = {
        "train.max_steps": 20,
        "output.checkpoint_every": 2,
        "train.max_nonfinite_steps": 3,
        "eval.every": 0,
        "eval.at_start": "false",
        "output.tensorboard": "false",
    }
    assert train_main(tiny_run.argv(out, **settings)) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("fr-train: error: the loss became nan at step 8; steps 6 to 8 were all skipped")
        and "\n" not in err
    ), err
    assert not os.path.exists(os.path.join(out, "model.pt"))
    monkeypatch.undo()
    # The newest checkpoint (step 6: five updates, the loader past step 6) is whole, finite and resumes.
    step_dir = resume_candidates("auto", out)[0]
    assert step_dir.endswith("step_00000006")
    state = load_rank_state(step_dir, DistEnv(), run_settings(tiny_run.config(out, **settings), 16))
    assert state["trainer"]["skipped_steps"] == 1 and state["strategy"]["scheduler"]["last_epoch"] == 5
    assert all(torch.isfinite(v).all() for v in state["strategy"]["model"].values() if v.is_floating_point())
    results = train(tiny_run.config(out, **{**settings, "train.resume": "auto"}))
    assert results["steps"] == 20 and results["skipped_steps"] == 1 and math.isfinite(results["final_loss"])


KILL_RUN = {
    "train.max_steps": 24,
    "output.checkpoint_every": 3,
    "output.keep_checkpoints": 2,
    "train.threads": 1,
    "train.log_every": 1,
    "eval.every": 0,
    "eval.at_start": "false",
    "output.tensorboard": "false",
    "partial_fc.sample_rate": 0.5,
    "optim.warmup_epochs": 0.5,
}


TORCHRUN_RUN = {"data.batch_size": 8}  # 2 ranks x 8: the global batch of the one-process run


def child_env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    )


def wait_for_checkpoint(out_dir, step, proc, timeout_s=240):
    """Poll latest.json until it names a step >= `step`; False if the process ended first."""
    pointer, deadline = os.path.join(out_dir, "checkpoints", POINTER), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if json.load(open(pointer))["step"] >= step:
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"no checkpoint of step {step} in {timeout_s} s")


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def assert_same_run(a_dir, b_dir, world_size):
    for rank in range(world_size):
        a, b = [
            torch.load(
                os.path.join(d, "checkpoints", f"step_{KILL_RUN['train.max_steps']:08d}", rank_file(rank)),
                weights_only=True,
            )
            for d in (a_dir, b_dir)
        ]
        for part in ("strategy", "head", "loader"):
            assert_identical(a[part], b[part], f"rank {rank} {part}")
        assert a["trainer"]["history"]["loss"] == b["trainer"]["history"]["loss"]
    assert open(os.path.join(a_dir, "model.pt"), "rb").read() == open(os.path.join(b_dir, "model.pt"), "rb").read()


def kill_point():
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    return (
        seed,
        rng.randrange(3, KILL_RUN["train.max_steps"] - 4),
        rng.uniform(0.0, 0.2),
    )  # after the checkpoint of this step, this long


def _straight(rank, world_size, tiny_run, out_dir, settings):
    train(tiny_run.config(out_dir, **settings), env_from_group())


@pytest.fixture(scope="module")
def straight_runs(tiny_run, tmp_path_factory, run_distributed):
    """Unbroken reference runs with the killed runs' settings: {1: one process, 2: two gloo ranks}. Forked
    from the tests' fork server, not launched through fr-train and torchrun as the killed runs are (a launch
    costs seconds of imports): the launcher does not enter the weights, so the runs must agree bit for bit."""
    base = tmp_path_factory.mktemp("straight")
    one, two = str(base / "one"), str(base / "two")
    run_distributed(_straight, 1, tiny_run, one, KILL_RUN, timeout_s=300)
    run_distributed(_straight, 2, tiny_run, two, {**KILL_RUN, **TORCHRUN_RUN}, timeout_s=300)
    return {1: one, 2: two}


def torchrun(tiny_run, out_dir, restarts):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        "-m",
        "fr.cli.train",
    ] + tiny_run.argv(out_dir, **{**KILL_RUN, **TORCHRUN_RUN, "train.resume": "auto"})


def test_sigkill_at_a_random_step_then_resume_auto_ends_bitwise_equal(tiny_run, straight_runs, tmp_path):
    seed, step, delay = kill_point()
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "fr.cli.train"] + tiny_run.argv(out, **{**KILL_RUN, "train.resume": "auto"})
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for_checkpoint(out, step, proc), f"the run ended before the kill (seed {seed})"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before the kill (seed {seed})"
    resumed = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, f"seed {seed}: " + resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_same_run(straight_runs[1], out, 1)


def test_torchrun_restarts_a_killed_worker_and_the_run_ends_bitwise_equal(tiny_run, straight_runs, tmp_path):
    """`torchrun --max-restarts=1 ... train.resume=auto`: one worker SIGKILLed at a random step; torchrun stops
    the other and starts both again, which continue from the newest whole checkpoint."""
    seed, step, delay = kill_point()
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(
        torchrun(tiny_run, out, restarts=1),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert wait_for_checkpoint(out, step, proc), f"the run ended before the kill (seed {seed})"
    time.sleep(delay)
    workers = children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(random.Random(seed).choice(workers), signal.SIGKILL)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"seed {seed}: " + output[-3000:]
    assert "resumed from" in output, f"seed {seed}: no restart seen: " + output[-3000:]
    assert_same_run(straight_runs[2], out, 2)
