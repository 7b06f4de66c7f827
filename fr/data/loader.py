"""build_loader: rank-sharded batches of normalised images and labels on the training device."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, Iterator, Set, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from evaluation.preprocess import normalize
from fr.data.augment import build_augment
from fr.data.base import DataError, EpochPosition
from fr.data.datasets import RecordDataset, open_dataset
from fr.distributed import DistEnv
from fr.registry import Registry
from fr.seeding import mix_seed

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
    """This rank's share of the epoch's permutation (DistributedSampler, drop_last), from position `start`,
    each index paired with a per-sample seed mixed from (seed, epoch, index).

    The seed fixes the sample's flip and augmentation, so a run resumed mid-epoch draws exactly what the
    uninterrupted run would have, whatever the number of workers.
    """

    def __init__(self, dataset: Dataset, env: DistEnv, seed: int):
        self.permutation = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                              shuffle=True, seed=seed, drop_last=True)
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.permutation.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.permutation) - self.start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        indices = list(self.permutation)[self.start:]
        return iter([(index, mix_seed(self.seed, self.epoch, index)) for index in indices])


class DeviceLoader(EpochPosition):
    """Iterates (images [B,3,H,W] float in [-1,1], labels [B] int64) on `device`; every rank sees
    the same number of equally sized batches (the head's all-gather needs equal sizes).

    `skipped` counts the records skipped by the check before training plus those replaced while training
    because they could not be read or decoded, each record once (not once per epoch or per replacement),
    for the trainer's logs. `state_dict` holds the epoch and the batches consumed in it,
    so a resumed loader continues mid-epoch with the same samples, flips and augmentations.
    """

    def __init__(self, dataset: RecordDataset, batch_size: int, env: DistEnv, num_workers: int, seed: int):
        self.dataset = dataset
        self.device = env.device
        self.batch_size = batch_size
        self.skipped_by_check = int(getattr(dataset, "skipped", 0))  # skipped by the check before training
        self.skipped_keys: Set[int] = set()  # skipped while training
        self.sampler = ResumableSampler(dataset, env, seed)
        self.steps = len(self.sampler) // batch_size
        if self.steps < 1:
            raise DataError(f"data.batch_size={batch_size} is larger than this rank's share of the data set "
                             f"({len(self.sampler)} of {len(dataset)} images over {env.world_size} ranks)")
        self.loader = DataLoader(_Counting(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, drop_last=True, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return self.steps

    @property
    def skipped(self) -> int:
        return self.skipped_by_check + len(self.skipped_keys)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.consumed * self.batch_size
        for images, labels, skipped in self.loader:
            self.skipped_keys.update(key for key in skipped.flatten().tolist() if key >= 0)
            images = normalize(images.to(self.device, non_blocking=non_blocking))
            self.consumed += 1
            yield images, labels.to(self.device, non_blocking=non_blocking).long()
        self._end_epoch()

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "skipped_keys": sorted(self.skipped_keys)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self.skipped_keys = {int(key) for key in state.get("skipped_keys", ())}


@LOADERS.register("torch")
def build_torch_loader(cfg: DataConfig, env: DistEnv, seed: int) -> DeviceLoader:
    dataset = open_dataset(cfg.root, num_classes=cfg.num_classes, image_size=cfg.image_size, flip=True,
                           augment=build_augment(cfg.augment), cache_dir=cfg.cache_dir)
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
    """"auto" is DALI when it is installed, the torch DataLoader otherwise."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    return name


def build_loader(cfg: DataConfig, env: DistEnv, seed: int = 0):
    """The configured loader over `cfg.root`; `cfg.loader` ("torch", "dali", "auto") selects it."""
    name = resolve_loader_name(cfg.loader)
    build = LOADERS.get(name)
    log.info("data loader: %s", name)
    return build(cfg, env, seed)
