"""build_loader: rank-sharded batches of normalised images and labels on the training device."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler

from fr.config import DataConfig
from fr.data.datasets import RecordDataset
from fr.distributed import DistEnv


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """insightface's input normalisation: (x / 255 - 0.5) / 0.5, to float32 in [-1, 1]."""
    return images_uint8.float().div_(127.5).sub_(1.0)


class DeviceLoader:
    """Iterates (images [B,3,H,W] float in [-1,1], labels [B] int64) on `device`; every rank sees
    the same number of equally sized batches (the head's all-gather needs equal sizes)."""

    def __init__(self, dataset: RecordDataset, batch_size: int, env: DistEnv, num_workers: int, seed: int):
        self.dataset = dataset
        self.device = env.device
        self.sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=True, seed=seed, drop_last=True)
        if len(self.sampler) < batch_size:
            raise ValueError(f"data.batch_size={batch_size} is larger than this rank's share of the data set "
                             f"({len(self.sampler)} of {len(dataset)} images over {env.world_size} ranks)")
        generator = torch.Generator()
        generator.manual_seed(seed + env.rank)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 drop_last=True, pin_memory=self.device.type == "cuda",
                                 persistent_workers=num_workers > 0, generator=generator)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels in self.loader:
            images = normalize(images.to(self.device, non_blocking=non_blocking))
            yield images, labels.to(self.device, non_blocking=non_blocking).long()


def build_loader(cfg: DataConfig, env: DistEnv, seed: int = 0) -> DeviceLoader:
    """The configured loader over `cfg.root`; `cfg.loader` selects the implementation."""
    dataset = RecordDataset(cfg.root, num_classes=cfg.num_classes, image_size=cfg.image_size, flip=True)
    return DeviceLoader(dataset, cfg.batch_size, env, cfg.num_workers, seed)
