"""model.pt while a run trains: a training-loop listener that replaces it atomically at its cadence, so that fr-eval
can evaluate a run before it ends."""

from __future__ import annotations

import logging

from fr.train.model_file import atomic_save

log = logging.getLogger("fr.train")


class ModelSnapshots:
    """Writes the backbone to `path` (main rank) every `every` steps, or at each epoch's end when `every` is 0
    (`output.model_every`). The run's last step is left out: fr.train.run writes model.pt then anyway.

    Each write goes to a temporary file renamed over `path`, so a reader never sees a partial file."""

    def __init__(self, path: str, every: int = 0):
        if every < 0:
            raise ValueError(f"every must be >= 0, got {every}")
        self.path, self.every = path, every

    def on_step_end(self, trainer, step: int) -> None:
        if self.every and step % self.every == 0:
            self._write(trainer)

    def on_epoch_end(self, trainer, epoch: int) -> None:
        if not self.every:
            self._write(trainer)

    def _write(self, trainer) -> None:
        step = trainer.state.step
        if step >= trainer.options.total_steps or not trainer.env.is_main:
            return
        atomic_save(trainer.strategy.export_backbone(), self.path)
        log.info("model.pt at step %d (epoch %d): %s", step, trainer.state.epoch, self.path)
