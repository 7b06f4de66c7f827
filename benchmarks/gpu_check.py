"""The prepared GPU check (issue 18): install fr beside the machine's torch, run the CUDA tests and the GPU
benchmarks, each part in its own process under its own timeout, within one wall-clock budget; write
OUT/gpu_report.json, OUT/gpu_check.log (every part's output) and OUT/cuda_tests.xml, and print a short summary.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR] [--wheels DIR] [--budget SECONDS]

--dry-run (or FR_GPU_CHECK_DRY_RUN=1): the same parts on the CPU with tiny sizes, nothing installed, the CUDA
parts reported as skipped; the test suite runs it so that the script cannot rot between GPU sessions. There each
Python part is a child forked from this process after it imported torch and fr once (a fresh interpreter per part
costs ~5 s of imports on a small CPU); every part still runs in its own process group under its own timeout.
On the device every part is a fresh interpreter (nothing imported here may touch CUDA or the carried wheels).
Every part reports a status: ok, skipped (with the reason), failed (with the reason) or timeout.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS_DIR = os.path.join(ROOT, "benchmarks", "gpu_check")
SITE = os.path.join(tempfile.gettempdir(), "fr_gpu_check_site")  # carried wheels go here, not into the venv
# part -> its own timeout in seconds (each is also cut to what is left of the whole budget)
TIMEOUTS = {"install": 60, "cuda_tests": 150, "head": 60, "backbone": 120, "trainer": 90, "dali": 30}
BENCH_PARTS = ("head", "backbone", "trainer", "dali")


class Check:
    """Runs the parts in order against one deadline, logging their output to one file."""

    def __init__(self, out: str, dry_run: bool, budget_s: float, wheels: str):
        self.out, self.dry_run, self.wheels = out, dry_run, wheels
        self.deadline = time.monotonic() + budget_s
        self.work = tempfile.mkdtemp(prefix="fr_gpu_check_work_")
        self.log_path = os.path.join(out, "gpu_check.log")
        self.log = open(self.log_path, "a", buffering=1)
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, self.env.get("PYTHONPATH", "")) if p)

    def run(self, name: str, argv: List[str], timeout_s: float) -> Dict[str, object]:
        """One command in its own process group, killed with its children at the timeout."""
        left = self.deadline - time.monotonic()
        timeout_s = min(timeout_s, left)
        if timeout_s < 5:
            return {"status": "skipped", "reason": "no time left in the budget"}
        self.log.write(f"\n===== {name}: {' '.join(argv)} (timeout {timeout_s:.0f} s)\n")
        start = time.monotonic()
        if self.dry_run and argv[0] == sys.executable:
            rc = self.run_forked(argv[1:], timeout_s)
        else:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        seconds = round(time.monotonic() - start, 1)
        self.log.write(f"===== {name}: exit {rc} after {seconds} s\n")
        if rc is None:
            return {"status": "timeout", "reason": f"killed after {timeout_s:.0f} s", "seconds": seconds}
        return {"status": "ok" if rc == 0 else "failed", "exit_code": rc, "seconds": seconds}

    def run_forked(self, args: List[str], timeout_s: float) -> Optional[int]:
        """`python ARGS` (a script path, or `-m module`) in a forked child with its own session, output to the log;
        its exit status, or None when it was killed at the timeout."""
        self.log.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                os.setsid()
                os.dup2(self.log.fileno(), 1)
                os.dup2(self.log.fileno(), 2)
                # fresh streams on the redirected descriptors (the caller's may be objects of its own, e.g. pytest's)
                sys.stdout, sys.stderr = (
                    open(1, "w", buffering=1, closefd=False),
                    open(2, "w", buffering=1, closefd=False),
                )
                os.chdir(ROOT)
                os.environ.clear()
                os.environ.update(self.env)
                code = run_python(args)
            except BaseException:  # noqa: BLE001 - whatever the part raised is its failure, reported as exit 1
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        end = time.monotonic() + timeout_s
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= end:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # killed before its setsid: no group of its own yet
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            time.sleep(0.05)

    # ------------------------------------------------------------------------------------------------- parts
    def install(self) -> Dict[str, object]:
        """`pip install --no-deps -e .` (offline: no index, no build isolation) and the carried wheels into a
        separate target put on PYTHONPATH; torch's version is read before and after to prove it untouched."""
        wheels = sorted(glob.glob(os.path.join(self.wheels, "*.whl")))
        commands = [
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-e", "."]
        ]
        if wheels:
            commands.append(
                [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade"]
                + ["--target", SITE, *wheels]
            )
        result: Dict[str, object] = {"wheels": [os.path.basename(w) for w in wheels], "commands": commands}
        if self.dry_run:
            return {"status": "skipped", "reason": "dry run: nothing is installed", **result}
        result["torch_before"] = self.torch_version()
        for command in commands:
            step = self.run("install", command, TIMEOUTS["install"])
            if step["status"] != "ok":  # fr is importable from the checkout anyway (PYTHONPATH)
                return {**result, **step, "reason": f"{' '.join(command[3:5])}... exited {step.get('exit_code')}"}
        if wheels:
            self.env["PYTHONPATH"] = os.pathsep.join([SITE, self.env["PYTHONPATH"]])
        result["torch_after"] = self.torch_version()
        status = "ok" if result["torch_after"] == result["torch_before"] else "failed"
        return {**result, "status": status, **({} if status == "ok" else {"reason": "torch changed"})}

    def torch_version(self) -> Optional[str]:
        out = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.__version__)"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        return out.stdout.strip() or None

    def cuda_tests(self) -> Dict[str, object]:
        """`pytest -m cuda` (the whole suite on a GPU; only tests/test_cuda_paths.py in a dry run) with JUnit XML."""
        xml = os.path.join(self.out, "cuda_tests.xml")
        target = "tests/test_cuda_paths.py" if self.dry_run else "tests"
        argv = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", target]
        step = self.run("cuda_tests", argv + [f"--junitxml={xml}"], TIMEOUTS["cuda_tests"])
        if not os.path.exists(xml):
            return {**step, "status": "failed" if step["status"] == "ok" else step["status"], "reason": "no JUnit XML"}
        summary = junit_summary(xml)
        if step["status"] == "timeout":
            return {**step, **summary}
        if summary["failed"]:
            status = "failed"
        elif summary["passed"]:
            status = "ok"
        else:
            status = "skipped"
        result = {**step, **summary, "status": status}
        if status == "skipped":
            result["reason"] = "every CUDA test was skipped (no CUDA device)"
        elif status == "failed":
            result["reason"] = f"{summary['failed']} test(s) failed"
        return result

    def bench(self, name: str) -> Dict[str, object]:
        out_json = os.path.join(self.work, f"{name}.json")
        argv = [sys.executable, os.path.join(PARTS_DIR, f"{name}.py"), "--out-json", out_json, "--work", self.work]
        step = self.run(name, argv + (["--dry-run"] if self.dry_run else []), TIMEOUTS[name])
        if not os.path.exists(out_json):
            reason = step.get("reason") or f"exited {step.get('exit_code')} without a result (see the log)"
            return {**step, "status": step["status"] if step["status"] != "ok" else "failed", "reason": reason}
        with open(out_json) as fh:
            result = json.load(fh)
        if step["status"] != "ok" and result.get("status") == "ok":
            result.update(status="failed", reason=f"exited {step.get('exit_code')} after writing its result")
        return {**result, "seconds": step.get("seconds")}


