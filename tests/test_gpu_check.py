"""benchmarks/gpu_check.sh in its dry-run mode (CPU, tiny sizes): the same script the GPU session runs, so that it
cannot rot between sessions; its report must be complete and every part must say what happened."""

import importlib.util
import json
import os
import subprocess
import sys
import time

from tests.helpers import ROOT

PARTS = ("install", "cuda_tests", "head", "backbone", "trainer", "dali")
STATUSES = ("ok", "skipped", "failed", "timeout")


def test_dry_run_reports_every_part(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, FR_GPU_CHECK_PYTHON=sys.executable, FR_GPU_CHECK_DRY_RUN="1")
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["dry_run"] is True
    assert list(report["parts"]) == list(PARTS)
    for name, part in report["parts"].items():
        assert part["status"] in STATUSES, (name, part)
        if part["status"] != "ok":
            assert part.get("reason"), f"{name} is {part['status']} without a reason"
    parts = report["parts"]
    # No device here: what needs one says so; what runs on the CPU twin ran.
    assert parts["install"]["status"] == "skipped"
    assert parts["cuda_tests"]["status"] == "skipped" and parts["cuda_tests"]["skipped"] >= 8
    assert parts["cuda_tests"]["passed"] == parts["cuda_tests"]["failed"] == 0
    assert parts["dali"]["status"] == "skipped"
    assert parts["head"]["status"] == parts["backbone"]["status"] == parts["trainer"]["status"] == "ok"
    head = parts["head"]["configs"]
    assert set(head) == {"rate_0.1_dense", "rate_1.0_dense", "rate_0.1_sparse", "per_rank_of_8"}
    assert head["rate_0.1_dense"]["weights_momentum_floor_gb"] == 2 * 2000 * 64 * 4 / 1e9
    backbone = parts["backbone"]
    assert backbone["flops_per_step"] > 0 and backbone["variants"]["eager"]["samples_per_s"] > 0
    assert backbone["variants"]["compile"]["status"] == "skipped"
    assert parts["trainer"]["trainer_samples_per_s"] > 0 and parts["trainer"]["backbone_only_samples_per_s"] > 0
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {name}:" in log for name in PARTS[1:])
    assert "GPU check (dry run)" in proc.stdout and (out / "cuda_tests.xml").exists()


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_parts_are_separate_processes_under_their_timeouts(tmp_path):
    """The dry run forks its parts instead of starting interpreters: each must still be its own process, killed
    (with what it started) at its timeout, its exit status and output kept, and the checking process untouched."""
    gpu_check = _load_gpu_check()
    check = gpu_check.Check(str(tmp_path), True, 60.0, str(tmp_path / "no_wheels"))
    script = tmp_path / "part.py"
    script.write_text(
        "import os, subprocess, sys, time\n"
        "print('part pid', os.getpid(), 'group', os.getpgid(0), flush=True)\n"
        "if sys.argv[1] == 'hang':\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    print('grandchild', child.pid, flush=True)\n"
        "    time.sleep(60)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    assert check.run("ok", [sys.executable, str(script), "0"], 30)["status"] == "ok"
    failed = check.run("bad", [sys.executable, str(script), "3"], 30)
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    start = time.monotonic()  # run_forked itself: run() gives a part at least 5 s
    assert check.run_forked([str(script), "hang"], 1.0) is None and time.monotonic() - start < 15
    check.log.close()
    log = (tmp_path / "gpu_check.log").read_text()
    pids = [int(line.split()[2]) for line in log.splitlines() if line.startswith("part pid")]
    assert len(pids) == 3 and os.getpid() not in pids and len(set(pids)) == 3
    assert all(line.split()[2] == line.split()[4] for line in log.splitlines() if line.startswith("part pid"))
    grandchild = int(next(line.split()[1] for line in log.splitlines() if line.startswith("grandchild")))
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the hung part's own child outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a killed child not yet reaped by its (dead) parent is a zombie
        return fh.read().split(")")[-1].split()[0] != "Z"
