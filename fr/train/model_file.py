"""`model.pt`, the trained backbone's state_dict: atomic saves, reading one (fr's or insightface's) with one-line
errors, and loading it into the backbone its run's config.json names.

Resumable checkpoints (step directories) are read by fr.train.pretrained, which passes its reader to
`load_backbone_with`: fr.train.checkpoint imports this module, so this one cannot import it back."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from evaluation.fileio import atomic_write
from fr.config import Config, ConfigError, load_file
from fr.errors import CheckpointError  # noqa: F401  (fr.train.model_file.CheckpointError for its callers)


def load_error(path: str, exc: Exception, what: str = "checkpoint") -> CheckpointError:
    """One line for a failed `torch.load(weights_only=True)`: the refused global (code the file would run), or
    the reason without torch's multi-line preamble (which suggests weights_only=False)."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return CheckpointError(
            f"{path}: refused to load global '{refused.group(1)}' (a checkpoint holds only tensors and plain data)"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text) or re.search(r"(\S.*)", text)
    reason = f": {detail.group(1).strip()}" if detail else ""
    return CheckpointError(f"{path}: not a readable {what} ({type(exc).__name__}{reason})")


# Files that hold a backbone's state_dict under a key: a generic {"state_dict": ...}, arcface_torch's resumable
# checkpoint_gpu_<rank>.pt and `fr-export checkpoint`'s merged file.
WRAPPERS = ("state_dict", "state_dict_backbone", "backbone")
SHOWN_KEYS = 3  # how many disagreeing keys an error names


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`.

    A crash at any moment leaves either the previous file or the new one, never a truncated one.
    """
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a `model.pt` state_dict (insightface's or fr's, with or without DDP's `module.` prefix; also the backbone
    inside a file of WRAPPERS), with one-line errors for bad files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, ...
        raise load_error(path, exc, "PyTorch checkpoint") from None
    for wrapper in WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    # Checkpoints saved from a DDP-wrapped model carry a 'module.' prefix.
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model: nn.Module, state: Dict[str, torch.Tensor], source: str, backbone_name: str) -> nn.Module:
    """load_state_dict(strict) with an error that says which backbone and which keys disagree."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {_first(unexpected)})")
        if shapes:
            shown = ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes[:SHOWN_KEYS]
            )
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shown})")
        raise CheckpointError(f"{source} does not match backbone {backbone_name!r}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return model


def _first(keys) -> str:
    return ", ".join(keys[:SHOWN_KEYS])


def run_directory(checkpoint: str) -> str:
    """The run directory of `checkpoint`: a model.pt's directory, a run directory itself, or the run above a
    `checkpoints/` directory or one of its `step_*` directories."""
    path = os.path.abspath(checkpoint)
    if not os.path.isdir(path):
        return os.path.dirname(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    parent = os.path.dirname(path)
    if os.path.basename(path) == "checkpoints":
        return parent
    if os.path.basename(parent) == "checkpoints":
        return os.path.dirname(parent)
    return path


def find_run_config(checkpoint: str) -> Optional[Config]:
    """The config.json of the run `checkpoint` (see run_directory) belongs to, if there is one."""
    path = os.path.join(run_directory(checkpoint), "config.json")
    if not os.path.isfile(path):
        return None
    try:
        return load_file(path)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# path -> (what the weights were read from, the backbone's state_dict)
WeightReader = Callable[[str], Tuple[str, Dict[str, torch.Tensor]]]


def read_model_file(checkpoint: str) -> Tuple[str, Dict[str, torch.Tensor]]:
    """The weights of a model.pt, or of a run directory's model.pt."""
    path = os.path.join(checkpoint, "model.pt") if os.path.isdir(checkpoint) else checkpoint
    return path, load_state_dict_file(path)


def load_backbone_with(
    checkpoint: str,
    backbone: Optional[str] = None,
    embedding_size: Optional[int] = None,
    device: Optional[torch.device] = None,
    read_weights: WeightReader = read_model_file,
) -> nn.Module:
    """Build the backbone for `checkpoint` (a run directory or a model.pt; `read_weights` may accept more, see
    fr.train.pretrained.load_backbone) and load its weights.

    The architecture comes from the run's config.json when present; `backbone`/`embedding_size` override it
    (needed for a bare insightface model.pt).
    """
    from fr.models import build_backbone

    cfg = find_run_config(checkpoint)
    name = backbone or (cfg.model.backbone if cfg else None)
    if name is None:
        raise CheckpointError(
            f"{checkpoint}: no config.json in its run directory; pass the backbone name (e.g. --backbone iresnet50)"
        )
    kwargs = dict(cfg.model.kwargs) if cfg and cfg.model.backbone == name else {}
    kwargs["num_features"] = embedding_size or (cfg.model.embedding_size if cfg else 512)
    model = build_backbone(name, **kwargs)
    source, state = read_weights(checkpoint)
    load_into(model, state, source, name)
    model.eval()
    return model.to(device) if device is not None else model
