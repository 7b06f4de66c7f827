"""The training loop: forward, backward, clip, step or skip, log, evaluate, checkpoint. Knows no particular
loss, model or launcher: the backbone trains through a strategy (fr.train.strategy), the head beside it."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fr.distributed import all_reduce
from fr.train.checkpoint import CheckpointManager
from fr.train.faults import ForwardState, NonFiniteLossError
from fr.train.head import Head
from fr.train.logging import MetricLogger
from fr.train.preemption import TrainingInterrupted

log = logging.getLogger("fr.train")

EvalFn = Callable[[nn.Module, int], Dict[str, Dict[str, float]]]


@dataclass
class TrainOptions:
    """The loop's settings. `exact_backbone_grad` multiplies the embedding gradient by the world size so that,
    after DDP's averaging, the backbone receives the gradient of the global-batch mean loss (docs/training.md).
    `max_nonfinite_steps` consecutive skipped steps stop the run. `gradient_accumulation` loader batches make one
    optimizer step (one trainer step: `total_steps`, `log_every` and `eval_every` count optimizer steps)."""

    total_steps: int
    log_every: int = 50
    eval_every: int = 0
    clip_grad_norm: float = 0.0
    exact_backbone_grad: bool = False
    channels_last: bool = False
    max_nonfinite_steps: int = 20
    gradient_accumulation: int = 1


Batch = Union[torch.Tensor, Sequence[torch.Tensor]]  # one loader batch, or the micro-batches of one step


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken, skipped ones included
    epoch: int = 0
    last_loss: float = float("nan")  # of the last applied step
    skipped_steps: int = 0
    nonfinite_streak: int = 0  # skipped steps in a row, up to the last one
    history: Dict[str, list] = field(default_factory=lambda: {"loss": [], "samples_per_sec": []})


class Trainer:
    """Runs `options.total_steps` steps of `head(strategy.model(images), labels)` over `loader`'s epochs.

    Each step reads the host once, before its update: one small all-reduce of whether any rank saw a
    non-finite loss or gradient norm and of the largest stop signal any rank received. A non-finite step is
    skipped on every rank: no update, no LR-schedule step, and the forward's other traces (ForwardState) are
    undone; its batch stays consumed. `checkpoints` (optional) is loaded once by `fit` and asked to save after
    every step. `stop_requested` (set by the caller) returns a pending signal number, or 0.

    `listeners` observe the loop without changing it (e.g. a Ray Tune report, periodic model.pt snapshots):
    each may define any of `on_step_end(trainer, step)`, `on_evaluation(trainer, step, results)` (results are
    the main rank's; {} on the others), `on_checkpoint(trainer, step, path)`, `on_epoch_end(trainer, epoch)`
    and `on_train_end(trainer)`; every rank calls them at the same points, so they may communicate.
    """

    def __init__(
        self,
        strategy,
        head: Head,
        loader,
        checkpoints: Optional[CheckpointManager],
        options: TrainOptions,
        metrics: Optional[MetricLogger] = None,
        evaluate: Optional[EvalFn] = None,
        listeners: Sequence[Any] = (),
    ):
        self.strategy, self.head, self.loader, self.checkpoints = strategy, head, loader, checkpoints
        self.options, self.evaluate = options, evaluate
        self.listeners = list(listeners)
        self.env = strategy.env
        self.metrics = metrics or MetricLogger(None, 0, options.total_steps, enabled=False)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.stop_requested: Optional[Callable[[], int]] = None
        self.state = TrainState()
        self.eval_results: Dict[int, Dict[str, Dict[str, float]]] = {}
        self._forward_state = ForwardState([strategy.module, head.module], self.env.device)
        self._last_loss: Optional[torch.Tensor] = None  # on the device until someone needs the number
        self._stop = 0
        if checkpoints is not None:
            checkpoints.track(strategy=strategy, head=head, loader=loader, trainer=self)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self, images: Batch, labels: Batch) -> Optional[torch.Tensor]:
        """One optimizer step over one loader batch, or over lists of micro-batches (gradient accumulation: each
        micro-batch's loss is divided by their count, so the summed gradients are those of their mean loss);
        returns the mean loss (a detached device scalar), or None when the step was skipped."""
        micro = list(zip(images, labels)) if isinstance(images, (list, tuple)) else [(images, labels)]
        strategy, head = self.strategy, self.head
        strategy.model.train(strategy.trainable)  # a frozen backbone keeps its BatchNorm statistics
        head.module.train()
        self._forward_state.take()
        strategy.zero_grad()
        head.zero_grad()
        losses: List[torch.Tensor] = []
        for index, (batch_images, batch_labels) in enumerate(micro):
            # DDP reduces the gradients once, in the last micro-batch's backward.
            last = index == len(micro) - 1
            with nullcontext() if last else strategy.no_sync():
                loss = self._forward(batch_images, batch_labels)
                strategy.backward(loss / len(micro) if len(micro) > 1 else loss)
            losses.append(loss.detach().float())
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        strategy.unscale_(head.optimizer)
        values = torch.stack(
            [
                loss,
                strategy.clip_grad_norm(self.options.clip_grad_norm).float(),
                head.grad_norm().float(),
            ]
        )
        nonfinite, self._stop = self._agree(values)
        if nonfinite:
            strategy.skip()
        elif strategy.step():
            head.step()
            self.state.nonfinite_streak = 0
            self._last_loss = loss
            return self._last_loss
        self._skipped(values, nonfinite)
        return None

    def _forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of one (micro-)batch; the backbone's forward records no graph when it is frozen."""
        strategy = self.strategy
        images = images.contiguous(memory_format=self.memory_format)
        with strategy.autocast(), torch.set_grad_enabled(strategy.trainable):
            embeddings = strategy.model(images)
        embeddings = embeddings.float()
        if self.options.exact_backbone_grad and self.env.is_distributed and embeddings.requires_grad:
            embeddings.register_hook(lambda grad: grad * self.env.world_size)
        with strategy.autocast():
            return self.head.module(embeddings, labels)

    def _agree(self, values: torch.Tensor) -> Tuple[bool, int]:
        """The step's one host read: whether any rank has a non-finite value, and the largest signal number any
        rank was asked to stop with, agreed with one small max-reduction."""
        signum = self.stop_requested() if self.stop_requested is not None else 0
        flags = torch.stack(
            [(~torch.isfinite(values)).any().long(), torch.full((), signum, dtype=torch.long, device=values.device)]
        )
        nonfinite, signum = all_reduce(flags, self.env, op="max").tolist()
        return bool(nonfinite), int(signum)

    def _skipped(self, values: torch.Tensor, nonfinite: bool) -> None:
        """Undo the skipped forward's traces, count it, and stop after too many in a row."""
        self.head.skip()
        self._forward_state.restore()
        state = self.state
        state.skipped_steps += 1
        state.nonfinite_streak += 1
        step = state.step + 1
        loss, backbone_norm, head_norm = values.tolist()
        if not nonfinite:
            what = "the loss scaler found an overflow"
        elif loss - loss != 0:  # NaN or inf
            what = f"the loss became {loss}"
        else:
            what = f"the gradient norm became non-finite (backbone {backbone_norm}, head {head_norm})"
        log.warning(
            "step %d skipped, no update: %s; %d in a row, %d in all",
            step,
            what,
            state.nonfinite_streak,
            state.skipped_steps,
        )
        limit = self.options.max_nonfinite_steps
        if state.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"{what} at step {step}; steps {step - limit + 1} to {step} were all skipped "
                f"(train.max_nonfinite_steps={limit}): try a lower optim.lr, gradient clipping "
                f"(optim.clip_grad_norm > 0) or train.amp=off, or check the data; the last good checkpoint is kept"
            )

    # ------------------------------------------------------------------------------------------ the loop
    def extra_scalars(self) -> Dict[str, float]:
        """Optional statistics that components expose: the loader's skipped-record count (`stats`) and a
        loss's own terms (`last_stats`, e.g. SFace's intra/inter parts), plus the skipped steps.
        Duck-typed, so the loop stays generic."""
        values: Dict[str, float] = {"train/skipped_steps": float(self.state.skipped_steps)}
        for tag, value in (getattr(self.loader, "stats", None) or {}).items():
            values[f"data/{tag}"] = float(value)
        margin_loss = getattr(self.head.module, "margin_loss", None)
        for tag, value in (getattr(margin_loss, "last_stats", None) or {}).items():
            values[f"loss/{tag}"] = float(value)
        return values

    def notify(self, event: str, **kwargs: Any) -> None:
        """Call `event` on every listener that defines it (see the class docstring)."""
        for listener in self.listeners:
            handler = getattr(listener, event, None)
            if handler is not None:
                handler(self, **kwargs)

    def evaluation_model(self) -> nn.Module:
        """What evaluation runs: the plain backbone, or the strategy's view of it (`eval_model()`: e.g. a fp32 copy
        of a bf16 DeepSpeed engine's backbone)."""
        eval_model = getattr(self.strategy, "eval_model", None)
        return eval_model() if eval_model is not None else self.strategy.module

    def run_evaluation(self) -> None:
        if self.evaluate is None:
            return
        step = self.state.step
        self.eval_results[step] = self.evaluate(self.evaluation_model(), step)
        self.notify("on_evaluation", step=step, results=self.eval_results[step])

    def _settle_loss(self) -> float:
        if self._last_loss is not None:
            self.state.last_loss = float(self._last_loss)
        return self.state.last_loss

    def state_dict(self) -> Dict[str, Any]:
        """The loop's own counters (the checkpoint manager saves the other parts beside them)."""
        state = self.state
        return {
            "step": state.step,
            "epoch": state.epoch,
            "last_loss": self._settle_loss(),
            "skipped_steps": state.skipped_steps,
            "nonfinite_streak": state.nonfinite_streak,
            "history": state.history,
            "eval_results": self.eval_results,
        }

    def load_state_dict(self, saved: Dict[str, Any]) -> None:
        self.state = TrainState(
            step=int(saved["step"]),
            epoch=int(saved["epoch"]),
            last_loss=float(saved["last_loss"]),
            skipped_steps=int(saved["skipped_steps"]),
            nonfinite_streak=int(saved["nonfinite_streak"]),
            history={k: [tuple(v) for v in values] for k, values in saved["history"].items()},
        )
        self.eval_results = dict(saved["eval_results"])
        self._last_loss = None

    def _save(self, epoch_end: bool = False, force: bool = False) -> Optional[str]:
        if self.checkpoints is None:
            return None
        step = self.state.step
        path = self.checkpoints.save(step) if force else self.checkpoints.maybe_save(step, epoch_end=epoch_end)
        if path:
            self.notify("on_checkpoint", step=step, path=path)
        return path

    def fit(self) -> TrainState:
        if self.checkpoints is not None and self.checkpoints.load():
            log.info(
                "resumed from %s at step %d (epoch %d)", self.checkpoints.resume_dir, self.state.step, self.state.epoch
            )
        state, options = self.state, self.options
        start = time.perf_counter()
        while state.step < options.total_steps:
            self.loader.set_epoch(state.epoch)
            micro: List[Tuple[torch.Tensor, torch.Tensor]] = []
            for batch in self.loader:
                micro.append(batch)
                if len(micro) < options.gradient_accumulation:
                    continue
                # An epoch's last batches that do not fill a step are left out, as the loader drops its last
                # partial batch; checkpoints are taken between steps, so a resume starts a whole group.
                images, labels = micro[0] if len(micro) == 1 else tuple(map(list, zip(*micro)))
                micro = []
                loss = self.train_step(images, labels)
                state.step += 1
                self.metrics.update(loss)
                if state.step % options.log_every == 0 or state.step == options.total_steps:
                    self._settle_loss()
                    stats = self.metrics.log(state.step, state.epoch, self.strategy.lr(), self.extra_scalars())
                    state.history["loss"].append((state.step, stats["loss"]))
                    state.history["samples_per_sec"].append((state.step, stats["samples_per_sec"]))
                if options.eval_every and state.step % options.eval_every == 0 and state.step < options.total_steps:
                    self.run_evaluation()
                self._save()
                self.notify("on_step_end", step=state.step)
                if state.step >= options.total_steps:
                    break
                if self._stop:
                    raise TrainingInterrupted(self._stop, state.step, self._save(force=True))
            else:  # the epoch ran to its end (a stop at total_steps mid-epoch leaves the epoch unfinished)
                state.epoch += 1
                self._save(epoch_end=True)
                self.notify("on_epoch_end", epoch=state.epoch)
        self.head.check()
        self._settle_loss()
        self._save(force=True)
        self.run_evaluation()
        self.notify("on_train_end")
        log.info(
            "training done: %d steps (%d skipped) in %.1f s",
            state.step,
            state.skipped_steps,
            time.perf_counter() - start,
        )
        return state
