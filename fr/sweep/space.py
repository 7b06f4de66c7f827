"""The `space` of a sweep file: one dimension per config key, checked without Ray, turned into Tune domains."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

from fr.config import ConfigError
from fr.registry import Registry


class SweepError(ConfigError):
    """A problem with a sweep file or its cluster, phrased as one line naming the file and key."""


@dataclass(frozen=True)
class Kind:
    """A search-space kind: `check(where, args)` -> (normalised args, probe values, draws floats), and
    `domain(args)` -> the Ray Tune domain."""

    check: Callable[[str, Any], Tuple[tuple, tuple, bool]]
    domain: Callable[[tuple], Any]


@dataclass(frozen=True)
class Dimension:
    """One searched config key: its kind, normalised args, and `probes`: values a trial may get, checked
    against the config before any trial starts (both bounds, every choice)."""

    key: str
    kind: str
    args: tuple
    probes: tuple
    floats: bool  # the kind draws non-integral numbers

    def to_tune(self) -> Any:
        """The Ray Tune domain (imports ray)."""
        return SPACE_KINDS.get(self.kind).domain(self.args)


SPACE_KINDS = Registry("search space kind")


def _bounds(where: str, kind: str, args: Any) -> tuple:
    if not isinstance(args, (list, tuple)) or len(args) != 2:
        raise SweepError(f"{where}: {kind} takes [low, high], got {args!r}")
    for value in args:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SweepError(f"{where}: {kind} bounds must be finite numbers, got {args!r}")
    low, high = args
    if low > high:
        raise SweepError(f"{where}: {kind} low bound {low} is above the high bound {high}")
    return low, high


def _floats(kind: str, positive: bool = False) -> Callable[[str, Any], Tuple[tuple, tuple, bool]]:
    def check(where: str, args: Any) -> Tuple[tuple, tuple, bool]:
        low, high = _bounds(where, kind, args)
        if positive and low <= 0:
            raise SweepError(f"{where}: {kind} bounds must be > 0, got {list(args)!r}")
        bounds = (float(low), float(high))
        return bounds, bounds, True

    return check


def _check_randint(where: str, args: Any) -> Tuple[tuple, tuple, bool]:
    low, high = _bounds(where, "randint", args)
    if not (float(low).is_integer() and float(high).is_integer()):
        raise SweepError(f"{where}: randint bounds must be integers, got {list(args)!r}")
    bounds = (int(low), int(high))
    return bounds, bounds, False


def _listed(kind: str) -> Callable[[str, Any], Tuple[tuple, tuple, bool]]:
    def check(where: str, args: Any) -> Tuple[tuple, tuple, bool]:
        if not isinstance(args, (list, tuple)):
            raise SweepError(f"{where}: {kind} takes a list of values, got {args!r}")
        if not args:
            raise SweepError(f"{where}: {kind} is empty; give at least one value")
        return tuple(args), tuple(args), False

    return check


def _tune(name: str) -> Callable[..., Any]:
    """ray.tune.<name>, imported when a domain is built (checking a sweep file needs no Ray)."""

    def build(*args: Any) -> Any:
        from ray import tune

        return getattr(tune, name)(*args)

    return build


SPACE_KINDS.register("loguniform")(Kind(_floats("loguniform", positive=True), lambda a: _tune("loguniform")(*a)))
SPACE_KINDS.register("uniform")(Kind(_floats("uniform"), lambda a: _tune("uniform")(*a)))
# The sweep file's high bound is included; Tune's randint excludes it.
SPACE_KINDS.register("randint")(Kind(_check_randint, lambda a: _tune("randint")(a[0], a[1] + 1)))
SPACE_KINDS.register("choice")(Kind(_listed("choice"), lambda a: _tune("choice")(list(a))))
SPACE_KINDS.register("grid")(Kind(_listed("grid"), lambda a: _tune("grid_search")(list(a))))


def parse_space(space: Any, source: str) -> List[Dimension]:
    """The dimensions of a sweep file's `space` ({key: {kind: args}}), shape-checked (the keys are checked
    against the config by fr.sweep.spec)."""
    example = "e.g. optim.lr: {loguniform: [0.01, 0.3]}"
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{source}: space must map config keys to {{kind: args}}, {example}")
    dims = []
    for key, spec in space.items():
        where = f"{source}: space.{key}"
        if not isinstance(spec, dict) or len(spec) != 1:
            kinds = ", ".join(SPACE_KINDS.choices())
            raise SweepError(f"{where}: expected one {{kind: args}} with kind one of {kinds}, got {spec!r}")
        ((kind, args),) = spec.items()
        try:
            check = SPACE_KINDS.get(str(kind)).check
        except KeyError as exc:
            raise SweepError(f"{where}: {exc}") from None
        normalised, probes, floats = check(where, args)
        dims.append(Dimension(str(key), str(kind), normalised, probes, floats))
    return dims


def tune_space(dims: Sequence[Dimension]) -> Dict[str, Any]:
    """Tune's param_space: {config key: domain}."""
    return {dim.key: dim.to_tune() for dim in dims}
