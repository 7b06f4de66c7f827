"""Backbone registry: maps a config's backbone name to a factory `(**kwargs) -> nn.Module`."""

from __future__ import annotations

from fr.registry import Registry, UnknownNameError

BACKBONES = Registry("backbone")
UnknownBackboneError = UnknownNameError
register_backbone = BACKBONES.register
build_backbone = BACKBONES.build
list_backbones = BACKBONES.names
