"""Checkpoints across world sizes: a run resumed under another number of ranks starts with every class centre
and its optimizer rows on the rank that owns them, the backbone, its optimizer and the counters restored;
fr-export's merged state equals an independent merge of the rank files, its model.pt equals the run's own, and
broken checkpoints are one-line errors naming the file."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fr.cli.export import main as export_main
from fr.distributed import env_from_group
from fr.train.checkpoint import CheckpointManager
from fr.train.model_file import load_state_dict_file
from fr.train.run import train

STEPS = {
    "train.max_steps": 4,
    "train.log_every": 1,
    "eval.every": 0,
    "eval.at_start": "false",
    "output.tensorboard": "false",
    "output.checkpoint_every": 2,
    "output.keep_checkpoints": 2,
    "partial_fc.sample_rate": 0.5,
}


def _train(rank, world_size, tiny_run, out_dir, extra):
    train(tiny_run.config(out_dir, **{**STEPS, **extra}), env_from_group())


IMAGES = 128  # the tiny data set: 16 identities x 8 images, 16 images per rank and step


@pytest.fixture(scope="module")
def two_rank_run(tiny_run, tmp_path_factory, run_distributed):
    out = str(tmp_path_factory.mktemp("reshard") / "two")
    run_distributed(_train, 2, tiny_run, out, {}, timeout_s=300)
    return out


def rank_files(step_dir):
    names = sorted(name for name in os.listdir(step_dir) if name.startswith("rank") and name.endswith(".pt"))
    return [torch.load(os.path.join(step_dir, name), weights_only=True) for name in names]


def independent_merge(step_dir):
    """The head's rows in class order: rank files concatenated in rank order (the shards are contiguous)."""
    states = rank_files(step_dir)
    heads = [state["head"] for state in states]
    merged = {"head_weight": torch.cat([head["module"]["weight"] for head in heads])}
    for saved, name in (
        ("momentum_buffer", "head_momentum"),
        ("exp_avg", "head_exp_avg"),
        ("exp_avg_sq", "head_exp_avg_sq"),
    ):
        if saved in heads[0]["optimizer"]["state"][0]:
            merged[name] = torch.cat([head["optimizer"]["state"][0][saved] for head in heads])
    return states, merged


def export(capsys, *argv):
    status = export_main(list(argv))
    return status, capsys.readouterr().err.strip()


def test_export_checkpoint_equals_an_independent_merge_of_the_rank_files(two_rank_run, tmp_path, capsys):
    step_dir = os.path.join(two_rank_run, "checkpoints", "step_00000004")
    states, expected = independent_merge(step_dir)
    assert [state["head"]["module"]["weight"].shape[0] for state in states] == [8, 8]  # 16 classes over 2 ranks
    out = str(tmp_path / "merged.pt")
    assert export(capsys, "checkpoint", two_rank_run, "--out", out)[0] == 0
    merged = torch.load(out, weights_only=True)
    assert set(merged) == {"backbone", "head_weight", "head_momentum", "step", "epoch", "config"}
    assert merged["head_weight"].shape == (16, 64)
    for key, tensor in expected.items():
        assert torch.equal(merged[key], tensor), key
    # The backbone is rank 0's, as in model.pt: DDP keeps the weights equal on every rank, BatchNorm's running
    # statistics are each rank's own.
    backbone = states[0]["strategy"]["model"]
    assert merged["backbone"].keys() == backbone.keys()
    assert all(torch.equal(merged["backbone"][k], v) for k, v in backbone.items())
    assert (merged["step"], merged["epoch"]) == (4, states[0]["trainer"]["epoch"])
    assert merged["config"] == json.load(open(os.path.join(two_rank_run, "config.json")))

    # A step directory names that checkpoint, not the newest.
    earlier = str(tmp_path / "step2.pt")
    assert (
        export(capsys, "checkpoint", os.path.join(two_rank_run, "checkpoints", "step_00000002"), "--out", earlier)[0]
        == 0
    )
    _, expected = independent_merge(os.path.join(two_rank_run, "checkpoints", "step_00000002"))
    second = torch.load(earlier, weights_only=True)
    assert second["step"] == 2 and torch.equal(second["head_weight"], expected["head_weight"])
    assert not torch.equal(second["head_weight"], merged["head_weight"])


def test_export_model_equals_the_runs_model_file(two_rank_run, tmp_path, capsys):
    out = str(tmp_path / "model.pt")
    assert export(capsys, "model", os.path.join(two_rank_run, "checkpoints"), "--out", out)[0] == 0
    exported = load_state_dict_file(out)  # read as any model.pt, fr's or insightface's
    final = torch.load(os.path.join(two_rank_run, "model.pt"), weights_only=True)  # written after step 4
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], v) for k, v in final.items())


