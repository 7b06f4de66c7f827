"""fr-sweep on a local Ray instance (CPU): one sweep of 4 two-worker trials shared by every check.

The sweep searches ArcFace's scale s over [2, 64, 64, 64] with ASHA on train/loss: s=2 gives a far lower loss
than s=64 (the cross entropy grows with the logit scale), so the first trial sets the bar and ASHA must stop
the next s=64 trials at their first rung. The first trial's rank-1 worker deletes the trial's checkpoints
and SIGKILLs itself at step 3, once Ray has registered the checkpoint of step 2: the restarted workers can
only continue from that one. When the third trial ends, a Tune callback in this process sends it SIGINT
(as Ctrl-C would), which interrupts the sweep before the fourth trial exists; `fr-sweep --resume` then
finishes it. Each trial start costs ~45 CPU-s of process start-ups and imports on 2 cores (8 Ray processes),
so the scenario starts four trials and restarts one.
"""

import importlib.util
import json
import os
import shutil
import signal
import sys
import time

import pytest
import torch

from fr.sweep.spec import load_sweep
from fr.sweep.trial import TRAIN_STORAGE
from tests.helpers import ROOT

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # a killed worker and a finished run are seen sooner
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",  # a busy 2-core machine starts processes slowly
    "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
}
STEPS, EVERY = 6, 2
SCALES = [2.0, 64.0, 64.0, 64.0]


