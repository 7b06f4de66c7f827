"""Typed configuration: dataclass sections, Python/JSON recipe loading, key=value overrides, validation."""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import runpy
import traceback
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple
from evaluation.errors import UserInputError


class ConfigError(UserInputError):
    """A configuration problem, phrased as one line naming the key or file."""


@dataclass
class SynthConfig:
    """The procedural face data set, generated into `data.root` on first use when `data.synthetic` is set."""

    identities: int = 600          # training identities
    per_identity: int = 20         # training images per identity
    holdout_identities: int = 300  # disjoint identities for the verification .bin
    pairs: int = 1200              # verification pairs (half positive), a multiple of 20 keeps folds balanced
    seed: int = 0
    workers: int = 0               # rendering processes; 0 = one per CPU core
    difficulty: float = 1.0        # multiplier on every nuisance variation (pose, light, occlusion, ...)


@dataclass
class DataConfig:
    root: str = ""                 # directory with train.rec / train.idx (insightface layout)
    synthetic: bool = False        # generate the procedural set into `root` if it is not there yet
    synth: SynthConfig = field(default_factory=SynthConfig)
    loader: str = "torch"          # torch (DataLoader), dali (fn.readers.mxnet), auto (dali when installed)
    num_classes: int = 0           # 0 = read from the record file's header
    num_workers: int = 2           # DataLoader worker processes per rank
    batch_size: int = 128          # per rank
    image_size: int = 112
    augment: List[str] = field(default_factory=list)  # of resize, blur, hsv, gray (flip is always on)
    cache_dir: str = ""            # checked image index (both loaders); "" = <data.root>/.fr_cache, else ~/.cache/fr


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"
    embedding_size: int = 512
    dropout: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra backbone keywords, e.g. {"scale": 1}


@dataclass
class LossConfig:
    name: str = "arcface"
    params: Dict[str, float] = field(default_factory=dict)  # loss keywords; empty = the paper's defaults


@dataclass
class PartialFCConfig:
    sample_rate: float = 1.0
    seed: int = 0
    update: str = "dense"                        # dense | sparse (only sampled rows + their momentum; sgd only)
    interclass_filtering_threshold: float = 0.0  # 0 disables; softmax-type losses only


@dataclass
class OptimConfig:
    name: str = "sgd"              # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9          # sgd only
    betas: Tuple[float, float] = (0.9, 0.999)  # adamw only
    weight_decay: float = 5e-4
    schedule: str = "poly"         # poly | constant
    power: float = 2.0             # polynomial decay exponent
    warmup_epochs: float = 0.0
    clip_grad_norm: float = 5.0    # on the backbone's gradients; 0 disables


@dataclass
class TrainConfig:
    epochs: int = 20
    max_steps: int = 0             # > 0 stops after this many steps (overrides epochs)
    seed: int = 2048
    device: str = "auto"           # auto | cpu | cuda
    amp: str = "auto"              # auto (fp16 on CUDA, off on CPU) | on | off
    log_every: int = 50            # steps between console/TensorBoard logs
    threads: int = 0               # torch intra-op threads per process; 0 = torch's default
    exact_backbone_grad: bool = False  # True: backbone gets the exact global-batch gradient at any world size
    channels_last: bool = False    # NHWC memory format for the backbone (faster convs on CPU and tensor cores)
    resume: str = ""               # "" = fresh run; "auto" = continue from output.dir's last checkpoint if any;
                                   # or a run dir / its checkpoints dir / one step_* dir to continue from


@dataclass
class EvalConfig:
    bins: List[str] = field(default_factory=list)  # .bin files; relative names resolve against data.root
    every: int = 2000              # steps between evaluations; 0 = only at the end
    at_start: bool = False         # also evaluate the untrained network
    batch_size: int = 128


@dataclass
class OutputConfig:
    dir: str = "work_dirs/run"
    tensorboard: bool = True
    save_state: bool = True        # write resumable checkpoints (all ranks' state) under <dir>/checkpoints
    checkpoint_every: int = 0      # steps between resumable checkpoints; 0 = at the end of every epoch
    keep_checkpoints: int = 1      # newest checkpoints kept; older ones are deleted once a newer one is whole
    overwrite: bool = False        # a fresh run may replace an earlier run's outputs in `dir` (else it is refused)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# ---------------------------------------------------------------------------------------------- choices
