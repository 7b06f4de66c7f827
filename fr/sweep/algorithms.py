"""Trial schedulers and search algorithms by name (a sweep file's `scheduler` and `search`), built lazily
so that a sweep file is checked without importing Ray."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Optional

from fr.registry import Registry
from fr.sweep.space import SweepError

SCHEDULERS = Registry("scheduler")
SEARCHERS = Registry("search algorithm")


@SCHEDULERS.register("fifo")
def fifo() -> Any:
    """Every trial runs to its end."""
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SCHEDULERS.register("asha")
def asha(grace_period: int = 1, reduction_factor: float = 2, max_t: int = 0, brackets: int = 1) -> Any:
    """Asynchronous successive halving over fr's training steps (`step`, reported at every evaluation):
    rungs at grace_period x reduction_factor^k steps; a trial below the top 1/reduction_factor there stops.
    `max_t` defaults to train.max_steps (fr.sweep.runner fills it in)."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step",
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        max_t=max_t,
        brackets=brackets,
    )


# searcher name -> (the Python package it needs, Ray's integration module, its class)
OPTIONAL = {
    "optuna": ("optuna", "ray.tune.search.optuna", "OptunaSearch"),
    "hyperopt": ("hyperopt", "ray.tune.search.hyperopt", "HyperOptSearch"),
}


def require_package(searcher: str) -> None:
    """A one-line error, before any trial, when the searcher's package is not installed."""
    if searcher in OPTIONAL and importlib.util.find_spec(OPTIONAL[searcher][0]) is None:
        package = OPTIONAL[searcher][0]
        raise SweepError(
            f"search.name={searcher} needs the {package} package, which is not installed: pip install {package}"
        )


def _integration(searcher: str, kwargs: Any) -> Any:
    require_package(searcher)
    _, module, name = OPTIONAL[searcher]
    return getattr(importlib.import_module(module), name)(**kwargs)


@SEARCHERS.register("random")
def random_search() -> Optional[Any]:
    """Tune's default: grid dimensions are crossed, the others drawn at random (num_samples times)."""
    return None


@SEARCHERS.register("optuna")
def optuna(**kwargs: Any) -> Any:
    """Ray Tune's Optuna integration (TPE by default); keyword arguments go to OptunaSearch."""
    return _integration("optuna", kwargs)


@SEARCHERS.register("hyperopt")
def hyperopt(**kwargs: Any) -> Any:
    """Ray Tune's HyperOpt integration; keyword arguments go to HyperOptSearch."""
    return _integration("hyperopt", kwargs)