def run_python(args: List[str]) -> int:
    """What `python ARGS` would run, in this process: a script (its folder first on sys.path) or `-m module`."""
    module = args[1] if args[0] == "-m" else None
    sys.argv = [module or args[0], *args[2 if module else 1 :]]
    sys.path[0] = ROOT if module else os.path.dirname(os.path.abspath(args[0]))
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def preload() -> None:
    """The dry run's imports, paid once before the parts are forked: torch, its compiler stack (the first
    optimizer imports it), pytest and the fr modules the parts use. Nothing here starts a thread or touches CUDA."""
    sys.path.insert(0, ROOT)
    import pytest  # noqa: F401
    import torch._dynamo  # noqa: F401

    import fr.heads  # noqa: F401
    import fr.train.run  # noqa: F401


def junit_summary(path: str) -> Dict[str, object]:
    """Counts, and per test its outcome, message and recorded properties, from pytest's JUnit XML."""
    tests: Dict[str, Dict[str, object]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = ("skipped" if tag == "skipped" else "failed"), node.get("message", "")
        row: Dict[str, object] = {"outcome": outcome, "seconds": float(case.get("time", 0))}
        if message:
            row["message"] = message[:300]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if props:
            row["properties"] = props
        tests[f"{case.get('classname')}::{case.get('name')}"] = row
    counts = {k: sum(1 for t in tests.values() if t["outcome"] == k) for k in ("passed", "failed", "skipped")}
    return {**counts, "tests": tests}


def summary_lines(report: Dict[str, object]) -> List[str]:
    lines = [f"GPU check ({'dry run' if report['dry_run'] else 'device'}), {report['seconds']} s:"]
    for name, part in report["parts"].items():
        detail = part.get("reason", "")
        if name == "cuda_tests" and "passed" in part:
            detail = f"{part['passed']} passed, {part['failed']} failed, {part['skipped']} skipped. {detail}"
        elif name == "backbone" and part.get("status") == "ok":
            detail = ", ".join(
                f"{k} {v.get('samples_per_s')} samples/s MFU {v.get('mfu_measured_peak')}"
                for k, v in part["variants"].items()
                if v.get("status") == "ok"
            )
        elif name == "head" and part.get("status") == "ok":
            detail = ", ".join(f"{k} {v.get('median_step_s')} s/step" for k, v in part["configs"].items())
        elif name == "trainer" and part.get("status") == "ok":
            detail = f"{part['trainer_samples_per_s']} vs backbone-only {part['backbone_only_samples_per_s']} samples/s"
        elif name == "dali" and part.get("status") == "ok":
            detail = f"{part['images_per_s']} images/s"
        lines.append(f"  {name:<11} {part.get('status', '?'):<8} {detail}".rstrip())
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("FR_GPU_CHECK_DRY_RUN") == "1")
    parser.add_argument("--out", default=os.environ.get("OUT") or "", help="report directory (default: $OUT or temp)")
    parser.add_argument("--wheels", default=".whl", help="carried wheels to install (default: .whl)")
    parser.add_argument("--budget", type=float, default=420.0, help="wall-clock seconds for every part together")
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="fr_gpu_check_")
    os.makedirs(out, exist_ok=True)
    started = time.monotonic()
    if args.dry_run:
        preload()
    check = Check(out, args.dry_run, args.budget, os.path.join(ROOT, args.wheels))
    parts: Dict[str, Dict[str, object]] = {}
    report: Dict[str, object] = {"dry_run": args.dry_run, "budget_s": args.budget, "parts": parts}
    parts["install"] = check.install()
    parts["cuda_tests"] = check.cuda_tests()
    for name in BENCH_PARTS:
        parts[name] = check.bench(name)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["log"] = check.log_path
    with open(os.path.join(out, "gpu_report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    lines = summary_lines(report)
    check.log.write("\n".join(lines) + "\n")
    check.log.close()
    print("\n".join(lines) + f"\nreport: {os.path.join(out, 'gpu_report.json')}")
    return 0 if all(p.get("status") in ("ok", "skipped") for p in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
