"""build_loader: rank-sharded batches of normalised images and labels on the training device."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterator, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fr.config import DataConfig
from fr.data.augment import build_augment
from fr.data.datasets import RecordDataset, open_dataset
from fr.distributed import DistEnv

log = logging.getLogger(__name__)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """insightface's input normalisation: (x / 255 - 0.5) / 0.5, to float32 in [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


class _Counting(Dataset):
    """Exposes `dataset.load` (image, label, records skipped) so skips are counted in the main process:
    worker processes cannot update a counter the trainer sees, so the count travels with the batch."""

    def __init__(self, dataset: RecordDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.load(index)


class DeviceLoader:
    """Iterates (images [B,3,H,W] float in [-1,1], labels [B] int64) on `device`; every rank sees
    the same number of equally sized batches (the head's all-gather needs equal sizes).

    `skipped` counts records replaced because they could not be read or decoded (plus those left out by
    the header check), for the trainer's logs.
    """

    def __init__(self, dataset: RecordDataset, batch_size: int, env: DistEnv, num_workers: int, seed: int):
        self.dataset = dataset
        self.device = env.device
        self.skipped = int(getattr(dataset, "garbled", 0))
        self.sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=True, seed=seed, drop_last=True)
        if len(self.sampler) < batch_size:
            raise ValueError(f"data.batch_size={batch_size} is larger than this rank's share of the data set "
                             f"({len(self.sampler)} of {len(dataset)} images over {env.world_size} ranks)")
        generator = torch.Generator()
        generator.manual_seed(seed + env.rank)
        self.loader = DataLoader(_Counting(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, drop_last=True, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0, generator=generator)

    @property
    def stats(self) -> Dict[str, int]:
        return {"skipped_records": self.skipped}

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels, skipped in self.loader:
            self.skipped += int(skipped.sum())
            images = normalize(images.to(self.device, non_blocking=non_blocking))
            yield images, labels.to(self.device, non_blocking=non_blocking).long()


def build_torch_loader(cfg: DataConfig, env: DistEnv, seed: int) -> DeviceLoader:
    dataset = open_dataset(cfg.root, num_classes=cfg.num_classes, image_size=cfg.image_size, flip=True,
                           augment=build_augment(cfg.augment))
    return DeviceLoader(dataset, cfg.batch_size, env, cfg.num_workers, seed)


def build_dali_loader(cfg: DataConfig, env: DistEnv, seed: int):
    from fr.data.dali import DaliLoader

    return DaliLoader.from_config(cfg, env, seed)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


LOADERS: Dict[str, Callable] = {"torch": build_torch_loader, "dali": build_dali_loader}


def resolve_loader_name(name: str) -> str:
    """"auto" is DALI when it is installed, the torch DataLoader otherwise."""
    if name == "auto":
        return "dali" if dali_available() else "torch"
    return name


def build_loader(cfg: DataConfig, env: DistEnv, seed: int = 0):
    """The configured loader over `cfg.root`; `cfg.loader` ("torch", "dali", "auto") selects it."""
    name = resolve_loader_name(cfg.loader)
    if name not in LOADERS:
        raise ValueError(f"data.loader={cfg.loader!r}; choose from {['auto', *LOADERS]}")
    log.info("data loader: %s", name)
    return LOADERS[name](cfg, env, seed)
