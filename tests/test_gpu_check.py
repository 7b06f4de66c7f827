"""benchmarks/gpu_check.sh in its dry-run mode (CPU, tiny sizes): the same script the GPU session runs, so that it
cannot rot between sessions; its report must be complete and every part must say what happened."""

import json
import os
import subprocess
import sys

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
