"""One trial: Tune's driver function starts a Ray Train TorchTrainer whose workers run fr's own trainer.

Ray Train forms the process group (gloo on CPU, NCCL on GPU) and sets RANK/WORLD_SIZE/LOCAL_RANK, which
`fr.distributed.init_distributed` joins: the Partial FC head is sharded over the trial's workers as under
torchrun. Each trial trains in `<output>/trials/<trial id>` with `train.resume=auto`, so a restart of its
workers (FailureConfig) or of the sweep (--resume) continues from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from evaluation.fileio import atomic_write_json
from fr.config import Config, from_dict, set_value
from fr.sweep.report import CHECKPOINTS, TuneReporter
from fr.sweep.spec import Resources
from fr.train.checkpoint import MANIFEST, POINTER

log = logging.getLogger("fr.sweep")

TRIALS = "trials"  # <output>/trials/<trial id>: each trial's fr run (config.json, tensorboard/, checkpoints/)
TRAIN_STORAGE = "ray_train"  # <output>/ray_train/<trial id>: the checkpoints each trial reported to Ray


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (picklable): the resolved base config, the sweep's output directory (absolute),
    the resources per worker and the restarts allowed; `listeners` are added to every worker's trainer."""

    config: Dict[str, Any]
    output: str
    resources: Resources
    max_failures: int
    listeners: Tuple[Any, ...] = ()


def trial_config(setup: TrialSetup, params: Dict[str, Any], trial_id: str) -> Config:
    """The base config with the trial's parameters, its own output.dir, resumable, on the device it is given."""
    cfg = from_dict(setup.config)
    for key, value in params.items():
        set_value(cfg, key, value)
    cfg.output.dir = os.path.join(setup.output, TRIALS, trial_id)
    cfg.train.resume = "auto"
    cfg.output.overwrite = False
    if not setup.resources.gpu:
        cfg.train.device = "cpu"  # a worker given no GPU must not take one
    if not cfg.train.threads:
        cfg.train.threads = max(1, int(setup.resources.cpu))
    return cfg.validate()


def run_trial(params: Dict[str, Any], setup: TrialSetup) -> None:
    """Tune's function trainable (the trial's driver): one data-parallel fr run over `resources.workers`."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(setup, params, trial_id)
    res = setup.resources
    per_worker = {name: amount for name, amount in (("CPU", res.cpu), ("GPU", res.gpu)) if amount}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": cfg.to_dict(), "listeners": list(setup.listeners)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=bool(res.gpu), resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=os.path.join(setup.output, TRAIN_STORAGE),
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=setup.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def train_worker(loop_config: Dict[str, Any]) -> None:
    """One Ray Train worker: join the group Ray formed, bring back the trial's last reported checkpoint if
    this run directory lacks it, and train with the reporter listening."""
    import ray.train

    from fr.distributed import init_distributed, on_main
    from fr.train.run import train

    cfg = from_dict(loop_config["config"]).validate()
    env = init_distributed(cfg.train.device)
    _worker_logging(env.is_main)
    on_main(env, lambda: restore_checkpoint(ray.train.get_checkpoint(), cfg.output.dir))
    listeners = [TuneReporter(cfg.eval.every)] + list(loop_config["listeners"])
    train(cfg, env, listeners=listeners)


def _worker_logging(main: bool) -> None:
    """fr's log lines on the worker's stdout (Ray forwards it to the driver): INFO on rank 0, warnings elsewhere."""
    logger = logging.getLogger("fr")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if main else logging.WARNING)


def local_step(out_dir: str) -> Optional[int]:
    """The step of the complete checkpoint `out_dir/checkpoints/latest.json` names, or None."""
    pointer = os.path.join(out_dir, CHECKPOINTS, POINTER)
    try:
        with open(pointer, encoding="utf-8") as fh:
            saved = json.load(fh)
        if os.path.isfile(os.path.join(out_dir, CHECKPOINTS, saved["dir"], MANIFEST)):
            return int(saved["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def restore_checkpoint(checkpoint: Any, out_dir: str) -> Optional[int]:
    """Copy a checkpoint fr reported to Ray (fr.sweep.report) back into `out_dir/checkpoints` when the run
    directory has no checkpoint as new (e.g. a worker restarted on another node); returns the restored step."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as source:
        with open(os.path.join(source, CHECKPOINTS, POINTER), encoding="utf-8") as fh:
            saved = json.load(fh)
        step, name = int(saved["step"]), saved["dir"]
        have = local_step(out_dir)
        if have is not None and have >= step:
            return None
        target_root = os.path.join(out_dir, CHECKPOINTS)
        os.makedirs(target_root, exist_ok=True)
        staging = os.path.join(target_root, f".fr_sweep_restore_{name}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(os.path.join(source, CHECKPOINTS, name), staging)
        shutil.rmtree(os.path.join(target_root, name), ignore_errors=True)
        os.replace(staging, os.path.join(target_root, name))
        atomic_write_json(os.path.join(target_root, POINTER), {"step": step, "dir": name})
    log.info("restored the checkpoint of step %d from Ray's storage into %s", step, target_root)
    return step
