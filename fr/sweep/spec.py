"""A sweep file (YAML): reading, and every check that can run before Ray starts (keys, space, metric, scheduler)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List

from fr.config import Config, ConfigError, get_value, load_file, set_value
from fr.registry import keyword_names, suggest
from fr.sweep.algorithms import SCHEDULERS, SEARCHERS, require_package
from fr.sweep.space import Dimension, SweepError, parse_space

SWEEP_KEYS = (
    "base",
    "overrides",
    "space",
    "metric",
    "mode",
    "scheduler",
    "search",
    "num_samples",
    "max_concurrent_trials",
    "resources",
    "max_failures",
    "output",
)
REQUIRED = ("base", "space", "metric", "output")
# Set by fr-sweep for every trial: a trial's own directory, resumed after a failure, never overwritten.
TRIAL_KEYS = ("output.dir", "train.resume", "output.overwrite")
# What a verification set's evaluation reports under `<set>/...` (fr.train.verification_hook).
EVAL_FIELDS = ("accuracy", "std", "xnorm", "xnorm_insightface", "best")
TRAIN_METRICS = ("train/loss",)


@dataclass(frozen=True)
class Resources:
    """Per worker: `cpu` and `gpu` (fractions allowed); `workers` data-parallel workers per trial."""

    cpu: float = 1.0
    gpu: float = 0.0
    workers: int = 1


@dataclass
class SweepSpec:
    path: str
    base: str
    config: Config  # the base recipe with the overrides applied, validated
    dims: List[Dimension]
    metric: str
    mode: str
    output: str
    overrides: Dict[str, Any] = field(default_factory=dict)
    scheduler: Dict[str, Any] = field(default_factory=lambda: {"name": "fifo"})
    search: Dict[str, Any] = field(default_factory=lambda: {"name": "random"})
    num_samples: int = 1
    max_concurrent_trials: int = 0  # 0: as many as the cluster's resources allow
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 2  # restarts of a trial's workers after a failure, each from its last checkpoint

    @property
    def total_trials(self) -> int:
        """How many trials the sweep runs: grid dimensions are crossed, the whole repeated num_samples times."""
        count = self.num_samples
        for dim in self.dims:
            if dim.kind == "grid":
                count *= len(dim.args)
        return count


def _read_yaml(path: str) -> Dict[str, Any]:
    import yaml

    if not os.path.isfile(path):
        raise SweepError(f"sweep file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise SweepError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping of sweep keys ({', '.join(SWEEP_KEYS)})")
    return data


def _whole(path: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SweepError(f"{path}: {key} must be an integer >= {low}, got {value!r}")
    return value


def _mapping(path: str, key: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise SweepError(f"{path}: {key} must be a mapping, got {value!r}")
    return value


def _named(path: str, key: str, value: Any, registry) -> Dict[str, Any]:
    """A `{name: ..., params...}` section checked against `registry`'s factory keywords."""
    value = _mapping(path, key, value)
    name = value.get("name")
    if not isinstance(name, str):
        raise SweepError(f"{path}: {key}.name is missing; one of {', '.join(registry.choices())}")
    try:
        factory = registry.get(name)
    except KeyError as exc:
        raise SweepError(f"{path}: {key}.name: {exc}") from None
    accepted = keyword_names(factory)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    for param in value:
        if param != "name" and param not in accepted and not takes_any:
            raise SweepError(
                f"{path}: {key}.{param}: {name} has no parameter {param!r}{suggest(param, accepted)}; "
                f"it takes {', '.join(accepted) or 'none'}"
            )
    return dict(value)


def _resources(path: str, value: Any) -> Resources:
    value = _mapping(path, "resources", value)
    unknown = [k for k in value if k not in ("cpu", "gpu", "workers")]
    if unknown:
        raise SweepError(
            f"{path}: resources.{unknown[0]}: unknown{suggest(str(unknown[0]), ['cpu', 'gpu', 'workers'])}"
        )
    res = Resources(**value)
    for name, minimum in (("cpu", 0.0), ("gpu", 0.0)):
        amount = getattr(res, name)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < minimum:
            raise SweepError(f"{path}: resources.{name} must be a number >= 0, got {amount!r}")
    if res.cpu == 0 and res.gpu == 0:
        raise SweepError(f"{path}: resources: a worker needs cpu > 0 or gpu > 0")
    _whole(path, "resources.workers", res.workers, 1)
    return res


def eval_sets(cfg: Config) -> List[str]:
    """The names the configured verification sets report under (the hook's: the file name without .bin)."""
    return [os.path.splitext(os.path.basename(item))[0] for item in cfg.eval.bins]


def produced_metrics(cfg: Config) -> List[str]:
    """Every metric a trial of `cfg` reports at its evaluations."""
    return list(TRAIN_METRICS) + [f"{name}/{field}" for name in eval_sets(cfg) for field in EVAL_FIELDS]