def _once(marker: str, text: str) -> bool:
    """Create `marker` holding `text`; False when it exists already (the action was taken before)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, text.encode())
    os.close(fd)
    return True


class KillWorkerOnce:
    """At `step` of the first trial to reach it, once Ray has registered the checkpoint reported at `step - 1`,
    rank 1 removes the trial's checkpoints (as if its node's disk were gone) and SIGKILLs its own process."""

    def __init__(self, marker: str, step: int):
        self.marker, self.step = marker, step

    def on_step_end(self, trainer, step):
        if step == self.step and trainer.env.rank == 1 and _once(self.marker, trainer.checkpoints.directory):
            wait_for_registered_checkpoint(trainer.checkpoints.directory, step - 1)
            shutil.rmtree(trainer.checkpoints.directory, ignore_errors=True)
            os.kill(os.getpid(), signal.SIGKILL)


def wait_for_registered_checkpoint(checkpoints: str, step: int, timeout: float = 120.0) -> None:
    """Ray Train's controller registers a reported checkpoint when it next polls the workers, and then writes
    its snapshot (Ray's file name) into the trial's storage (<output>/ray_train/<trial>); wait for `step`'s."""
    trial_dir = os.path.dirname(checkpoints)
    snapshot = os.path.join(
        os.path.dirname(os.path.dirname(trial_dir)),
        TRAIN_STORAGE,
        os.path.basename(trial_dir),
        "checkpoint_manager_snapshot.json",
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(snapshot, encoding="utf-8") as fh:
                if json.load(fh)["latest_checkpoint_result"]["metrics"]["step"] >= step:
                    return
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet, or caught mid-write
        time.sleep(0.2)
    raise AssertionError(f"Ray registered no checkpoint of step {step} in {snapshot} within {timeout:g} s")


def interrupt_after_trials(marker: str, count: int):
    """A Tune callback (it runs in the sweep's driver, this process) that sends SIGINT to the driver when the
    `count`-th trial ends: Tune stops the sweep there, before the searcher has made the next trial."""
    from ray.tune import Callback

    class InterruptAfterTrials(Callback):
        def __init__(self):
            self.ended = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended += 1
            if self.ended == count and _once(marker, trial.trial_id):
                os.kill(os.getpid(), signal.SIGINT)

    return InterruptAfterTrials()


class RecordStarts:
    """Appends `<trial> <first step>` for every start of a trial's rank 0 (a restart after a failure too)."""

    def __init__(self, path: str):
        self.path, self.seen = path, False

    def on_step_end(self, trainer, step):
        if trainer.env.rank == 0 and not self.seen:
            self.seen = True
            trial = os.path.basename(os.path.dirname(trainer.checkpoints.directory))
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(f"{trial} {step}\n")


def sweep_file(tmp, data, out, workers=2):
    text = f"""
base: {os.path.join(ROOT, "configs", "synthetic.py")}
overrides:
  data.root: {data}
  data.synth: {{identities: 20, per_identity: 6, holdout_identities: 12, pairs: 40, workers: 1}}
  data.batch_size: 16
  data.num_workers: 0
  model.kwargs: {{width: 16, stem_stride: 2}}
  model.embedding_size: 32
  optim.warmup_epochs: 0
  train.max_steps: {STEPS}
  train.log_every: 2
  eval.every: {EVERY}
  eval.at_start: false
  eval.batch_size: 40
space:
  loss.params.s: {{grid: {SCALES}}}
metric: train/loss
mode: min
scheduler: {{name: asha, grace_period: 2, reduction_factor: 2}}
max_concurrent_trials: 1
max_failures: 1
resources: {{cpu: 1, workers: {workers}}}
output: {out}
"""
    path = os.path.join(tmp, f"sweep_{workers}.yaml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (4 logical CPUs) for the module. It keeps its dashboard: Ray Train's placement
    group cleaner needs the State API to free a finished trial's CPUs."""
    if importlib.util.find_spec("aiohttp") is None:
        pytest.fail(
            "Ray Train needs the dashboard's State API to free stopped trials' CPUs: pip install \"ray[default]\""
        )
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)
    import ray

    ray.init(num_cpus=4, log_to_driver=False)
    yield ray
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def config_mtimes(out):
    trials = os.path.join(out, "trials")
    return {
        name: os.stat(os.path.join(trials, name, "config.json")).st_mtime_ns
        for name in sorted(os.listdir(trials))
        if os.path.isfile(os.path.join(trials, name, "config.json"))
    }


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory):
    """The interrupted sweep, then its resumption through the command line; what each phase left."""
    from fr.cli.sweep import main
    from fr.sweep.runner import run_sweep

    tmp = str(tmp_path_factory.mktemp("sweep"))
    out, starts = os.path.join(tmp, "out"), os.path.join(tmp, "starts.txt")
    path = sweep_file(tmp, os.path.join(tmp, "data"), out)
    listeners = [RecordStarts(starts), KillWorkerOnce(os.path.join(tmp, "killed"), step=3)]
    interrupt = interrupt_after_trials(os.path.join(tmp, "interrupted"), count=3)
    first = run_sweep(load_sweep(path), listeners=listeners, echo=lambda text: None, callbacks=[interrupt])
    before = config_mtimes(out)
    code = main([path, "--resume"])
    with open(starts) as fh:
        started = [line.split() for line in fh.read().split("\n") if line]
    return {
        "tmp": tmp,
        "out": out,
        "path": path,
        "first": first,
        "before": before,
        "after": config_mtimes(out),
        "starts": started,
        "resume_code": code,
        "killed": open(os.path.join(tmp, "killed")).read(),
        "interrupted": open(os.path.join(tmp, "interrupted")).read(),
    }


def rows_by_trial(out):
    with open(os.path.join(out, "sweep_results.json")) as fh:
        return {row["trial"]: row for row in json.load(fh)["trials"]}


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep):
    first = sweep["first"]
    # Interrupted when the 3rd trial ended: three trials finished, the 4th not yet made.
    assert first.interrupted
    assert [row.status for row in first.rows] == ["completed", "stopped early", "stopped early"]
    assert sweep["interrupted"] == first.rows[-1].trial
    assert sweep["resume_code"] == 0
    finished_before = [row.trial for row in first.rows]
    # config.json is rewritten whenever a trial starts: no finished trial ran again.
    assert {t: sweep["after"][t] for t in finished_before} == sweep["before"]
    rows = rows_by_trial(sweep["out"])
    assert len(rows) == 4 and all(row["status"] in ("completed", "stopped early") for row in rows.values())
    (added,) = set(rows) - set(finished_before)
    assert added in sweep["after"] and added not in sweep["before"]


