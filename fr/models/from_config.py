"""The backbone a Config describes: model.backbone with model.kwargs, model.embedding_size, model.dropout,
model.grad_checkpoint and data.image_size, so that training, export and fr-info build the same network."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Dict

from torch import nn

from fr.models.registry import BACKBONES
from fr.registry import keyword_names

if TYPE_CHECKING:  # fr.config imports the registry to validate names; keep the import one-way at runtime
    from fr.config import Config

DEFAULT_IMAGE_SIZE = 112


def backbone_kwargs(cfg: Config) -> Dict[str, Any]:
    """The keywords for ``build_backbone(cfg.model.backbone, ...)``.

    ``data.image_size`` becomes ``input_size`` (a backbone without that keyword is only accepted at 112);
    ``model.dropout`` and ``model.grad_checkpoint`` are passed when set, so a backbone that lacks them fails
    with a one-line error naming the keyword rather than silently ignoring the setting.
    """
    from fr.config import ConfigError

    kwargs: Dict[str, Any] = dict(cfg.model.kwargs)
    kwargs["num_features"] = cfg.model.embedding_size
    size = cfg.data.image_size
    if "input_size" in kwargs and kwargs["input_size"] != size:
        raise ConfigError(
            f"model.kwargs.input_size={kwargs['input_size']} disagrees with data.image_size={size}; "
            "set data.image_size only"
        )
    factory = BACKBONES.get(cfg.model.backbone)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    if size != DEFAULT_IMAGE_SIZE or takes_any or "input_size" in keyword_names(factory):
        kwargs["input_size"] = size
    if cfg.model.dropout:
        kwargs["dropout"] = cfg.model.dropout
    if cfg.model.grad_checkpoint:
        kwargs["grad_checkpoint"] = True
    return kwargs


def backbone_from_config(cfg: Config) -> nn.Module:
    """The configured backbone, on the current default device (``torch.device("meta")`` builds it for free)."""
    return BACKBONES.build(cfg.model.backbone, **backbone_kwargs(cfg))
