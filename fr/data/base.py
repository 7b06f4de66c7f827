"""What the data modules share below the loaders: the data-set error and a loader's epoch position."""
from __future__ import annotations

from typing import Dict

from evaluation.errors import UserInputError


class DataError(UserInputError):
    """A data set that cannot be used as given; the message names the file or record."""


class EpochPosition:
    """Where a loader stands: the epoch and the batches yielded in it (what a resumed run continues from),
    and `stats` for the trainer's logs (`skipped` records). Setting another epoch starts it at its first
    batch; setting the current one (as a resumed run does) keeps the position."""

    epoch = 0
    consumed = 0  # batches yielded in the current epoch
    skipped = 0

    @property
    def stats(self) -> Dict[str, int]:
        return {"skipped_records": self.skipped}

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def _end_epoch(self) -> None:
        self.consumed = 0
        self.epoch += 1
