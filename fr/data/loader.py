"""build_loader: each rank's part of the global batches of normalised images and labels, on the training device."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Iterator, Set, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from evaluation.preprocess import normalize
from fr.data.augment import build_augment
from fr.data.base import DataError, EpochPosition, epoch_order, rank_batches, sample_seed
from fr.data.datasets import RecordDataset, open_dataset
from fr.distributed import DistEnv
from fr.registry import Registry

if TYPE_CHECKING:  # fr.config validates data.loader against LOADERS, so it must not be imported back
    from fr.config import DataConfig

log = logging.getLogger(__name__)
# name -> (DataConfig, DistEnv, seed) -> loader; "auto" picks one (see resolve_loader_name)
LOADERS = Registry("data loader", special=("auto",))


class _Counting(Dataset):
    """Exposes `dataset.load` (image, label, keys of the records skipped) so skips are counted in the main
    process: worker processes cannot update a counter the trainer sees, so the keys travel with the batch."""

    def __init__(self, dataset: RecordDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        return self.dataset.load(index, seed)


class ResumableSampler(Sampler):
    """This rank's samples of the epoch's global batches (see fr.data.base.EpochPosition), from global batch
    `start` on, each data-set index paired with its `sample_seed`, which fixes the sample's flip and
    augmentation: a resumed run, another worker count or another world size draws the same for it."""

    def __init__(self, size: int, batch_size: int, env: DistEnv):
        self.size, self.batch_size, self.world, self.rank = size, batch_size, env.world_size, env.rank
        self.seed, self.epoch, self.start = 0, 0, 0

    def __len__(self) -> int:
        return max(0, self.size // (self.batch_size * self.world) - self.start) * self.batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        batches = rank_batches(epoch_order(self.size, self.seed, self.epoch), self.batch_size, self.world, self.rank)
        indices = batches[self.start :].reshape(-1).tolist()
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])


class DeviceLoader(EpochPosition):
    """Iterates (images [B,3,H,W] float in [-1,1], labels [B] int64) on `device`: this rank's part of each
    global batch of the epoch's order (fr.data.base), so every rank yields the same number of equally sized
    batches (the head's all-gather needs equal sizes) and the samples do not depend on the world size.

    `skipped` counts the records skipped by the check before training plus those replaced while training
    because they could not be read or decoded, each record once (not once per epoch or per replacement),
    for the trainer's logs. A record that fails is replaced by the dataset (`RecordDataset.load`: the next
    readable record in the data set's key order, drawn with the failed sample's seed), which depends on the
    record alone, not on the rank or world size. `state_dict` holds the position (`EpochPosition.position`)
    and the skipped keys, so a resumed loader continues mid-epoch with the same samples, flips and
    augmentations, also under another world size with the same global batch.
    """

    def __init__(self, dataset: RecordDataset, batch_size: int, env: DistEnv, num_workers: int, seed: int):
        self.dataset = dataset
        self.device = env.device
        self.batch_size, self.world, self.seed = batch_size, env.world_size, seed
        self.skipped_by_check = int(getattr(dataset, "skipped", 0))  # skipped by the check before training
        self.skipped_keys: Set[int] = set()  # skipped while training
        self.sampler = ResumableSampler(len(dataset), batch_size, env)
        self.steps = len(dataset) // self.global_batch
        if self.steps < 1:
            raise DataError(
                f"data.batch_size={batch_size} on {env.world_size} ranks is a global batch of "
                f"{self.global_batch} images, more than the data set holds ({len(dataset)})"
            )
        self.loader = DataLoader(
            _Counting(dataset),
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return self.steps

    @property
    def skipped(self) -> int:
        return self.skipped_by_check + len(self.skipped_keys)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        self.sampler.seed, self.sampler.epoch, self.sampler.start = self.seed, self.epoch, self.consumed
        for images, labels, skipped in self.loader:
            self.skipped_keys.update(key for key in skipped.flatten().tolist() if key >= 0)
            images = normalize(images.to(self.device, non_blocking=non_blocking))
            self._yielded()
            yield images, labels.to(self.device, non_blocking=non_blocking).long()
        self._end_epoch()

    def state_dict(self) -> Dict[str, object]:
        return {**self.position(), "skipped_keys": sorted(self.skipped_keys)}

    def close(self) -> None:
        """Stop the persistent worker processes now. Left to the garbage collector, a loader caught in a
        reference cycle loses its index queues' feeder threads before the iterator's own finaliser runs, so
        the workers never hear the stop and each is killed only after DataLoader's 5 s join timeout."""
        if self.loader._iterator is not None:  # kept by DataLoader only for persistent workers
            self.loader._iterator._shutdown_workers()
            self.loader._iterator = None

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.restore_position(state)
        self.skipped_keys = {int(key) for key in state.get("skipped_keys", ())}


@LOADERS.register("torch")
def build_torch_loader(cfg: DataConfig, env: DistEnv, seed: int) -> DeviceLoader:
    dataset = open_dataset(
        cfg.root,
        num_classes=cfg.num_classes,
        image_size=cfg.image_size,
        flip=True,
        augment=build_augment(cfg.augment),
        cache_dir=cfg.cache_dir,
    )
    return DeviceLoader(dataset, cfg.batch_size, env, cfg.num_workers, seed)


@LOADERS.register("dali")
def build_dali_loader(cfg: DataConfig, env: DistEnv, seed: int):
    from fr.data.dali import DaliLoader

    return DaliLoader.from_config(cfg, env, seed)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loader_name(name: str) -> str:
    """ "auto" is DALI when it is installed, the torch DataLoader otherwise."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    return name


def build_loader(cfg: DataConfig, env: DistEnv, seed: int = 0):
    """The configured loader over `cfg.root`; `cfg.loader` ("torch", "dali", "auto") selects it."""
    name = resolve_loader_name(cfg.loader)
    build = LOADERS.get(name)
    log.info("data loader: %s", name)
    return build(cfg, env, seed)
