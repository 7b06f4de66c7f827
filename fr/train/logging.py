"""Training metrics to the console and TensorBoard: loss, lr, throughput (samples/s), ETA and skipped steps."""

from __future__ import annotations

import logging
import math
import time
from typing import Dict, Optional

import torch

log = logging.getLogger("fr.train")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class MetricLogger:
    """Averages the loss between log points and reports global throughput; TensorBoard on the main rank.

    The loss is summed on its device (in float64, as a Python float sum would be) and read on the host only at
    log points: the training loop never waits for it. A skipped step counts towards throughput, not the loss.
    """

    def __init__(
        self,
        tensorboard_dir: Optional[str],
        global_batch: int,
        total_steps: int,
        enabled: bool,
        purge_step: Optional[int] = None,
    ):
        self.enabled = enabled
        self.global_batch = global_batch
        self.total_steps = total_steps
        self.writer = None
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir, purge_step=purge_step)
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_count = 0
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def update(self, loss: Optional[torch.Tensor]) -> None:
        """Count one step; `loss` is its (scalar tensor) loss, or None for a skipped step."""
        if loss is not None:
            value = loss.detach().double()
            self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
            self._loss_count += 1
        self._window_steps += 1

    def log(self, step: int, epoch: int, lr: float, extra: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """Emit the averages since the last call, plus `extra` scalars (tag -> value); returns the averages
        (the loss is NaN when every step since the last call was skipped)."""
        now = time.perf_counter()
        elapsed = max(now - self._window_start, 1e-9)
        throughput = self._window_steps * self.global_batch / elapsed
        seconds_per_step = elapsed / max(self._window_steps, 1)
        eta = seconds_per_step * max(self.total_steps - step, 0)
        loss = float(self._loss_sum) / self._loss_count if self._loss_count else float("nan")
        stats = {"loss": loss, "lr": lr, "samples_per_sec": throughput}
        extra = extra or {}
        if self.enabled:
            details = "".join(f"  {tag.split('/')[-1]} {value:.4g}" for tag, value in extra.items())
            log.info(
                "step %d/%d epoch %d  loss %.4f  lr %.5f  %.1f samples/s  eta %s%s",
                step,
                self.total_steps,
                epoch,
                loss,
                lr,
                throughput,
                format_duration(eta),
                details,
            )
            self.scalars(step, {"train/loss": loss, "train/lr": lr, "train/samples_per_sec": throughput, **extra})
        self._loss_sum, self._loss_count, self._window_steps = None, 0, 0
        self._window_start = now
        return stats

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
