"""End to end: fr-train on a tiny synthetic set, single process and under torchrun with 2 gloo ranks."""

import json
import os
import subprocess
import sys

import torch

from fr.cli.train import main as train_main
from fr.config import load_file
from fr.models import build_backbone


def check_run_outputs(out_dir, expect_world):
    results = json.load(open(os.path.join(out_dir, "results.json")))
    assert results["steps"] == 6 and results["world_size"] == expect_world
    assert set(results["verification"]) == {"synthetic_val"}
    assert 0.0 <= results["verification"]["synthetic_val"]["accuracy"] <= 1.0
    assert "synthetic_val" in results["verification_untrained"]
    environment = results["environment"]  # what a bitwise-reproducible figure depends on
    assert environment["threads"] >= 1 and environment["torch"] == torch.__version__
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    cfg = load_file(os.path.join(out_dir, "config.json"))
    state = torch.load(os.path.join(out_dir, "model.pt"), map_location="cpu", weights_only=True)
    model = build_backbone(cfg.model.backbone, num_features=cfg.model.embedding_size, **cfg.model.kwargs)
    model.load_state_dict(state, strict=True)  # as insightface users load model.pt
    events = os.listdir(os.path.join(out_dir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in events)
    return results


def test_single_process_training_writes_checkpoint_and_results(tiny_run, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    assert train_main(tiny_run.argv(out_dir)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["trained"]) == set(summary["untrained"]) == {"synthetic_val"}
    results = check_run_outputs(out_dir, expect_world=1)
    assert results["num_classes"] == 16 and results["num_images"] == 128
    losses = results["history"]["loss"]
    assert [step for step, _ in losses] == [2, 4, 6]
    assert losses[-1][1] < losses[0][1]  # it learns: the loss falls within six steps
    # the second run reuses the cached data set (same recipe), rather than rendering it again
    mtime = os.path.getmtime(os.path.join(tiny_run.data, "train.rec"))
    assert train_main(tiny_run.argv(str(tmp_path / "again"), **{"train.max_steps": 1})) == 0
    assert os.path.getmtime(os.path.join(tiny_run.data, "train.rec")) == mtime


def test_torchrun_two_ranks(tiny_run, tmp_path):
    out_dir = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "fr.cli.train",
    ] + tiny_run.argv(out_dir, **{"data.batch_size": 8})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run_outputs(out_dir, expect_world=2)


def test_bad_config_key_is_one_line_error(tiny_run, capsys):
    assert train_main([tiny_run.recipe, "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.lrr" in err and "optim.lr" in err


def test_missing_data_directory_is_one_line_error(tiny_run, tmp_path, capsys):
    assert (
        train_main(
            [
                tiny_run.recipe,
                "data.synthetic=false",
                f"data.root={tmp_path / 'nope'}",
                f"output.dir={tmp_path / 'out'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data directory not found" in err
