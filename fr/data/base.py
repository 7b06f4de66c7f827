"""What the data modules share below the loaders: the data-set error, each epoch's global sample order, and a
loader's position in it."""

from __future__ import annotations

import logging
from typing import Dict, Mapping

import numpy as np

from evaluation.errors import UserInputError
from fr.seeding import mix_seed

log = logging.getLogger(__name__)


class DataError(UserInputError):
    """A data set that cannot be used as given; the message names the file or record."""


# A record that cannot be used is replaced by the next one in the index's order (both loaders); after this many
# unusable records in a row the file is given up as unusable.
MAX_REPLACEMENTS = 16


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of the whole data set: a permutation of `range(size)` drawn from (seed, epoch) alone,
    so every rank, whatever the world size, computes the same one."""
    order = np.arange(size, dtype=np.int32 if size <= np.iinfo(np.int32).max else np.int64)  # half of int64's memory
    np.random.default_rng(mix_seed(seed, epoch)).shuffle(order)  # the permutation does not depend on the dtype
    return order


def rank_batches(order: np.ndarray, batch: int, world: int, rank: int) -> np.ndarray:
    """This rank's part of each global batch of `order`, as a [steps, batch] array: global batch g is
    `order[g * B:(g + 1) * B]` with B = batch * world, and rank r takes its r-th slice of `batch` samples. The
    last incomplete global batch is dropped, so every rank has `len(order) // B` batches."""
    steps = len(order) // (batch * world)
    return order[: steps * batch * world].reshape(steps, world, batch)[:, rank]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws (flip, augmentations): from (seed, epoch, data-set index) alone, so
    neither the rank, the world size, the worker count nor a resume changes them."""
    return mix_seed(seed, epoch, index)


def flip_coin(seed: int) -> bool:
    """Whether the sample with this `sample_seed` is mirrored: one bit of the well-mixed seed is a fair coin,
    and far cheaper than a generator."""
    return bool((seed >> 17) & 1)


class EpochPosition:
    """Where a loader stands in the run's sample order, and `stats` for the trainer's logs (`skipped` records).

    Each epoch's order is `epoch_order(len(data set), seed, epoch)`, cut into `steps` global batches of
    `batch_size * world` samples (`rank_batches`). The position is the epoch and the global batches yielded in
    it (`consumed`); `step` counts the batches yielded over the whole run, which is the trainer's step.
    `position()` writes it as a global sample offset, so it does not depend on the world size, and
    `restore_position` continues from it. Setting another epoch starts it at its first batch; setting the
    current one (as a resumed run does) keeps the position.
    """

    epoch = 0
    consumed = 0  # global batches yielded in the current epoch
    step = 0  # batches yielded over the run
    skipped = 0
    seed = 0
    batch_size = 1  # per rank
    world = 1
    steps = 0  # global batches per epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def stats(self) -> Dict[str, int]:
        return {"skipped_records": self.skipped}

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.consumed = 0
        self.epoch = epoch

    def _yielded(self) -> None:
        self.consumed += 1
        self.step += 1

    def _end_epoch(self) -> None:
        self.consumed = 0
        self.epoch += 1

    def position(self) -> Dict[str, int]:
        """The position as saved in checkpoints: epoch, the global sample offset in its order, the global batch
        it was taken with, the seed of the order, and the run's step."""
        return {
            "epoch": self.epoch,
            "offset": self.consumed * self.global_batch,
            "global_batch": self.global_batch,
            "seed": self.seed,
            "step": self.step,
        }

    def restore_position(self, state: Mapping[str, int]) -> None:
        """Continue at the position `state` (from `position()`) names, whatever world size wrote it.

        The saved seed's order continues (a warning when it is not this loader's seed). With the same global
        batch the next batch starts at the saved sample offset, so the run continues with exactly the samples
        and flips it would have had. With another global batch it continues at this loader's first global batch
        that starts at or after the saved offset (the samples in between are not seen in that epoch; an epoch
        with no such batch left ends there), and a warning names the step from which the batches differ from
        the saved run's. A state from before the global order (`consumed` batches, no offset) is read as taken
        with this loader's global batch.
        """
        saved_batch = int(state.get("global_batch", self.global_batch))
        offset = int(state["offset"]) if "offset" in state else int(state["consumed"]) * saved_batch
        epoch, step, seed = int(state["epoch"]), int(state.get("step", 0)), int(state.get("seed", self.seed))
        if seed != self.seed:
            log.warning(
                "data: the checkpoint's sample order was drawn with seed %d, not the configured %d: the "
                "resumed run continues the checkpoint's order",
                seed,
                self.seed,
            )
        consumed = min(-(-offset // self.global_batch), self.steps)
        if saved_batch != self.global_batch:
            at = consumed * self.global_batch
            where = (
                f"epoch {epoch} continues at sample {at} of its order ({at - offset} samples skipped)"
                if consumed < self.steps
                else f"epoch {epoch} ends there ({self.steps} batches fit in it)"
            )
            log.warning(
                "data: the checkpoint was taken with a global batch of %d images at sample %d of epoch %d; "
                "this run's global batch is %d (%d ranks x %d): from step %d on, the batches differ from "
                "the checkpointed run's: %s",
                saved_batch,
                offset,
                epoch,
                self.global_batch,
                self.world,
                self.batch_size,
                step + 1,
                where,
            )
        self.epoch, self.consumed, self.step, self.seed = epoch, consumed, step, seed
