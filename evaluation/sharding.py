"""Embedding across ranks (torchrun): each rank takes a contiguous shard of rows; rank 0 gets them all in order."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


def shard_rows(n: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous rows of `n`, split as `np.array_split` (the first `n % world` shards one longer)."""
    if n < world_size:
        raise ValueError(f"cannot shard {n} rows over {world_size} ranks")
    return np.array_split(np.arange(n), world_size)[rank]


def gather_rows(
    local: np.ndarray, n: int, rank: int, world_size: int, device: Optional[torch.device] = None
) -> Optional[np.ndarray]:
    """All ranks' `local` shards (from `shard_rows`) concatenated in row order on rank 0; None elsewhere.

    Shards are padded to one size so a plain all_gather works on gloo and NCCL alike (`device`: the NCCL
    rank's GPU).
    """
    if world_size == 1:
        return local
    sizes = [len(s) for s in np.array_split(np.arange(n), world_size)]
    padded = torch.zeros((sizes[0],) + local.shape[1:], dtype=torch.float32, device=device)
    padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, np.float32)).to(padded.device)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    if rank != 0:
        return None
    return np.concatenate([p[:size].cpu().numpy() for p, size in zip(parts, sizes)])
