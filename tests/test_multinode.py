"""Multi-node launch over loopback: two "nodes" of two gloo ranks each via launch/torchrun.sh; the scripts parse."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fr.synth.dataset import ensure_synthetic
from tests.helpers import ROOT

LAUNCH = os.path.join(ROOT, "launch")
TIMEOUT_S = 240


# 4 ranks x 8 images a step over 128 images; one evaluation, at the end
SETTINGS = {"data.batch_size": 8, "train.max_steps": 3, "eval.every": 0, "eval.at_start": "false"}


def _stop(proc):
    """End a node's torchrun and its workers (its own session, started below)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_nodes_of_two_ranks_over_loopback(tmp_path, rendezvous, tiny_run, free_port):
    """static: node ranks and a master address as given; c10d: the rendezvous assigns them (RDZV_ENDPOINT)."""
    out_dir = str(tmp_path / "run")
    argv = tiny_run.argv(out_dir, **SETTINGS)
    ensure_synthetic(tiny_run.data, tiny_run.config(out_dir, **SETTINGS).data.synth)  # before the ranks start
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        NNODES="2",
        PYTHONPATH=ROOT,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    )
    for name in ("RDZV_ENDPOINT", "RDZV_ID", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "MAX_RESTARTS"):
        env.pop(name, None)
    if rendezvous == "static":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port))
    else:
        env.update(RDZV_ENDPOINT=f"127.0.0.1:{free_port}", RDZV_ID=f"test{free_port}")
    nodes = []
    try:
        for node_rank in (0, 1):
            # each node in its own working directory, as on separate machines (output.dir is absolute)
            cwd = tmp_path / f"node{node_rank}"
            cwd.mkdir()
            node_env = dict(env, NODE_RANK=str(node_rank)) if rendezvous == "static" else env
            nodes.append(
                subprocess.Popen(
                    ["bash", os.path.join(LAUNCH, "torchrun.sh"), "2"] + argv,
                    cwd=cwd,
                    env=node_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        outputs = [node.communicate(timeout=max(1.0, deadline - time.monotonic())) for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            _stop(node)
        pytest.fail(f"the two-node run did not finish within {TIMEOUT_S} s")
    finally:
        for node in nodes:
            if node.returncode is None:
                _stop(node)
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, out[-3000:] + err[-3000:]

    results = json.load(open(os.path.join(out_dir, "results.json")))
    assert results["world_size"] == 4 and results["steps"] == 3
    # only global rank 0 writes the outputs and prints the summary (static: on node 0); nothing lands in a
    # node's working directory
    printed = [
        bool(out.strip()) and json.loads(out.strip().splitlines()[-1])["output"] == out_dir for out, _ in outputs
    ]
    assert printed == [True, False] if rendezvous == "static" else sorted(printed) == [False, True]
    assert glob.glob(str(tmp_path / "**" / "model.pt"), recursive=True) == [os.path.join(out_dir, "model.pt")]


@pytest.mark.parametrize(
    "script", sorted(glob.glob(os.path.join(LAUNCH, "*.sh"))) + [os.path.join(LAUNCH, "slurm.sbatch")]
)
def test_launch_script_parses(script):
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_torchrun_wrapper_refuses_elastic_nodes_without_rendezvous(tmp_path, tiny_run):
    env = dict(os.environ, NNODES="1:2")
    env.pop("RDZV_ENDPOINT", None)
    proc = subprocess.run(
        ["bash", os.path.join(LAUNCH, "torchrun.sh"), "2", tiny_run.recipe],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "RDZV_ENDPOINT" in proc.stderr and proc.stderr.count("\n") == 1
