"""Runs a checked sweep on Ray: connects (or starts a local instance), checks the cluster's resources, runs
or restores the Tune experiment, then writes the results (fr.sweep.results)."""

from __future__ import annotations

import copy
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from fr.config import Config
from fr.sweep import results
from fr.sweep.space import SweepError, tune_space
from fr.sweep.spec import Resources, SweepSpec
from fr.sweep.trial import TRIALS, TrialSetup, run_trial

log = logging.getLogger("fr.sweep")

TUNE_DIR = "tune"  # <output>/tune: Tune's experiment state, restored by --resume
# A trial's driver only waits on Ray Train's controller; a whole CPU would sit idle beside the workers.
DRIVER_CPU = 0.01
PATH_KEYS = ("data.root", "data.cache_dir", "model.pretrained", "partial_fc.pretrained", "train.deepspeed_config")


@dataclass
class SweepOutcome:
    rows: List[results.TrialRow]
    document: Dict[str, Any]
    table: str
    interrupted: bool  # a trial unfinished or never started: `--resume` continues the sweep


def absolute_paths(cfg: Config) -> Config:
    """A copy of `cfg` whose file paths do not depend on the working directory (trials run in Ray's)."""
    cfg = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            setattr(getattr(cfg, section), name, os.path.abspath(value))
    cfg.eval.bins = [os.path.abspath(item) if os.path.isfile(item) else item for item in cfg.eval.bins]
    return cfg


def check_cluster(path: str, res: Resources, total: Dict[str, float], nodes: Sequence[Dict[str, float]]) -> None:
    """A trial must fit the cluster: its workers' CPUs and GPUs in all, and one worker on some node."""
    need = {"CPU": res.cpu * res.workers + DRIVER_CPU, "GPU": res.gpu * res.workers}
    for name, amount in need.items():
        if amount > total.get(name, 0.0) + 1e-9:
            raise SweepError(
                f"{path}: resources: a trial needs {amount:g} {name} ({res.workers} worker(s) x "
                f"{getattr(res, name.lower()):g}{' + the driver' if name == 'CPU' else ''}) but the cluster has "
                f"{total.get(name, 0.0):g}"
            )
    if not any(node.get("CPU", 0.0) >= res.cpu and node.get("GPU", 0.0) >= res.gpu for node in nodes):
        raise SweepError(
            f"{path}: resources: no node has {res.cpu:g} CPU and {res.gpu:g} GPU for one worker "
            f"(nodes: {[{k: node.get(k, 0.0) for k in ('CPU', 'GPU')} for node in nodes]})"
        )


def connect(address: Optional[str]) -> bool:
    """Join `address` (ray://host:port, auto, host:port) or start a local instance; True when this call
    started Ray (the caller shuts it down). An instance this process already joined is reused."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")  # what ray.init itself would join
    # A local instance keeps its dashboard: Ray Train's PlacementGroupCleaner asks its State API whether a
    # trial's controller is gone, and without it a finished trial's workers' CPUs may stay reserved.
    if address:
        ray.init(address=address)
    else:
        ray.init()
    return True


def _scheduler(spec: SweepSpec) -> Any:
    from fr.sweep.algorithms import SCHEDULERS

    params = {k: v for k, v in spec.scheduler.items() if k != "name"}
    if spec.scheduler["name"] == "asha" and not params.get("max_t"):
        params["max_t"] = spec.config.train.max_steps or 10**9  # rungs beyond the run's end are never reached
    return SCHEDULERS.build(spec.scheduler["name"], **params)


def _searcher(spec: SweepSpec) -> Any:
    from fr.sweep.algorithms import SEARCHERS

    params = {k: v for k, v in spec.search.items() if k != "name"}
    return SEARCHERS.build(spec.search["name"], **params)


def prepare_sweep_data(cfg: Config, spec: SweepSpec) -> None:
    """Render the synthetic set once here rather than in the first trials at once (unless trials vary it)."""
    if cfg.data.synthetic and not any(dim.key.startswith("data.") for dim in spec.dims):
        from fr.synth.dataset import ensure_synthetic

        ensure_synthetic(cfg.data.root, cfg.data.synth)


def run_sweep(
    spec: SweepSpec,
    address: Optional[str] = None,
    resume: bool = False,
    listeners: Sequence[Any] = (),
    echo: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
) -> SweepOutcome:
    """Run (or with `resume`, finish) the sweep; write its results into `spec.output`. `listeners`
    (picklable) are added to every trial's trainer; `callbacks` (ray.tune.Callback) run in this process."""
    output = os.path.abspath(spec.output)
    tune_dir = os.path.join(output, TUNE_DIR)
    from ray import tune

    if resume and not tune.Tuner.can_restore(tune_dir):
        raise SweepError(f"{spec.path}: --resume: {tune_dir} holds no sweep to resume")
    if not resume and os.path.isdir(tune_dir) and os.listdir(tune_dir):
        raise SweepError(
            f"{spec.path}: output={spec.output} already holds a sweep ({tune_dir}); finish it with --resume, "
            f"or choose another output"
        )
    cfg = absolute_paths(spec.config)
    started = connect(address)
    try:
        import ray

        alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        check_cluster(spec.path, spec.resources, ray.cluster_resources(), alive)
        prepare_sweep_data(cfg, spec)
        setup = TrialSetup(cfg.to_dict(), output, spec.resources, spec.max_failures, tuple(listeners))
        trainable = tune.with_resources(functools.partial(run_trial, setup=setup), {"cpu": DRIVER_CPU})
        if resume:
            tuner = tune.Tuner.restore(tune_dir, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(spec.dims),
                tune_config=tune.TuneConfig(
                    metric=spec.metric,
                    mode=spec.mode,
                    scheduler=_scheduler(spec),
                    search_alg=_searcher(spec),
                    num_samples=spec.num_samples,
                    max_concurrent_trials=spec.max_concurrent_trials or None,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=output,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    callbacks=list(callbacks),
                    verbose=1,
                ),
            )
        tuner.fit()
        outcome = collect(spec, output, tune_dir)
    finally:
        if started:
            import ray

            ray.shutdown()
    echo(outcome.table)
    return outcome


def collect(spec: SweepSpec, output: str, tune_dir: str) -> SweepOutcome:
    """Every trial of the experiment in `tune_dir` as a row (from Tune's saved state, so a resumed sweep
    lists the trials finished before the interruption too), and the result files."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(tune_dir)
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        reports = frame.to_dict("records") if frame is not None and not frame.empty else []
        params = {dim.key: trial.config.get(dim.key) for dim in spec.dims}
        rows.append(
            results.make_row(
                trial.trial_id,
                trial.status,
                params,
                reports,
                spec.metric,
                spec.mode,
                os.path.join(output, TRIALS, trial.trial_id),
                error=_error(trial),
            )
        )
    rows.sort(key=lambda row: row.trial)
    document = results.write_sweep_results(rows, spec.metric, spec.mode, output)
    # An interrupted sweep may not have created its later trials yet (the searcher makes them on demand).
    unfinished = any(row.status not in ("completed", "stopped early", "error") for row in rows)
    interrupted = unfinished or len(rows) < spec.total_trials
    return SweepOutcome(rows, document, results.table(rows, spec.metric), interrupted)


def _error(trial: Any) -> str:
    """The last line of a failed trial's error file (Tune writes the traceback there)."""
    if trial.status != "ERROR":
        return ""
    path = getattr(trial, "error_file", None)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.strip() for line in fh if line.strip()]
        return lines[-1] if lines else "failed"
    except (OSError, TypeError):
        return "failed (no error file)"
