"""Periodic verification during training: the configured .bin sets, logged to console and TensorBoard."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import numpy as np
from torch import nn

from evaluation import embed_images, evaluate, load_bin
from fr.distributed import DistEnv, barrier

log = logging.getLogger("fr.train")


def resolve_bin(path: str, data_root: str) -> str:
    """A `.bin` named relative to the data root (e.g. `lfw.bin` or `lfw`) or an explicit path."""
    candidates = [path, os.path.join(data_root, path), os.path.join(data_root, path + ".bin")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"verification set {path!r} not found (looked for {', '.join(candidates)})")


class VerificationHook:
    """Loads the sets once on the main rank; `__call__` evaluates there while other ranks wait."""

    def __init__(self, bins: List[str], data_root: str, env: DistEnv, batch_size: int, image_size: int = 112):
        self.env = env
        self.enabled = bool(bins)  # the same on every rank, so all of them take part in the barrier
        self.batch_size = batch_size
        self.sets: List[Tuple[str, np.ndarray, np.ndarray]] = []
        self.best: Dict[str, float] = {}
        if env.is_main:
            for item in bins:
                path = resolve_bin(item, data_root)
                images, issame = load_bin(path, image_size=image_size)
                name = os.path.splitext(os.path.basename(path))[0]
                self.sets.append((name, images, issame))
                log.info("verification set %s: %d pairs", name, len(issame))

    def __bool__(self) -> bool:
        return self.enabled

    def __call__(self, model: nn.Module, step: int, scalars=None) -> Dict[str, Dict[str, float]]:
        """Evaluate every set; returns {name: {accuracy, std, xnorm, best}} on the main rank, {} elsewhere."""
        results: Dict[str, Dict[str, float]] = {}
        if self.env.is_main:
            for name, images, issame in self.sets:
                embeddings = embed_images(model, images, batch_size=self.batch_size, device=self.env.device)
                result = evaluate(embeddings, issame)
                self.best[name] = max(self.best.get(name, 0.0), result.accuracy)
                results[name] = {"accuracy": float(result.accuracy), "std": float(result.std),
                                 "xnorm": float(result.xnorm), "best": self.best[name]}
                log.info("[%s][%d] accuracy-flip %.5f +- %.5f  xnorm %.3f  best %.5f",
                         name, step, result.accuracy, result.std, result.xnorm, self.best[name])
                if scalars is not None:
                    scalars(step, {f"val/{name}_accuracy": result.accuracy, f"val/{name}_xnorm": result.xnorm})
        barrier(self.env)
        return results
