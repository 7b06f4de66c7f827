"""Ray path overhead: one fr trial under fr-sweep (Ray Tune driver + Ray Train TorchTrainer) against the same
training launched directly with fr-train, and trials/hour of the test sweep; prints JSON.

The direct run is `python -m fr.cli.train` in a fresh process (process start and imports included, as each
Ray trial starts its own processes). The Ray run is a one-trial sweep (FIFO, `--workers` workers) on a local
instance started beforehand (`ray_init_s` is reported apart); its time is Tuner.fit's, from the first trial's
scheduling to the results being written. Same recipe, data, steps and evaluations. Then the test sweep of
tests/test_sweep.py (4 two-worker trials, ASHA, no faults) is timed for trials/hour.

    python benchmarks/bench_sweep.py [--steps 8] [--workers 1] [--repeats 1] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.test_sweep import RAY_ENV, sweep_file  # noqa: E402  the test sweep, measured as the tests run it

QUIET = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def single_trial_file(tmp: str, data: str, out: str, steps: int, workers: int) -> str:
    """The test sweep's recipe as a one-trial FIFO sweep (s=64, ArcFace's default)."""
    path = sweep_file(tmp, data, out, workers=workers)
    with open(path) as fh:
        text = fh.read()
    text = text.replace("train.max_steps: 8", f"train.max_steps: {steps}")
    text = text.replace("loss.params.s: {grid: [2.0, 64.0, 64.0, 64.0]}", "loss.params.s: {grid: [64.0]}")
    text = text.replace("scheduler: {name: asha, grace_period: 2, reduction_factor: 2}", "scheduler: {name: fifo}")
    single = os.path.join(tmp, f"single_{workers}.yaml")
    with open(single, "w") as fh:
        fh.write(text)
    return single


def direct_run(spec, out: str) -> float:
    """fr-train of the sweep's base config (overrides applied, s=64) in a new process; wall seconds."""
    cfg_path = os.path.join(out + "_config.json")
    from fr.config import save_config
    from fr.sweep.runner import absolute_paths

    cfg = absolute_paths(spec.config)
    cfg.loss.params["s"] = 64.0
    cfg.output.dir = out
    cfg.train.device = "cpu"
    cfg.train.threads = 1
    save_config(cfg, cfg_path)
    start = time.perf_counter()
    if spec.resources.workers == 1:
        command = [sys.executable, "-m", "fr.cli.train", cfg_path]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={spec.resources.workers}"]
        command += ["-m", "fr.cli.train", cfg_path]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def ray_run(path: str) -> float:
    from fr.sweep.runner import run_sweep
    from fr.sweep.spec import load_sweep

    start = time.perf_counter()
    run_sweep(load_sweep(path), echo=lambda text: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-sweep", action="store_true", help="only the per-trial overhead")
    args = parser.parse_args()

    os.environ.update(RAY_ENV)
    os.environ.update(QUIET)
    import ray

    from fr.sweep.spec import load_sweep
    from fr.synth.dataset import ensure_synthetic

    tmp = tempfile.mkdtemp(prefix="fr_bench_sweep_")
    data = os.path.join(tmp, "data")
    start = time.perf_counter()
    ray.init(num_cpus=4, log_to_driver=False)
    ray_init_s = time.perf_counter() - start
    direct, via_ray = [], []
    try:
        for repeat in range(args.repeats):
            path = single_trial_file(tmp, data, os.path.join(tmp, f"ray_{repeat}"), args.steps, args.workers)
            spec = load_sweep(path)
            ensure_synthetic(data, spec.config.data.synth)  # rendered once, outside both timings
            direct.append(direct_run(spec, os.path.join(tmp, f"direct_{repeat}")))
            via_ray.append(ray_run(path))
        sweep = {}
        if not args.skip_sweep:
            path = sweep_file(tmp, data, os.path.join(tmp, "sweep"))
            seconds = ray_run(path)
            sweep = {"trials": 4, "workers_per_trial": 2, "seconds": round(seconds, 1)}
            sweep["trials_per_hour"] = round(4 * 3600 / seconds, 1)
    finally:
        ray.shutdown()
    result = {
        "steps": args.steps,
        "workers": args.workers,
        "repeats": args.repeats,
        "ray_init_s": round(ray_init_s, 1),
        "direct_s": [round(s, 1) for s in direct],
        "ray_trial_s": [round(s, 1) for s in via_ray],
        "overhead_s": round(statistics.median(via_ray) - statistics.median(direct), 1),
        "overhead_ratio": round(statistics.median(via_ray) / statistics.median(direct), 2),
        "test_sweep": sweep,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
        "ray": ray.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
