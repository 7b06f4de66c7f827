"""Periodic verification during training: the configured .bin sets, logged to console and TensorBoard; and the
two views (original and flipped images) behind a flip-sum embedding, which fr-eval shares."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from torch import nn

from evaluation import embed_images, evaluate, load_bin
from evaluation.bin_format import BinFormatError
from fr.config import ConfigError
from fr.distributed import DistEnv, barrier

log = logging.getLogger("fr.train")

FOLDS = 10  # insightface's 10-fold protocol; every set needs at least this many pairs


class EvaluationFailed(RuntimeError):
    """An evaluation during training failed; raised once model.pt and results.json are written (`results`)."""

    def __init__(self, message: str, results: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.results = results or {}


def flip_views(model: nn.Module, images: np.ndarray, batch_size: int, device=None) -> Tuple[np.ndarray, np.ndarray]:
    """The embeddings of `images` (uint8 [M, H, W, 3]) and of their horizontal flips, each [M, D]: their sum is
    embed_images(..., flip=True), and insightface's XNorm is the mean norm of their rows."""
    flipped = np.ascontiguousarray(images[:, :, ::-1, :])
    return tuple(embed_images(model, x, batch_size=batch_size, device=device, flip=False) for x in (images, flipped))


def resolve_bin(path: str, data_root: str) -> str:
    """A `.bin` named relative to the data root (e.g. `lfw.bin` or `lfw`) or an explicit path."""
    candidates = [path, os.path.join(data_root, path), os.path.join(data_root, path + ".bin")]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"eval.bins: verification set {path!r} not found (looked for {', '.join(candidates)})")


class VerificationHook:
    """Loads and checks the sets on the main rank (`load`, before training); `__call__` evaluates there while
    the other ranks wait. A failing evaluation is logged and kept in `errors`, and training goes on."""

    def __init__(
        self, bins: List[str], data_root: str, env: DistEnv, batch_size: int, image_size: int = 112, folds: int = FOLDS
    ):
        self.env = env
        self.enabled = bool(bins)  # the same on every rank, so all of them take part in the barrier
        self.bins, self.data_root, self.image_size = list(bins), data_root, image_size
        self.batch_size, self.folds = batch_size, folds
        self.sets: List[Tuple[str, np.ndarray, np.ndarray]] = []
        self.best: Dict[str, float] = {}
        self.errors: List[str] = []

    def load(self) -> None:
        """Read and check every set (call on the main rank): a missing or malformed file, or fewer pairs than
        the protocol's folds, fails here rather than at the first evaluation."""
        for item in self.bins:
            path = resolve_bin(item, self.data_root)
            images, issame = load_bin(path, image_size=self.image_size)
            if len(issame) < self.folds:
                raise BinFormatError(
                    f"{path}: {len(issame)} pairs, but the {self.folds}-fold verification "
                    f"protocol needs at least {self.folds}"
                )
            name = os.path.splitext(os.path.basename(path))[0]
            self.sets.append((name, images, issame))
            log.info("verification set %s: %d pairs", name, len(issame))

    def __bool__(self) -> bool:
        return self.enabled

    def __call__(self, model: nn.Module, step: int, scalars=None) -> Dict[str, Dict[str, float]]:
        """Evaluate every set; returns {name: {accuracy, std, xnorm, xnorm_insightface, best}} on the main rank,
        {} elsewhere."""
        results: Dict[str, Dict[str, float]] = {}
        if self.env.is_main:
            for name, images, issame in self.sets:
                try:
                    results[name] = self._evaluate(model, step, name, images, issame, scalars)
                except Exception as exc:  # a failed evaluation must not cost the trained model
                    log.exception("verification of %s at step %d failed", name, step)
                    self.errors.append(f"{name} at step {step}: {type(exc).__name__}: {exc}")
        barrier(self.env)
        return results

    def _evaluate(self, model, step, name, images, issame, scalars) -> Dict[str, float]:
        views = flip_views(model, images, self.batch_size, self.env.device)
        result = evaluate(views[0] + views[1], issame, nrof_folds=self.folds, views=views)
        self.best[name] = max(self.best.get(name, 0.0), result.accuracy)
        log.info(
            "[%s][%d] accuracy-flip %.5f +- %.5f  xnorm %.3f  XNorm %.3f  best %.5f",
            name,
            step,
            result.accuracy,
            result.std,
            result.xnorm,
            result.xnorm_insightface,
            self.best[name],
        )
        if scalars is not None:
            scalars(
                step,
                {
                    f"val/{name}_accuracy": result.accuracy,
                    f"val/{name}_xnorm": result.xnorm,
                    f"val/{name}_xnorm_insightface": result.xnorm_insightface,
                },
            )
        return {
            "accuracy": float(result.accuracy),
            "std": float(result.std),
            "xnorm": float(result.xnorm),
            "xnorm_insightface": float(result.xnorm_insightface),
            "best": self.best[name],
        }
