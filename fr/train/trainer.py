"""The training loop: forward, backward, clip, step, schedule, log, evaluate. Knows no particular loss or model."""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from evaluation.errors import UserInputError
from fr.distributed import DistEnv, all_reduce
from fr.train.logging import MetricLogger
from fr.train.preemption import TrainingInterrupted
from fr.seeding import rng_state, set_rng_state
from fr.train.resume import FORMAT

log = logging.getLogger("fr.train")

EvalFn = Callable[[nn.Module, int], Dict[str, Dict[str, float]]]


class NonFiniteLossError(UserInputError):
    """The loss became NaN/inf: stopping beats writing a checkpoint of garbage. Usually the settings' doing
    (learning rate, margin, data), so it is reported as one line like other user errors."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    last_loss: float = float("nan")
    history: Dict[str, list] = field(default_factory=lambda: {"loss": [], "samples_per_sec": []})


class Trainer:
    """Runs `total_steps` optimisation steps of `head(backbone(images), labels)` over `loader`'s epochs.

    The backbone may be wrapped (DDP); `plain_backbone` is the unwrapped module used for evaluation.
    `amp_dtype` (fp16/bf16) runs the backbone and head under autocast; a GradScaler handles fp16.
    `exact_backbone_grad` multiplies the embedding gradient by the world size so that, after DDP's
    averaging, the backbone receives the gradient of the global-batch mean loss (see docs/training.md).
    """

    def __init__(self, backbone: nn.Module, plain_backbone: nn.Module, head: nn.Module, loader,
                 optimizer: torch.optim.Optimizer, scheduler, env: DistEnv, total_steps: int,
                 metrics: MetricLogger, log_every: int, clip_grad_norm: float = 0.0,
                 amp_dtype: Optional[torch.dtype] = None, evaluate: Optional[EvalFn] = None, eval_every: int = 0,
                 exact_backbone_grad: bool = False, channels_last: bool = False,
                 save_checkpoint: Optional[Callable[["Trainer"], Optional[str]]] = None, checkpoint_every: int = 0,
                 stop_requested: Optional[Callable[[], int]] = None):
        self.backbone, self.plain_backbone, self.head = backbone, plain_backbone, head
        self.loader, self.optimizer, self.scheduler = loader, optimizer, scheduler
        self.env, self.total_steps, self.metrics = env, total_steps, metrics
        self.log_every, self.clip_grad_norm = log_every, clip_grad_norm
        self.amp_dtype, self.evaluate, self.eval_every = amp_dtype, evaluate, eval_every
        self.exact_backbone_grad = exact_backbone_grad
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        use_scaler = amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=use_scaler)
        self.save_checkpoint, self.checkpoint_every = save_checkpoint, checkpoint_every
        self.stop_requested = stop_requested  # polled after each step: a signal number, or 0 to go on
        self.state = TrainState()
        self.eval_results: Dict[int, Dict[str, Dict[str, float]]] = {}
        self._saved_step, self._saved_path = -1, None

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.env.device.type, dtype=self.amp_dtype)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.backbone.train()
        self.head.train()
        images = images.contiguous(memory_format=self.memory_format)
        with self._autocast():
            embeddings = self.backbone(images)
        embeddings = embeddings.float()
        if self.exact_backbone_grad and self.env.is_distributed:
            embeddings.register_hook(lambda grad: grad * self.env.world_size)
        with self._autocast():
            loss = self.head(embeddings, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the loss became {value} at step {self.state.step + 1}: try a lower optim.lr, "
                                     f"gradient clipping (optim.clip_grad_norm > 0) or train.amp=off, or check "
                                     f"the data; no checkpoint was written for this step (the last good one is kept)")
        return value

    def extra_scalars(self) -> Dict[str, float]:
        """Optional statistics that components expose: the loader's skipped-record count (`stats`) and a
        loss's own terms (`last_stats`, e.g. SFace's intra/inter parts). Duck-typed, so the loop stays generic."""
        values: Dict[str, float] = {}
        for tag, value in (getattr(self.loader, "stats", None) or {}).items():
            values[f"data/{tag}"] = float(value)
        margin_loss = getattr(self.head, "margin_loss", None)
        for tag, value in (getattr(margin_loss, "last_stats", None) or {}).items():
            values[f"loss/{tag}"] = float(value)
        return values

    def run_evaluation(self) -> None:
        if self.evaluate is None:
            return
        self.eval_results[self.state.step] = self.evaluate(self.plain_backbone, self.state.step)

    def state_dict(self) -> Dict[str, Any]:
        """Everything this rank needs to continue exactly where it is (see fr.train.resume)."""
        state = self.state
        return {
            "format": FORMAT,
            "trainer": {"step": state.step, "epoch": state.epoch, "last_loss": state.last_loss,
                        "history": state.history, "eval_results": self.eval_results},
            "backbone": self.plain_backbone.state_dict(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "loader": self.loader.state_dict(),
            "rng": rng_state(self.env.device),
        }

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        self.plain_backbone.load_state_dict(saved["backbone"])
        self.head.load_state_dict(saved["head"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.loader.load_state_dict(saved["loader"])
        set_rng_state(saved["rng"], self.env.device)
        trainer = saved["trainer"]
        self.state = TrainState(step=int(trainer["step"]), epoch=int(trainer["epoch"]),
                                last_loss=float(trainer["last_loss"]),
                                history={k: [tuple(v) for v in values] for k, values in trainer["history"].items()})
        self.eval_results = dict(trainer["eval_results"])
        self._saved_step = self.state.step

    def _checkpoint(self) -> Optional[str]:
        """Save (once per step) through `save_checkpoint`; the checkpoint's path, or None without a saver."""
        if self.save_checkpoint is not None and self._saved_step != self.state.step:
            self._saved_path = self.save_checkpoint(self)
            self._saved_step = self.state.step
        return self._saved_path if self._saved_step == self.state.step else None

    def _agreed_stop(self) -> int:
        """The largest signal number any rank was asked to stop with (0: go on); the same on every rank."""
        if self.stop_requested is None:
            return 0
        flag = torch.tensor([self.stop_requested()], dtype=torch.int64, device=self.env.device)
        return int(all_reduce(flag, self.env, op="max").item())

    def fit(self) -> TrainState:
        state = self.state
        start = time.perf_counter()
        while state.step < self.total_steps:
            self.loader.set_epoch(state.epoch)
            for images, labels in self.loader:
                state.last_loss = self.train_step(images, labels)
                state.step += 1
                self.metrics.update(state.last_loss)
                if state.step % self.log_every == 0 or state.step == self.total_steps:
                    stats = self.metrics.log(state.step, state.epoch, self.scheduler.get_last_lr()[0],
                                             self.extra_scalars())
                    state.history["loss"].append((state.step, stats["loss"]))
                    state.history["samples_per_sec"].append((state.step, stats["samples_per_sec"]))
                if self.eval_every and state.step % self.eval_every == 0 and state.step < self.total_steps:
                    self.run_evaluation()
                if self.checkpoint_every and state.step % self.checkpoint_every == 0:
                    self._checkpoint()
                if state.step >= self.total_steps:
                    break
                signum = self._agreed_stop()
                if signum:
                    raise TrainingInterrupted(signum, state.step, self._checkpoint())
            else:  # the epoch ran to its end (a stop at total_steps mid-epoch leaves the epoch unfinished)
                state.epoch += 1
                if not self.checkpoint_every:
                    self._checkpoint()
        self._checkpoint()
        self.run_evaluation()
        log.info("training done: %d steps in %.1f s", state.step, time.perf_counter() - start)
        return state
