"""Files and directories fr writes get the permissions the user's umask gives (0644/0755 under 022, 0640/0750
under 027), as `open` and `mkdir` would create them: never the private 0600 of a temporary file."""

import logging
import os
import stat

import numpy as np
import pytest
import torch

from evaluation.bin_format import encode_png, write_bin
from evaluation.fileio import atomic_write, atomic_write_json, make_dirs
from evaluation.metrics import roc_curve
from evaluation.plot import plot_roc
from fr.cli.data import main as data_main
from fr.config import Config, load_config, save_config
from fr.distributed import DistEnv
from fr.train.checkpoint import CheckpointManager, run_settings
from fr.train.logging import attach_log_file, detach_log_file
from fr.train.model_file import atomic_save
from fr.train.run import train
from tests.helpers.checkpoint import Saved
from tests.helpers.records import write_record_set
from tests.helpers.tiny_run import RECIPE, tiny_overrides

UMASKS = [pytest.param(0o022, id="umask022"), pytest.param(0o027, id="umask027")]


@pytest.fixture()
def umask(request):
    """Run the test under umask `request.param`, restoring the previous one after."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def modes(root):
    """{path relative to root: permission bits} of everything under `root` (root itself as ".")."""
    found = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def expected(root, mask):
    """What `open` (0666) and `mkdir` (0777) give under `mask`, for every entry under `root`."""
    return {
        rel: (0o777 if rel == "." or os.path.isdir(os.path.join(root, rel)) else 0o666) & ~mask for rel in modes(root)
    }


@pytest.mark.parametrize("umask", UMASKS, indirect=True)
def test_every_writer_follows_the_umask(umask, tmp_path):
    out = str(tmp_path / "out")
    make_dirs(out)  # output.dir
    atomic_save({"w": torch.zeros(2)}, os.path.join(out, "model.pt"))
    save_config(Config(), os.path.join(out, "config.json"))
    atomic_write_json(os.path.join(out, "results.json"), {"steps": 1})
    handler = attach_log_file(os.path.join(out, "training.log"), append=False)
    logging.getLogger("fr.train").warning("a line for training.log")
    detach_log_file(handler)
    # Resumable checkpoints: the step directory, a rank file, its manifest and the latest.json pointer.
    manager = CheckpointManager(out, DistEnv())
    manager.prepare(run_settings(Config(), num_classes=2))
    head = {"module": {"weight": torch.zeros(2, 4)}, "optimizer": {"state": {}, "param_groups": []}}
    manager.track(strategy=Saved({"model": {}}), head=Saved(head), trainer=Saved({"step": 1, "epoch": 0}))
    manager.save(1)
    # fr-data's record files and .bin sets; fr-eval's IJB features and ROC plot.
    write_record_set(os.path.join(out, "records"), 2, 2)
    write_bin(os.path.join(out, "pairs.bin"), [encode_png(np.zeros((4, 4, 3), np.uint8))] * 2, [True])
    atomic_write(os.path.join(out, "features.npy"), lambda fh: np.save(fh, np.zeros((2, 2, 4), np.float32)))
    plot_roc(roc_curve(np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 1, 0], dtype=bool)), f"{out}/roc.png")
    got = modes(out)
    assert {"model.pt", "config.json", "results.json", "training.log", "checkpoints/latest.json"} <= set(got)
    assert {"checkpoints/step_00000001/rank00000.pt", "checkpoints/step_00000001/manifest.json"} <= set(got)
    assert {"records/train.rec", "records/train.idx", "pairs.bin", "features.npy", "roc.png"} <= set(got)
    assert got == expected(out, umask)


@pytest.mark.parametrize("umask", UMASKS[1:], indirect=True)
def test_fr_data_synth_and_a_training_run_follow_the_umask(umask, tmp_path):
    data = str(tmp_path / "data")
    args = ["synth", "--out", data, "--identities", "4", "--per-identity", "4", "--holdout-identities", "2"]
    assert data_main(args + ["--pairs", "20", "--workers", "1"]) == 0
    assert {"train.rec", "train.idx", "synthetic_val.bin"} <= set(modes(data))
    assert modes(data) == expected(data, umask)
    out = str(tmp_path / "run")
    values = {
        "data.synthetic": "false",
        "data.batch_size": 8,
        "model.kwargs": '{"width": 8, "stem_stride": 2}',
        "model.embedding_size": 16,
        "eval.bins": "synthetic_val.bin",
        "eval.every": 0,
        "eval.at_start": "false",
        "train.max_steps": 3,  # two epochs of 2 steps: a model.pt snapshot, then the final one
        "output.tensorboard": "true",
    }
    train(load_config(RECIPE, tiny_overrides(data, out, **values)))
    got = modes(out)
    names = {"model.pt", "config.json", "results.json", "training.log", "checkpoints/latest.json", "tensorboard"}
    assert names <= set(got)
    assert got == expected(out, umask)
