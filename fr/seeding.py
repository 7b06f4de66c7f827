"""Seeds and random-generator state: counter-based seed mixing, seeding a process, saving and restoring its
generators (torch CPU/CUDA, NumPy, Python) for a resumed run."""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Fold integers into one 63-bit seed (splitmix64 finaliser), so neighbouring tuples give unrelated seeds."""
    state = 0
    for value in values:
        z = (state ^ (value & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def seed_everything(seed: int, rank: int) -> None:
    # Same backbone initialisation on every rank (DDP also broadcasts it); per-rank data randomness.
    torch.manual_seed(seed)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)


def rng_state(device: torch.device) -> Dict[str, Any]:
    """This process's random generators (torch CPU/CUDA, NumPy, Python), in torch.load(weights_only) types."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
