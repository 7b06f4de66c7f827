"""Starting weights from earlier training: backbone weights from any file or directory fr accepts as a model
(`model.pretrained`, fr-eval's --checkpoint) and Partial FC class centres from a merged classifier
(`partial_fc.pretrained`)."""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from fr.config import Config, ConfigError
from fr.distributed import DistEnv, all_gather_object
from fr.train.checkpoint import export_backbone, find_checkpoint
from fr.train.model_file import CheckpointError, load_backbone_with, load_error, load_into, read_model_file

log = logging.getLogger("fr.train")


def read_weights(path: str) -> Tuple[str, Dict[str, torch.Tensor]]:
    """(source, state_dict) of the backbone in `path`: a model.pt (fr's or insightface's, with or without DDP's
    `module.` prefix), a run directory (its model.pt, else its newest resumable checkpoint), a run's
    `checkpoints/` directory or one `step_*` directory."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.pt")):
        step_dir = find_checkpoint(path)
        return step_dir, export_backbone(step_dir)
    return read_model_file(path)


def load_backbone(
    checkpoint: str,
    backbone: Optional[str] = None,
    embedding_size: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """fr.train.model_file.load_backbone_with for any source read_weights accepts (resumable checkpoints too)."""
    return load_backbone_with(checkpoint, backbone, embedding_size, device, read_weights=read_weights)


def read_class_centres(path: str, num_classes: int, embedding_size: int, rows: Tuple[int, int]) -> torch.Tensor:
    """Rows [start, end) of the class centres [C, D] in `path`: a merged classifier (`fr-export checkpoint`'s
    `head_weight`) or a bare [C, D] tensor. C and D must be this run's; only the rows asked for are read."""
    if os.path.isdir(path):
        raise CheckpointError(
            f"{path} is a directory; write its merged classifier with `fr-export checkpoint {path} --out merged.pt`"
        )
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated zip, pickle garbage, a refused global, ...
        raise load_error(path, exc, "merged classifier") from None
    weight = saved.get("head_weight") if isinstance(saved, dict) else saved
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise CheckpointError(
            f"{path}: expected a merged classifier (fr-export checkpoint's head_weight, class centres [C, D])"
        )
    if tuple(weight.shape) != (num_classes, embedding_size):
        raise CheckpointError(
            f"{path}: holds {weight.shape[0]} class centres of dimension {weight.shape[1]}, but this run has "
            f"{num_classes} classes and model.embedding_size={embedding_size}"
        )
    start, end = rows
    return weight[start:end].clone()


def _agree(env: DistEnv, key: str, load) -> None:
    """Run `load` on every rank; a failure on any rank raises the same one-line error on all of them (a file
    one rank cannot read must not leave the others waiting in the next collective)."""
    try:
        problem = None
        load()
    except CheckpointError as exc:
        problem = str(exc)
    problems = [p for p in all_gather_object(problem, env) if p is not None]
    if problems:
        raise ConfigError(f"{key}: {problems[0]}")


def load_pretrained(cfg: Config, backbone: nn.Module, head: nn.Module, env: DistEnv, resumed: bool) -> None:
    """Start `backbone` from `model.pretrained` and the Partial FC `head`'s class shard from
    `partial_fc.pretrained`, when set, on every rank (a collective call). A resumed run keeps its checkpoint's
    weights: both settings are then ignored, as the log says."""
    if resumed:
        for key, path in (
            ("model.pretrained", cfg.model.pretrained),
            ("partial_fc.pretrained", cfg.partial_fc.pretrained),
        ):
            if path:
                log.info("%s=%s is ignored: the run resumes from its checkpoint, whose weights win", key, path)
        return
    if cfg.model.pretrained:
        path = cfg.model.pretrained

        def load_model() -> None:
            source, state = read_weights(path)
            load_into(backbone, state, source, cfg.model.backbone)
            if env.is_main:
                log.info("model.pretrained: backbone %s starts from %s", cfg.model.backbone, source)

        _agree(env, "model.pretrained", load_model)
    if cfg.partial_fc.pretrained:
        path = cfg.partial_fc.pretrained
        rows = (head.class_start, head.class_start + head.num_local)  # this rank's shard (PartialFC's split)

        def load_head() -> None:
            centres = read_class_centres(path, head.num_classes, head.embedding_size, rows)
            with torch.no_grad():
                head.weight.copy_(centres.to(head.weight.device))
            if env.is_main:
                log.info("partial_fc.pretrained: %d class centres start from %s", head.num_classes, path)

        _agree(env, "partial_fc.pretrained", load_head)
