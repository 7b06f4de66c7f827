"""Name -> factory registries (backbones, losses, objectives, ...) with errors that suggest what was meant."""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Tuple, TypeVar

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
    """Factories by name: `register(name)` decorates, `get(name)` looks up, `build(name, **kwargs)` checks
    keywords and calls. Iteration follows registration order; `names()` is sorted.

    `special` lists names such as "auto" that callers resolve themselves before a lookup: they are valid
    choices (in `choices()`, error messages and suggestions) but have no entry.
    `alias(name, target, **defaults)` adds another name for an entry (e.g. arcface_torch's "r50"), optionally
    with other keyword defaults; aliases are choices and resolve in `get`/`build`, but are not in `names()`.
    """

    def __init__(self, kind: str, special: Sequence[str] = ()):
        self.kind = kind
        self.special = tuple(special)
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._aliases: Dict[str, Tuple[str, Dict[str, Any]]] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered "
                    f"by {getattr(self._entries[name], '__qualname__', self._entries[name])}"
                )
            if name in self.special or name in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is reserved")
            self._entries[name] = factory
            return factory

        return decorator

    def alias(self, name: str, target: str, **defaults: Any) -> None:
        """Make `name` another name for the registered `target`, with `defaults` replacing its keyword defaults."""
        taken = name in self._entries or name in self.special
        if taken or self._aliases.get(name, (target, defaults)) != (target, defaults):
            raise ValueError(f"{self.kind} {name!r} is already registered")
        factory = self.get(target)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()):
            unknown = sorted(set(defaults) - set(keyword_names(factory)))
            if unknown:
                raise ValueError(f"{self.kind} alias {name!r}: {target!r} has no parameter {unknown[0]!r}")
        self._aliases[name] = (target, dict(defaults))

    def aliases(self) -> Dict[str, str]:
        """alias -> the registered name it stands for."""
        return {name: target for name, (target, _) in sorted(self._aliases.items())}

    def resolve(self, name: str) -> str:
        """The registered name behind `name` (itself when it is not an alias)."""
        return self._aliases[name][0] if name in self._aliases else name

    def names(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def choices(self) -> List[str]:
        """Every name a config may give: the registered ones, the aliases, then the special ones."""
        return self.names() + sorted(self._aliases) + list(self.special)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> List[Tuple[str, Callable[..., Any]]]:
        """(name, factory) pairs in registration order."""
        return list(self._entries.items())

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as `name` (an alias's: with its defaults bound); otherwise a one-line
        UnknownNameError with close matches."""
        if name in self._aliases:
            target, defaults = self._aliases[name]
            return functools.partial(self._entries[target], **defaults) if defaults else self._entries[target]
        if name not in self._entries:
            choices = self.choices()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{suggest(name, choices)}; accepted: {', '.join(choices)}"
            )
        return self._entries[name]

    __getitem__ = get

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as `name`; an unknown or missing keyword is a one-line ValueError."""
        factory = self.get(name)
        params = inspect.signature(factory).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = keyword_names(factory)
            for key in sorted(set(kwargs) - set(accepted)):
                raise ValueError(
                    f"{self.kind} {name!r} has no parameter {key!r}{suggest(key, accepted)}; "
                    f"accepted: {', '.join(accepted) or '(none)'}"
                )
            missing = [
                p.name
                for p in params
                if p.default is p.empty and p.name not in kwargs and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            if missing:
                raise ValueError(f"{self.kind} {name!r} needs parameter(s) {', '.join(missing)}")
        return factory(**kwargs)
