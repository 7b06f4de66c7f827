"""Training metrics to the console (and its copy, training.log), TensorBoard and optionally Weights & Biases: loss,
lr, throughput (samples/s), the fp16 loss scale, ETA and skipped steps."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

import torch

from fr.config import Config, ConfigError

log = logging.getLogger("fr.train")

LOG_FILE = "training.log"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # when the console has no format to copy


def attach_log_file(path: str, append: bool) -> logging.Handler:
    """Copy the console log (what reaches the root logger) to `path`, in the console's format; a resumed run
    appends (`append`), a fresh one starts the file anew. Detach it with `detach_log_file`."""
    handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    console = [
        h for h in logging.getLogger().handlers if h.formatter is not None and not isinstance(h, logging.FileHandler)
    ]
    handler.setFormatter(console[0].formatter if console else logging.Formatter(FILE_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def grad_scale_of(strategy: Any) -> Optional[Callable[[], float]]:
    """A reader of the strategy's fp16 loss scale (its `scaler`, a torch GradScaler), or None when it has no
    enabled one (fp32, bf16, or a strategy without one): the log line then leaves the scale out."""
    scaler = getattr(strategy, "scaler", None)
    if scaler is None or not callable(getattr(scaler, "is_enabled", None)) or not scaler.is_enabled():
        return None
    return lambda: float(scaler.get_scale())


def require_wandb() -> None:
    """output.wandb=true needs the wandb package: a one-line error before the run writes anything."""
    try:
        import wandb  # noqa: F401  (imported only when enabled)
    except ImportError:
        raise ConfigError(
            "output.wandb=true needs the wandb package, which is not installed (pip install wandb)"
        ) from None


def wandb_settings(cfg: Config) -> Optional[Dict[str, Any]]:
    """wandb.init's keywords for `cfg` (output.wandb_project/entity/name, the resolved config), or None when
    output.wandb is off."""
    out = cfg.output
    if not out.wandb:
        return None
    return {
        "project": out.wandb_project or None,  # None: W&B's own default
        "entity": out.wandb_entity or None,
        "name": out.wandb_name or None,
        "dir": out.dir,
        "config": json.loads(cfg.to_json()),
    }


class WandbLogger:
    """One Weights & Biases run that receives the scalars TensorBoard gets, under the same tags and steps."""

    def __init__(self, **init: Any):
        require_wandb()
        import wandb

        self.run = wandb.init(**init)

    def log(self, step: int, values: Dict[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class MetricLogger:
    """Averages the loss between log points and reports global throughput; on the main rank (`enabled`) it logs
    a line per log point and writes the scalars to TensorBoard and, given `wandb` (wandb.init's keywords), to
    Weights & Biases; `log_file` copies the console log there (appended to when `append`).

    The log line carries the global step, epoch, mean loss, lr, samples/s over all ranks, the fp16 loss scale
    when `grad_scale` reads one (grad_scale_of), and the remaining time (eta). The loss is summed on its device
    (in float64, as a Python float sum would be) and read on the host only at log points: the training loop
    never waits for it. A skipped step counts towards throughput, not the loss.
    """

    def __init__(
        self,
        tensorboard_dir: Optional[str],
        global_batch: int,
        total_steps: int,
        enabled: bool,
        purge_step: Optional[int] = None,
        log_file: Optional[str] = None,
        append: bool = False,
        grad_scale: Optional[Callable[[], float]] = None,
        wandb: Optional[Dict[str, Any]] = None,
    ):
        self.enabled = enabled
        self.global_batch = global_batch
        self.total_steps = total_steps
        self.grad_scale = grad_scale
        self.writer = None
        self.wandb: Optional[WandbLogger] = None
        self.log_file: Optional[logging.Handler] = None
        if enabled and log_file:
            self.log_file = attach_log_file(log_file, append)
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(tensorboard_dir, purge_step=purge_step)
        if enabled and wandb is not None:
            self.wandb = WandbLogger(**wandb)
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
            scalars = {"train/loss": loss, "train/lr": lr, "train/samples_per_sec": throughput}
            scale = ""
            if self.grad_scale is not None:
                scalars["train/grad_scale"] = self.grad_scale()
                scale = f"  grad scale {scalars['train/grad_scale']:g}"
            details = "".join(f"  {tag.split('/')[-1]} {value:.4g}" for tag, value in extra.items())
            log.info(
                "step %d/%d epoch %d  loss %.4f  lr %.6g  %.1f samples/s%s  eta %s%s",
                step,
                self.total_steps,
                epoch,
                loss,
                lr,
                throughput,
                scale,
                format_duration(eta),
                details,
            )
            self.scalars(step, {**scalars, **extra})
        self._loss_sum, self._loss_count, self._window_steps = None, 0, 0
        self._window_start = now
        return stats

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """Write `values` (tag -> number) at `step` to TensorBoard and W&B (where enabled)."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(step, values)

    def close(self) -> None:
        """Flush and close every sink (safe to call twice)."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None
        if self.log_file is not None:
            detach_log_file(self.log_file)
            self.log_file = None