def check_metric(path: str, metric: Any, cfg: Config) -> str:
    if not isinstance(metric, str):
        raise SweepError(f"{path}: metric must be a name such as synthetic_val/accuracy or train/loss, got {metric!r}")
    produced = produced_metrics(cfg)
    if metric not in produced:
        close = difflib.get_close_matches(metric, produced, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        sets = f"eval.bins={cfg.eval.bins}" if cfg.eval.bins else "no eval.bins configured"
        raise SweepError(
            f"{path}: metric {metric!r} is produced by no configured evaluation{hint} ({sets}); "
            f"the trials report {', '.join(produced)}"
        )
    return metric


def check_dimension(path: str, dim: Dimension, cfg: Config) -> None:
    """Every probe value of `dim` must make a valid config, and a kind that draws fractions needs a number key."""
    where = f"{path}: space.{dim.key}"
    if dim.key in TRIAL_KEYS:
        raise SweepError(f"{where}: fr-sweep sets {dim.key} for each trial; it cannot be searched")
    trial = copy.deepcopy(cfg)
    try:
        if dim.floats:
            try:
                set_value(trial, dim.key, 0.5)
            except ConfigError as exc:
                if "unknown config key" in str(exc):
                    raise
                raise SweepError(
                    f"{where}: {dim.kind} draws fractional numbers, but {exc}; use randint or choice"
                ) from None
        for value in dim.probes:
            trial = copy.deepcopy(cfg)
            set_value(trial, dim.key, value)
            trial.validate()
    except SweepError:
        raise
    except ConfigError as exc:
        raise SweepError(f"{where}: {exc}") from None


def _apply(cfg: Config, key: str, value: Any) -> None:
    """Set `key`; a mapping given for a section sets its fields (e.g. data.synth: {identities: 20})."""
    if isinstance(value, dict) and dataclasses.is_dataclass(get_value(cfg, key)):
        for name, item in value.items():
            _apply(cfg, f"{key}.{name}", item)
    else:
        set_value(cfg, key, value)


def load_sweep(path: str) -> SweepSpec:
    """Read and check a sweep file; every problem is a one-line SweepError naming the file and key."""
    data = _read_yaml(path)
    for key in data:
        if key not in SWEEP_KEYS:
            raise SweepError(
                f"{path}: unknown sweep key {key!r}{suggest(str(key), SWEEP_KEYS)}; accepted: {', '.join(SWEEP_KEYS)}"
            )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SweepError(f"{path}: {missing[0]} is missing (required: {', '.join(REQUIRED)})")
    base = data["base"]
    if not isinstance(base, str):
        raise SweepError(f"{path}: base must name an fr recipe (.py) or a saved config.json, got {base!r}")
    try:
        cfg = load_file(base)
    except ConfigError as exc:
        raise SweepError(f"{path}: base: {exc}") from None
    overrides = _mapping(path, "overrides", data.get("overrides") or {})
    for key, value in overrides.items():
        if key in TRIAL_KEYS:
            raise SweepError(f"{path}: overrides.{key}: fr-sweep sets {key} for each trial")
        try:
            _apply(cfg, str(key), value)
        except ConfigError as exc:
            raise SweepError(f"{path}: overrides: {exc}") from None
    try:
        cfg.validate()
    except ConfigError as exc:
        raise SweepError(f"{path}: base with overrides: {exc}") from None
    dims = parse_space(data["space"], path)
    for dim in dims:
        if dim.key in overrides:
            raise SweepError(f"{path}: {dim.key} is both in overrides and in space; keep one")
        check_dimension(path, dim, cfg)
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise SweepError(f"{path}: mode must be max or min, got {mode!r}")
    output = data["output"]
    if not isinstance(output, str) or not output:
        raise SweepError(f"{path}: output must be a directory path, got {output!r}")
    spec = SweepSpec(
        path=path,
        base=base,
        config=cfg,
        dims=dims,
        metric=check_metric(path, data["metric"], cfg),
        mode=mode,
        output=output,
        overrides=dict(overrides),
        scheduler=_named(path, "scheduler", data.get("scheduler", {"name": "fifo"}), SCHEDULERS),
        search=_named(path, "search", data.get("search", {"name": "random"}), SEARCHERS),
        num_samples=_whole(path, "num_samples", data.get("num_samples", 1), 1),
        max_concurrent_trials=_whole(path, "max_concurrent_trials", data.get("max_concurrent_trials", 0), 0),
        resources=_resources(path, data.get("resources", {})),
        max_failures=_whole(path, "max_failures", data.get("max_failures", 2), 0),
    )
    check_algorithms(spec)
    return spec


def check_algorithms(spec: SweepSpec) -> None:
    """ASHA needs evaluations during training; a search algorithm needs its package and no grid."""
    if spec.scheduler["name"] == "asha" and not spec.config.eval.every:
        raise SweepError(
            f"{spec.path}: scheduler asha compares trials at their evaluations; set eval.every > 0 in overrides"
        )
    searcher = spec.search["name"]
    if searcher != "random":
        grids = [dim.key for dim in spec.dims if dim.kind == "grid"]
        if grids:
            raise SweepError(
                f"{spec.path}: space.{grids[0]}: grid needs search.name=random "
                f"({searcher} draws every value itself); use choice"
            )
        try:
            require_package(searcher)
        except SweepError as exc:
            raise SweepError(f"{spec.path}: {exc}") from None
