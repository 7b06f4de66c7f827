"""Backbone registry: maps a config's backbone name to a factory, with errors that say what was meant."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List

from torch import nn

BackboneFactory = Callable[..., nn.Module]

_BACKBONES: Dict[str, BackboneFactory] = {}


class UnknownBackboneError(KeyError, ValueError):
    """A backbone name that is not registered; catchable as KeyError or ValueError."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES and _BACKBONES[name] is not factory:
            raise ValueError(f"backbone {name!r} is already registered by {_BACKBONES[name].__module__}")
        _BACKBONES[name] = factory
        return factory

    return decorator


def list_backbones() -> List[str]:
    """Registered backbone names, sorted."""
    return sorted(_BACKBONES)


def _suggest(word: str, choices: List[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def _check_kwargs(name: str, factory: BackboneFactory, kwargs: Dict[str, Any]) -> None:
    """Reject keywords the factory does not take before calling it, so the error names the backbone."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in sorted(set(kwargs) - set(accepted)):
        raise ValueError(
            f"backbone {name!r} got unknown keyword {key!r}; {_suggest(key, accepted)}"
            f"accepted: {', '.join(accepted) or '(none)'}"
        )


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with the given keyword arguments."""
    factory = _BACKBONES.get(name)
    if factory is None:
        available = list_backbones()
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; {_suggest(name, available)}available: {', '.join(available)}"
        )
    _check_kwargs(name, factory, kwargs)
    return factory(**kwargs)