CHOICES: Dict[str, Sequence[str]] = {
    "partial_fc.update": ("dense", "sparse"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.amp": ("auto", "on", "off"),
}


def _registered_choices() -> Dict[str, Sequence[str]]:
    """Names that come from registries; a list-valued key (data.augment) takes any number of them.

    The registries' modules import nothing from this one (tests/test_import_graph.py checks), so this is no
    cycle; they are imported here rather than at the top because only validation needs the models, heads and
    data code. Importing a package's registry runs the package, which registers every entry.
    """
    from fr.data.augment import AUGMENTS
    from fr.data.loader import LOADERS
    from fr.heads.margins import LOSSES
    from fr.models.registry import BACKBONES
    from fr.train.optim import OPTIMIZERS, SCHEDULES

    return {"data.loader": LOADERS.choices(), "data.augment": AUGMENTS.choices(),
            "optim.name": OPTIMIZERS.choices(), "optim.schedule": SCHEDULES.choices(),
            "model.backbone": BACKBONES.choices(), "loss.name": LOSSES.choices()}


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{hint}")


def validate(cfg: Config) -> Config:
    """Check values that types alone cannot; raise ConfigError naming the key."""
    for key, allowed in {**CHOICES, **_registered_choices()}.items():
        value = get_value(cfg, key)
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_choice(f"{key}[{i}]", item, allowed)
        else:
            _check_choice(key, value, allowed)
    positive = ["data.batch_size", "data.image_size", "model.embedding_size", "eval.batch_size",
                "data.synth.identities", "data.synth.per_identity"]
    for key in positive:
        if get_value(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {get_value(cfg, key)}")
    for key in ["data.num_classes", "data.num_workers", "train.max_steps", "eval.every", "optim.warmup_epochs",
                "optim.weight_decay", "optim.clip_grad_norm", "train.threads", "data.synth.workers",
                "output.checkpoint_every"]:
        if get_value(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {get_value(cfg, key)}")
    if cfg.partial_fc.update == "sparse" and cfg.optim.name != "sgd":
        raise ConfigError(f"partial_fc.update=sparse needs optim.name=sgd, got {cfg.optim.name!r}")
    if not 0.0 <= cfg.partial_fc.interclass_filtering_threshold < 1.0:
        raise ConfigError("partial_fc.interclass_filtering_threshold must be in [0, 1), got "
                          f"{cfg.partial_fc.interclass_filtering_threshold}")
    if not 0.0 < cfg.partial_fc.sample_rate <= 1.0:
        raise ConfigError(f"partial_fc.sample_rate must be in (0, 1], got {cfg.partial_fc.sample_rate}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.train.epochs <= 0 and cfg.train.max_steps <= 0:
        raise ConfigError("train.epochs or train.max_steps must be > 0")
    if cfg.output.keep_checkpoints < 1:
        raise ConfigError(f"output.keep_checkpoints must be >= 1, got {cfg.output.keep_checkpoints}")
    if cfg.train.log_every <= 0:
        raise ConfigError(f"train.log_every must be > 0, got {cfg.train.log_every}")
    if not cfg.data.root:
        raise ConfigError("data.root is empty: set it to the directory holding train.rec/train.idx")
    if cfg.data.synthetic and cfg.data.synth.pairs % 2:
        raise ConfigError(f"data.synth.pairs must be even (half positive), got {cfg.data.synth.pairs}")
    return cfg


# ---------------------------------------------------------------------------------------------- access
def _section_fields(obj: Any) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _all_keys(obj: Any, prefix: str = "") -> List[str]:
    keys = []
    for name in _section_fields(obj):
        value = getattr(obj, name)
        path = f"{prefix}{name}"
        keys.append(path)
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, path + "."))
    return keys


def _unknown_key(cfg: Config, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(cfg), n=3, cutoff=0.6)
    if not close:  # a typo in the last component is the common case: match on it alone
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in _all_keys(cfg) if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
    hint = f"; did you mean {' or '.join(close[:3])}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _resolve(cfg: Config, key: str) -> Tuple[Any, str, Any]:
    """Return (owner object, field name, field type) for a dotted key; dict fields accept any sub-key."""
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(obj, dict):
            if i != len(parts) - 1:
                raise _unknown_key(cfg, key)
            return obj, part, Any
        if not dataclasses.is_dataclass(obj):
            raise _unknown_key(cfg, key)
        fields = _section_fields(obj)
        if part not in fields:
            raise _unknown_key(cfg, key)
        if i == len(parts) - 1:
            hints = typing.get_type_hints(type(obj))
            return obj, part, hints[part]
        obj = getattr(obj, part)
    raise _unknown_key(cfg, key)


def get_value(cfg: Config, key: str) -> Any:
    owner, name, _ = _resolve(cfg, key)
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


# ---------------------------------------------------------------------------------------------- parsing
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_scalar(text: str) -> Any:
    """Best-effort literal for untyped dict entries: JSON, then int/float/bool, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert `value` (a string from the command line, or a Python/JSON value) to `annotation`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if dataclasses.is_dataclass(annotation):
        raise ConfigError(f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(annotation)[0].name}=...")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key} expects a bool (true/false), got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key} expects an int, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} expects a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} expects a string, got {value!r}")
    if origin in (list, tuple):
        items = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    items = json.loads(text)
                except ValueError:
                    raise ConfigError(f"{key} expects a JSON list or comma-separated values, got {value!r}") from None
            else:
                items = [v for v in text.split(",") if v.strip()] if text else []
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ConfigError(f"{key} expects {len(args)} values, got {len(items)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args)))
        elem = args[0] if args else Any
        converted = [coerce(v.strip() if isinstance(v, str) else v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ConfigError(f"{key} expects a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key} expects a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key with type checking (strings from the command line are parsed)."""
    owner, name, annotation = _resolve(cfg, key)
    converted = coerce(value, annotation, key)
    if isinstance(owner, dict):
        owner[name] = converted
    else:
        setattr(owner, name, converted)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply `key=value` strings, e.g. `optim.lr=0.05 loss.name=cosface loss.params.m=0.35`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value)
    return cfg


def from_dict(data: Dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from a nested mapping (a saved config.json), checking every key and type."""
    cfg = Config()

    def walk(prefix: str, mapping: Dict[str, Any]) -> None:
        for name, value in mapping.items():
            key = f"{prefix}{name}"
            owner, field_name, annotation = _resolve(cfg, key)
            current = owner[field_name] if isinstance(owner, dict) else getattr(owner, field_name)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: {key} is a section and needs a mapping, got {value!r}")
                walk(key + ".", value)
            else:
                try:
                    set_value(cfg, key, value)
                except ConfigError as exc:
                    raise ConfigError(f"{source}: {exc}") from None

    walk("", data)
    return cfg


# ---------------------------------------------------------------------------------------------- files
def inherit(recipe_file: str, base: str = "base.py") -> Config:
    """For recipe files: load the config of `base` (resolved next to `recipe_file`) to build upon."""
    path = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(recipe_file)), base)
    return load_file(path)


def load_file(path: str) -> Config:
    """Load a recipe: a Python file defining `config` (a Config), or a JSON file as saved by a run."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object of config sections")
        return from_dict(data, source=path)
    if not path.endswith(".py"):
        raise ConfigError(f"{path}: config files are .py recipes or .json saved configs")
    namespace = _run_recipe(path)
    cfg = namespace.get("config")
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: must define `config`, a fr.config.Config (got {type(cfg).__name__})")
    return check_types(cfg, path)


def _run_recipe(path: str) -> Dict[str, Any]:
    """Execute a .py recipe; its syntax error or exception becomes a ConfigError naming `file:line`."""
    try:
        return runpy.run_path(path)
    except ConfigError:
        raise  # already names its file (e.g. a base recipe loaded through `inherit`)
    except SyntaxError as exc:
        raise ConfigError(f"{exc.filename or path}:{exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        target = os.path.abspath(path)
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(exc.__traceback__))
                     if os.path.abspath(frame.filename) == target), None)
        where = f"{path}:{line}" if line is not None else path
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from exc


