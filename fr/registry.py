"""Name -> factory registries (backbones, losses, objectives, ...) with errors that suggest what was meant."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Iterable, List, TypeVar
from evaluation.errors import UserInputError

T = TypeVar("T", bound=Callable[..., Any])


class UnknownNameError(KeyError, UserInputError):
    """A name that is not registered; catchable as KeyError or ValueError."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'a' or 'b'?)' for close matches of `word`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def keyword_names(factory: Callable[..., Any]) -> List[str]:
    """The keyword arguments a factory (function or class) accepts, or [] if it takes **kwargs."""
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class Registry:
    """Factories by name: `register(name)` decorates, `build(name, **kwargs)` checks keywords and calls."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"by {getattr(self._entries[name], '__qualname__', self._entries[name])}")
            self._entries[name] = factory
            return factory

        return decorator

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{suggest(name, self._entries)}; "
                                   f"accepted: {', '.join(self.names())}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as `name`; an unknown or missing keyword is a one-line ValueError."""
        factory = self.get(name)
        params = inspect.signature(factory).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = keyword_names(factory)
            for key in sorted(set(kwargs) - set(accepted)):
                raise ValueError(f"{self.kind} {name!r} has no parameter {key!r}{suggest(key, accepted)}; "
                                 f"accepted: {', '.join(accepted) or '(none)'}")
            missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs
                       and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            if missing:
                raise ValueError(f"{self.kind} {name!r} needs parameter(s) {', '.join(missing)}")
        return factory(**kwargs)
