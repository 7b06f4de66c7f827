"""The main recipe is reproducible: two runs from scratch end with the same model.pt, byte for byte.

What must not matter differs between the two runs: the render processes of the data set, the DataLoader
workers, the process (one in pytest, one fresh with another hash seed). The thread count is pinned because it
does matter: torch's CPU kernels sum in another order with another thread count (as oneDNN's convolutions do
with another instruction set: AVX2 and AVX-512 runs part after a few steps).
"""

import filecmp
import json
import os
import subprocess
import sys

from fr.cli.train import main as train_main
from tests.helpers import ROOT

# 10 steps over 8 batches per epoch: the run crosses an epoch boundary (a new permutation and new flips).
# One evaluation, at the end.
SETTINGS = {"train.max_steps": 10, "train.threads": 2, "eval.every": 0, "eval.at_start": "false"}


def test_two_runs_from_scratch_write_identical_models(tiny_run, tmp_path):
    data_a, data_b = str(tmp_path / "data_a"), str(tmp_path / "data_b")
    out_a, out_b = str(tmp_path / "run_a"), str(tmp_path / "run_b")
    assert train_main(tiny_run.argv(out_a, data_a, **SETTINGS, **{"data.synth.workers": 1, "data.num_workers": 0})) == 0
    env = dict(
        os.environ,
        PYTHONHASHSEED="12345",
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
    )
    cmd = [sys.executable, "-m", "fr.cli.train"] + tiny_run.argv(
        out_b, data_b, **SETTINGS, **{"data.synth.workers": 2, "data.num_workers": 2}
    )
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    for name in ["train.rec", "train.idx", "synthetic_val.bin"]:  # the renders agree: a model difference is training's
        assert filecmp.cmp(os.path.join(data_a, name), os.path.join(data_b, name), shallow=False), name
    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("run_a", "run_b")]
    assert [r["steps"] for r in results] == [10, 10]
    assert filecmp.cmp(os.path.join(out_a, "model.pt"), os.path.join(out_b, "model.pt"), shallow=False)
    assert results[0]["verification"] == results[1]["verification"]
    assert results[0]["history"]["loss"] == results[1]["history"]["loss"]