def check_types(cfg: Config, source: str) -> Config:
    """Check (and normalise, e.g. int -> float) every field a recipe set, as overrides are checked."""

    def walk(section: Any, prefix: str) -> None:
        fields = _section_fields(section)
        for name in vars(section):
            if name not in fields:
                raise ConfigError(f"{source}: {_unknown_key(cfg, prefix + name)}")
        hints = typing.get_type_hints(type(section))
        for name in fields:
            key, value, annotation = prefix + name, getattr(section, name), hints[name]
            if dataclasses.is_dataclass(annotation):
                if not isinstance(value, annotation):
                    raise ConfigError(f"{source}: {key} must be a {annotation.__name__} section, got {value!r}")
                walk(value, key + ".")
                continue
            if isinstance(value, str) and annotation is not str and annotation is not Any:
                # a recipe writes Python values: "0.1" for a float field is a mistake, not a literal to parse
                raise ConfigError(f"{source}: {key} expects {_type_name(annotation)}, got {value!r}")
            try:
                setattr(section, name, coerce(value, annotation, key))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None

    walk(cfg, "")
    return cfg


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    names = {bool: "a bool", int: "an int", float: "a number", list: "a list", tuple: "a tuple", dict: "a mapping"}
    return names.get(origin or annotation, str(annotation))


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Load a recipe, apply overrides, validate."""
    return validate(apply_overrides(load_file(path), overrides))


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as JSON (atomically), loadable again with load_file."""
    from fr.fileio import atomic_write_text

    atomic_write_text(path, cfg.to_json() + "\n")
