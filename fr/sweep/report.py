"""The listener that reports a trial's progress to Ray at every evaluation, with fr's checkpoint attached."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

from fr.train.checkpoint import POINTER

CHECKPOINTS = "checkpoints"  # fr's checkpoint directory under output.dir, and under a Ray checkpoint


def report_metrics(trainer, step: int) -> Dict[str, float]:
    """`step`, `total_steps`, `train/loss` (the last applied step's) and every evaluation result of `step` as
    `<set>/<field>` (e.g. synthetic_val/accuracy; the main rank's, empty on the others)."""
    metrics: Dict[str, float] = {
        "step": step,
        "total_steps": trainer.options.total_steps,
        "train/loss": float(trainer.state_dict()["last_loss"]),  # state_dict reads the loss off the device
    }
    for name, values in trainer.eval_results.get(step, {}).items():
        for field, value in values.items():
            metrics[f"{name}/{field}"] = float(value)
    return metrics


def stage_checkpoint(step_dir: str, into: str) -> str:
    """Lay out fr's checkpoint `step_dir` as `into/checkpoints/<step dir>/...` plus a `latest.json` naming it
    (hard links where the file system allows, copies otherwise); returns `into`."""
    name = os.path.basename(os.path.normpath(step_dir))
    target = os.path.join(into, CHECKPOINTS, name)
    shutil.copytree(step_dir, target, copy_function=_link_or_copy)
    with open(os.path.join(into, CHECKPOINTS, POINTER), "w", encoding="utf-8") as fh:
        json.dump({"step": int(name.split("_")[-1]), "dir": name}, fh)
    return into


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class TuneReporter:
    """Reports at every evaluation (every `eval.every` steps) and at the end of training, on every rank (Ray
    Train's report is a barrier). Before reporting it saves fr's resumable checkpoint of that step (a no-op
    when the trainer already saved it) and the main rank hands that checkpoint to Ray, so that a trial
    restarted elsewhere copies it back (fr.sweep.trial.restore_checkpoint) and continues with
    train.resume=auto. ASHA compares trials on these reports."""

    def __init__(self, every: int):
        self.every = every

    def on_step_end(self, trainer, step: int) -> None:
        if self.every and step % self.every == 0 and step < trainer.options.total_steps:
            self.report(trainer, step)

    def on_train_end(self, trainer) -> None:
        self.report(trainer, trainer.state.step)

    def report(self, trainer, step: int) -> None:
        import ray.train

        metrics = report_metrics(trainer, step)
        step_dir: Optional[str] = trainer.checkpoints.save(step) if trainer.checkpoints is not None else None
        if step_dir is None or not trainer.env.is_main:
            ray.train.report(metrics)
            return
        # Staged beside the run (hard links need the same file system); Ray copies it into its storage.
        staging = tempfile.mkdtemp(prefix=".fr_sweep_report_", dir=os.path.dirname(step_dir))
        try:
            checkpoint: Any = ray.train.Checkpoint.from_directory(stage_checkpoint(step_dir, staging))
            ray.train.report(metrics, checkpoint=checkpoint)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # Ray may have removed it after the upload