ADAMW = {"optim.name": "adamw", "optim.lr": 0.001, "optim.weight_decay": 0.05}


@pytest.fixture(scope="module")
def one_rank_adamw_run(tiny_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reshard") / "one")
    train(tiny_run.config(out, **{**STEPS, **ADAMW}))
    return out


@pytest.fixture(scope="module")
def three_rank_run(tiny_run, tmp_path_factory, run_distributed):
    out = str(tmp_path_factory.mktemp("reshard") / "three")
    run_distributed(_train, 3, tiny_run, out, {}, timeout_s=300)
    return out


def test_export_checkpoint_of_an_adamw_run_has_both_moments(one_rank_adamw_run, tmp_path, capsys):
    out_dir = one_rank_adamw_run
    _, expected = independent_merge(os.path.join(out_dir, "checkpoints", "step_00000004"))
    out = str(tmp_path / "merged.pt")
    assert export(capsys, "checkpoint", out_dir, "--out", out)[0] == 0
    merged = torch.load(out, weights_only=True)
    assert set(merged) == {"backbone", "head_weight", "head_exp_avg", "head_exp_avg_sq", "step", "epoch", "config"}
    for key, tensor in expected.items():
        assert torch.equal(merged[key], tensor), key


def test_broken_checkpoints_are_one_line_errors(two_rank_run, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(two_rank_run, run)
    step_dir = os.path.join(run, "checkpoints", "step_00000004")
    out = str(tmp_path / "out.pt")
    rank1 = os.path.join(step_dir, "rank00001.pt")
    data = open(rank1, "rb").read()

    open(rank1, "wb").write(data[: len(data) // 2])
    status, err = export(capsys, "checkpoint", run, "--out", out)
    assert status == 2 and "\n" not in err
    assert err.startswith("fr-export: error: ") and f"{rank1} is {len(data) // 2} bytes but" in err
    open(rank1, "wb").write(bytes(len(data)))  # the recorded size, unreadable content
    status, err = export(capsys, "checkpoint", run, "--out", out)
    assert status == 2 and "\n" not in err and f"{rank1}: not a readable checkpoint" in err
    os.remove(rank1)
    status, err = export(capsys, "checkpoint", run, "--out", out)
    assert status == 2 and f"{rank1} is missing" in err
    assert not os.path.exists(out)
    # model.pt needs only rank 0's file
    assert export(capsys, "model", run, "--out", out)[0] == 0

    os.remove(os.path.join(step_dir, "manifest.json"))  # a checkpoint the run never finished
    status, err = export(capsys, "model", step_dir, "--out", out)
    assert status == 2 and "\n" not in err and "never completed" in err
    status, err = export(capsys, "checkpoint", str(tmp_path / "missing"), "--out", out)
    assert status == 2 and "missing: no such file or directory" in err


def _resume(rank, world_size, tiny_run, out_dir, start, extra):
    """Resume from `start` under `world_size` ranks; what each part holds right after loading, before any step."""
    captured = {}
    load = CheckpointManager.load

    def load_and_capture(manager):
        restored = load(manager)
        head, strategy = manager.parts["head"], manager.parts["strategy"]
        captured.update(
            range=(head.module.class_start, head.module.num_local),
            weight=head.module.weight.detach().clone(),
            head_optimizer=copy.deepcopy(head.optimizer.state_dict()),
            head_scheduler=head.scheduler.state_dict(),
            sample_step=head.module.sample_step,
            strategy=copy.deepcopy(strategy.state_dict()),
            trainer=manager.parts["trainer"].state_dict(),
            loader=manager.parts["loader"].state_dict(),
        )
        return restored

    CheckpointManager.load = load_and_capture  # this spawned process only
    results = train(tiny_run.config(out_dir, **{**STEPS, **extra, "train.resume": start}), env_from_group())
    return captured, results.get("steps")  # the results are the main rank's


def split(num_classes, world):
    """Contiguous class ranges, the first num_classes % world ranks one class more (written out independently)."""
    sizes = [num_classes // world + (1 if r < num_classes % world else 0) for r in range(world)]
    return [(sum(sizes[:r]), sizes[r]) for r in range(world)]


@pytest.mark.parametrize("source, world", [("two", 1), ("one", 2), ("two", 3), ("three", 2)])
def test_resume_under_another_world_size_reshards_the_head(source, world, request, tiny_run, tmp_path, run_distributed):
    run = request.getfixturevalue(
        {"one": "one_rank_adamw_run", "two": "two_rank_run", "three": "three_rank_run"}[source]
    )
    extra = ADAMW if source == "one" else {}
    start = os.path.join(run, "checkpoints", "step_00000002")
    states, merged = independent_merge(start)
    saved_world = len(states)
    saved = states[0]
    out = str(tmp_path / "resumed")
    if world == 1:  # in this process: restore the real CheckpointManager.load afterwards
        try:
            results = [_resume(0, 1, tiny_run, out, start, extra)]
        finally:
            CheckpointManager.load = LOAD
    else:
        results = run_distributed(_resume, world, tiny_run, out, start, extra, timeout_s=300)
    assert [captured["range"] for captured, _ in results] == split(16, world)
    row_state = {"momentum_buffer": "head_momentum", "exp_avg": "head_exp_avg", "exp_avg_sq": "head_exp_avg_sq"}
    assert any(key in merged for key in row_state.values())
    old_offset, new_batch = saved["loader"]["offset"], 16 * world
    assert results[0][1] == 4  # the run goes on to its end
    for captured, _ in results:
        first, count = captured["range"]
        assert torch.equal(captured["weight"], merged["head_weight"][first : first + count])
        head_state = captured["head_optimizer"]["state"][0]
        for name, key in row_state.items():
            assert (name in head_state) == (key in merged), name
            if key in merged:
                assert torch.equal(head_state[name], merged[key][first : first + count]), name
        saved_head = saved["head"]["optimizer"]
        if "step" in head_state:  # AdamW's step count: the same on every rank
            assert torch.equal(head_state["step"], saved_head["state"][0]["step"])
        assert captured["head_optimizer"]["param_groups"] == saved_head["param_groups"]
        assert captured["head_scheduler"] == saved["head"]["scheduler"]
        assert captured["sample_step"] == saved["head"]["module"]["_extra_state"]["sample_step"]
        for part in ("model", "optimizer"):  # the backbone and its optimizer: rank 0's
            assert_equal_nested(captured["strategy"][part], saved["strategy"][part])
        assert captured["strategy"]["scheduler"] == saved["strategy"]["scheduler"]
        assert (captured["trainer"]["step"], captured["trainer"]["epoch"]) == (2, saved["trainer"]["epoch"])
        # The loader continues at the first new global batch at or after the saved global sample offset.
        batches = IMAGES // new_batch
        assert captured["loader"]["epoch"] == saved["loader"]["epoch"]
        assert captured["loader"]["offset"] == min(-(-old_offset // new_batch), batches) * new_batch
    assert saved_world != world


def assert_equal_nested(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_nested(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_equal_nested(x, y)
    else:
        assert a == b


LOAD = CheckpointManager.load


MEASURE = """
import json, sys, torch
from fr.distributed import DistEnv
from fr.train.checkpoint import read_manifest, reshard_rank_state

def status(field):  # MiB, from /proc/self/status
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024

before = status("VmRSS")
state = reshard_rank_state(sys.argv[1], read_manifest(sys.argv[1]), DistEnv(rank=3, world_size=4))
head = state["head"]
print(json.dumps({"peak_mib": status("VmHWM") - before, "first_rows": head["module"]["weight"][:, 0].tolist(),
                  "momentum": head["optimizer"]["state"][0]["momentum_buffer"][:, 0].tolist()}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS and VmHWM from /proc")
def test_resharding_reads_only_the_rows_it_needs(tmp_path):
    """2 saved shards of 50,000 x 128 rows (weight and momentum: 48.8 MiB a file) loaded as rank 3 of 4: the
    resident peak is the new shard (2 x 25,000 rows, 24.4 MiB) plus the mapped pages of the rows it copies, well
    under the 122 MiB of reading the two files it opens (rank 0's, for the other state, and rank 1's)."""
    classes, dim = 100_000, 128
    files = {}
    for rank in range(2):
        rows = torch.arange(rank * classes // 2, (rank + 1) * classes // 2, dtype=torch.float32)
        rows = rows[:, None].expand(-1, dim).contiguous()
        state = {
            "format": 2,
            "trainer": {"step": 5},
            "strategy": {},
            "rng": {},
            "head": {
                "module": {"weight": rows, "_extra_state": {"sample_step": 5}},
                "optimizer": {"state": {0: {"momentum_buffer": -rows}}, "param_groups": [{"params": [0]}]},
                "scheduler": {},
            },
        }
        path = tmp_path / f"rank{rank:05d}.pt"
        torch.save(state, path)
        files[path.name] = os.path.getsize(path)
    manifest = {"format": 2, "step": 5, "world_size": 2, "files": files, "settings": {"num_classes": classes}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path)], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first_rows"] == list(range(75_000, 100_000))
    assert result["momentum"] == [-x for x in range(75_000, 100_000)]
    shard_mib = 2 * 25_000 * dim * 4 / 2**20
    assert result["peak_mib"] < 2.5 * shard_mib, result["peak_mib"]