def test_asha_stops_weak_trials_early_and_the_best_config_trains(sweep, tmp_path):
    rows = rows_by_trial(sweep["out"])
    by_scale = sorted(rows.values(), key=lambda row: row["trial"])
    assert [row["params"]["loss.params.s"] for row in by_scale] == SCALES
    # s=2's loss is far below s=64's: at ASHA's first rung (step 2) the 2nd trial is below the 1st and the
    # 3rd below their mean, so both stop. The 4th runs after --resume against the rungs Tune restored.
    assert [row["status"] for row in by_scale[:3]] == ["completed", "stopped early", "stopped early"]
    assert [row["steps"] for row in by_scale[:3]] == [STEPS, 2, 2]
    assert by_scale[0]["value"] < min(row["value"] for row in by_scale[1:])
    out = sweep["out"]
    with open(os.path.join(out, "sweep_results.csv")) as fh:
        lines = fh.read().splitlines()
    assert lines[0].startswith("trial,status,steps,total_steps,train/loss") and len(lines) == 5
    with open(os.path.join(out, "sweep_metric.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    for row in by_scale:
        events = os.listdir(os.path.join(row["output"], "tensorboard"))
        assert any(name.startswith("events.out.tfevents.") for name in events)
    # best_config.json is the best trial's resolved config, retrained into <output>/best.
    from fr.cli.train import main as fr_train
    from fr.config import load_file

    best = os.path.join(out, "best_config.json")
    cfg = load_file(best)
    assert cfg.loss.params["s"] == 2.0 and cfg.output.dir == os.path.join(out, "best") and not cfg.train.resume
    assert fr_train([best, "train.max_steps=2", "eval.every=0"]) == 0
    with open(os.path.join(out, "best", "results.json")) as fh:
        assert json.load(fh)["steps"] == 2


def test_killed_worker_resumes_from_the_checkpoint_reported_to_ray(sweep):
    killed_trial = os.path.basename(os.path.dirname(sweep["killed"]))
    starts = [int(step) for trial, step in sweep["starts"] if trial == killed_trial]
    # First start at step 1; after the kill at step 3 (its checkpoints deleted), Ray's copy of step 2.
    assert starts == [1, 3]
    row = rows_by_trial(sweep["out"])[killed_trial]
    assert row["status"] == "completed" and [step for step, _ in row["history"]] == list(range(EVERY, STEPS + 1, EVERY))


def test_two_worker_trial_shards_the_head_over_both_workers(sweep):
    row = min(rows_by_trial(sweep["out"]).values(), key=lambda row: row["trial"])
    run = row["output"]
    with open(os.path.join(run, "results.json")) as fh:
        assert json.load(fh)["world_size"] == 2
    with open(os.path.join(run, "checkpoints", "latest.json")) as fh:
        step_dir = os.path.join(run, "checkpoints", json.load(fh)["dir"])
    with open(os.path.join(step_dir, "manifest.json")) as fh:
        manifest = json.load(fh)
    classes = manifest["settings"]["num_classes"]
    assert manifest["world_size"] == 2 and classes == 20
    shards = [torch.load(os.path.join(step_dir, f"rank{r:05d}.pt"), weights_only=True) for r in range(2)]
    rows = [shard["head"]["module"]["weight"].shape[0] for shard in shards]
    assert rows == [10, 10]  # each worker holds half of the 20 class centres


def test_resources_the_cluster_lacks_fail_before_any_trial(ray_local, tmp_path, capsys):
    from fr.cli.sweep import main

    out = str(tmp_path / "out")
    path = sweep_file(str(tmp_path), str(tmp_path / "data"), out, workers=5)
    assert main([path]) == 2
    err = capsys.readouterr().err
    assert "resources: a trial needs 5.01 CPU" in err and err.count("\n") == 1
    assert not os.path.exists(os.path.join(out, "trials"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
