"""Typed configuration: dataclass sections, Python/JSON recipe loading, key=value overrides, validation."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import os
import runpy
import traceback
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

from evaluation.errors import UserInputError
from fr.errors import ConfigError  # noqa: F401  (defined below the modules that raise it; fr.config.ConfigError)

# Fixed choice sets live in the annotations: overrides, recipes and `validate()` all check against these args.
HeadUpdate = Literal["dense", "sparse"]
Device = Literal["auto", "cpu", "cuda"]
Amp = Literal["auto", "on", "off"]
Freeze = Literal["", "backbone", "head"]
# A margin loss keyword: the losses take floats, bools (exact_gradient, plus), ints (seed) and None (sigma).
LossParam = Optional[Union[bool, int, float]]


def _choice_error(key: str, value: Any, allowed: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(str(value), list(allowed), n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{hint}")


def _check_choice(key: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise _choice_error(key, value, allowed)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


@dataclass
class SynthConfig:
    """The procedural face data set, generated into `data.root` on first use when `data.synthetic` is set."""

    identities: int = 600  # training identities
    per_identity: int = 20  # training images per identity
    holdout_identities: int = 300  # disjoint identities for the verification .bin
    pairs: int = 1200  # verification pairs, a positive multiple of 20: 10 folds, each half positive
    seed: int = 0
    workers: int = 0  # rendering processes; 0 = one per CPU core
    difficulty: float = 1.0  # multiplier on every nuisance variation (pose, light, occlusion, ...)

    FOLDS: typing.ClassVar[int] = 10  # verification folds; each holds as many positive as negative pairs

    def validate(self) -> None:
        """ConfigError naming the first field that would give an empty, unbalanced or unrenderable data set.

        The only copy of these rules: config loading and the generator (`fr.synth.dataset`) both call it.
        """
        rules = (
            ("identities", self.identities >= 1, ">= 1"),
            ("per_identity", self.per_identity >= 1, ">= 1"),
            ("holdout_identities", self.holdout_identities >= 2, ">= 2 (a negative pair needs two identities)"),
            (
                "pairs",
                self.pairs > 0 and self.pairs % (2 * self.FOLDS) == 0,
                f"a positive multiple of {2 * self.FOLDS} ({self.FOLDS} folds x one positive and one negative pair)",
            ),
            ("seed", self.seed >= 0, ">= 0"),
            ("workers", self.workers >= 0, ">= 0"),
            ("difficulty", 0 <= self.difficulty < float("inf"), "a finite number >= 0"),
        )
        for name, ok, wanted in rules:
            if not ok:
                raise ConfigError(
                    f"data.synth.{name} (fr-data synth --{name.replace('_', '-')}) must be {wanted}, "
                    f"got {getattr(self, name)}"
                )


@dataclass
class DataConfig:
    root: str = ""  # directory with train.rec / train.idx (insightface layout)
    synthetic: bool = False  # generate the procedural set into `root` if it is not there yet
    synth: SynthConfig = field(default_factory=SynthConfig)
    loader: str = "torch"  # torch (DataLoader), dali (fn.readers.mxnet), auto (dali when installed)
    num_classes: int = 0  # 0 = read from the record file's header
    num_workers: int = 2  # DataLoader worker processes per rank
    batch_size: int = 128  # per rank
    image_size: int = 112
    augment: List[str] = field(default_factory=list)  # of resize, blur, hsv, gray (flip is always on)
    cache_dir: str = ""  # checked image index (both loaders); "" = <data.root>/.fr_cache, else ~/.cache/fr

    def validate(self) -> None:
        """data.root, names against the loader and augmentation registries, sizes, then data.synth."""
        from fr.data.augment import AUGMENTS
        from fr.data.loader import LOADERS

        if not self.root:
            raise ConfigError("data.root is empty: set it to the directory holding train.rec/train.idx")
        _check_choice("data.loader", self.loader, LOADERS.choices())
        for i, name in enumerate(self.augment):
            _check_choice(f"data.augment[{i}]", name, AUGMENTS.choices())
        _non_negative("data.num_classes", self.num_classes)
        _non_negative("data.num_workers", self.num_workers)
        _positive("data.batch_size", self.batch_size)
        _positive("data.image_size", self.image_size)
        self.synth.validate()


@dataclass
class ModelConfig:
    backbone: str = "iresnet50"
    embedding_size: int = 512
    dropout: float = 0.0
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra backbone keywords, e.g. {"scale": 1}
    grad_checkpoint: bool = False  # recompute activations in the backward pass (less memory, ~30% more compute)
    pretrained: str = ""  # start from a model.pt (fr's or insightface's) or a run / step directory

    def validate(self) -> None:
        from fr.models.registry import BACKBONES

        _check_choice("model.backbone", self.backbone, BACKBONES.choices())
        _positive("model.embedding_size", self.embedding_size)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LossConfig:
    name: str = "arcface"
    params: Dict[str, LossParam] = field(default_factory=dict)  # loss keywords; empty = the paper's defaults

    def validate(self) -> None:
        """The name against the loss registry; each param against that loss's keywords and their types."""
        from fr.heads.margins import LOSSES
        from fr.registry import keyword_names

        _check_choice("loss.name", self.name, LOSSES.choices())
        factory = LOSSES.get(self.name)
        accepted = keyword_names(factory)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
        for name, value in self.params.items():
            key = f"loss.params.{name}"
            if name not in accepted and not takes_any:  # as LOSSES.build: **kwargs takes any name
                close = difflib.get_close_matches(name, accepted, n=2)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise ConfigError(
                    f"{key}: loss {self.name!r} has no parameter {name!r}{hint}; "
                    f"it takes {', '.join(accepted) or 'none'}"
                )
            if _is_scalar_type(hints.get(name)):
                coerce(value, hints[name], key)  # e.g. exact_gradient=0.5 or seed=1.5 is caught here


@dataclass
class PartialFCConfig:
    sample_rate: float = 1.0
    seed: int = 0
    update: HeadUpdate = "dense"  # dense | sparse (only sampled rows + their momentum; sgd only)
    interclass_filtering_threshold: float = 0.0  # 0 disables; softmax-type losses only
    pretrained: str = ""  # start the class centres from a merged classifier (fr-export checkpoint) of as many classes

    def validate(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(f"partial_fc.sample_rate must be in (0, 1], got {self.sample_rate}")
        _check_choice("partial_fc.update", self.update, typing.get_args(HeadUpdate))
        if not 0.0 <= self.interclass_filtering_threshold < 1.0:
            raise ConfigError(
                "partial_fc.interclass_filtering_threshold must be in [0, 1), got "
                f"{self.interclass_filtering_threshold}"
            )


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    betas: Tuple[float, float] = (0.9, 0.999)  # adamw only
    weight_decay: float = 5e-4
    schedule: str = "poly"  # poly (arcface_torch's) | poly_legacy | constant
    power: float = 1.0  # polynomial decay exponent (1: arcface_torch's linear decay)
    warmup_epochs: float = 0.0
    clip_grad_norm: float = 5.0  # on the backbone's gradients; 0 disables
    gradient_accumulation: int = 1  # loader batches per optimizer step (arcface_torch's gradient_acc)

    def validate(self) -> None:
        from fr.train.optim import OPTIMIZERS, SCHEDULES

        _check_choice("optim.name", self.name, OPTIMIZERS.choices())
        _positive("optim.lr", self.lr)
        _non_negative("optim.weight_decay", self.weight_decay)
        _check_choice("optim.schedule", self.schedule, SCHEDULES.choices())
        _non_negative("optim.warmup_epochs", self.warmup_epochs)
        _non_negative("optim.clip_grad_norm", self.clip_grad_norm)
        if self.gradient_accumulation < 1:
            raise ConfigError(f"optim.gradient_accumulation must be >= 1, got {self.gradient_accumulation}")


@dataclass
class TrainConfig:
    epochs: int = 20
    max_steps: int = 0  # > 0 stops after this many steps (overrides epochs)
    seed: int = 2048
    device: Device = "auto"  # auto | cpu | cuda
    amp: Amp = "auto"  # auto (fp16 on CUDA, off on CPU) | on | off
    log_every: int = 50  # steps between console/TensorBoard logs
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    exact_backbone_grad: bool = False  # True: backbone gets the exact global-batch gradient at any world size
    channels_last: bool = False  # NHWC memory format for the backbone (faster convs on CPU and tensor cores)
    resume: str = ""  # "" = fresh run; "auto" = continue from output.dir's last checkpoint if any;
    # or a run dir / its checkpoints dir / one step_* dir to continue from
    strategy: str = "ddp"  # how the backbone trains data-parallel (fr.train.strategy.STRATEGIES)
    max_nonfinite_steps: int = 20  # consecutive skipped (NaN/inf) steps that stop the run
    deepspeed_config: str = ""  # a DeepSpeed JSON config, for train.strategy=deepspeed
    freeze: Freeze = ""  # "backbone": train the head only (a warm start); "head": train the backbone only

    def validate(self) -> None:
        from fr.train.strategies import STRATEGIES

        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("train.epochs or train.max_steps must be > 0")
        _non_negative("train.max_steps", self.max_steps)
        _check_choice("train.device", self.device, typing.get_args(Device))
        _check_choice("train.amp", self.amp, typing.get_args(Amp))
        _positive("train.log_every", self.log_every)
        _non_negative("train.threads", self.threads)
        _check_choice("train.strategy", self.strategy, STRATEGIES.choices())
        if self.max_nonfinite_steps < 1:
            raise ConfigError(f"train.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        _check_choice("train.freeze", self.freeze, typing.get_args(Freeze))


@dataclass
class EvalConfig:
    bins: List[str] = field(default_factory=list)  # .bin files; relative names resolve against data.root
    every: int = 2000  # steps between evaluations; 0 = only at the end
    at_start: bool = False  # also evaluate the untrained network
    batch_size: int = 128

    def validate(self) -> None:
        _non_negative("eval.every", self.every)
        _positive("eval.batch_size", self.batch_size)


@dataclass
class OutputConfig:
    dir: str = "work_dirs/run"
    tensorboard: bool = True
    save_state: bool = True  # write resumable checkpoints (all ranks' state) under <dir>/checkpoints
    checkpoint_every: int = 0  # steps between resumable checkpoints; 0 = at the end of every epoch
    keep_checkpoints: int = 1  # newest checkpoints kept; older ones are deleted once a newer one is whole
    overwrite: bool = False  # a fresh run may replace an earlier run's outputs in `dir` (else it is refused)
    model_every: int = 0  # steps between model.pt snapshots during training; 0 = at the end of every epoch
    wandb: bool = False  # also log to Weights & Biases (imported only when enabled)
    wandb_project: str = ""
    wandb_entity: str = ""
    wandb_name: str = ""  # the run's name; "" = W&B's own

    def validate(self) -> None:
        _non_negative("output.checkpoint_every", self.checkpoint_every)
        if self.keep_checkpoints < 1:
            raise ConfigError(f"output.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _non_negative("output.model_every", self.model_every)


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

    def validate(self) -> Config:
        """Each section checks its own fields (raising ConfigError naming the key), then the rules that span
        sections; returns self."""
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        if self.partial_fc.update == "sparse" and self.optim.name != "sgd":
            raise ConfigError(f"partial_fc.update=sparse needs optim.name=sgd, got {self.optim.name!r}")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


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
    """Return (owner object, field name, field type) for a dotted key; dict fields accept any sub-key, typed
    as the dict's values."""
    parts = key.split(".")
    obj: Any = cfg
    annotation: Any = Config
    for i, part in enumerate(parts):
        if isinstance(obj, dict):
            if i != len(parts) - 1:
                raise _unknown_key(cfg, key)
            return obj, part, _value_type(annotation)
        if not dataclasses.is_dataclass(obj):
            raise _unknown_key(cfg, key)
        fields = _section_fields(obj)
        if part not in fields:
            raise _unknown_key(cfg, key)
        annotation = typing.get_type_hints(type(obj))[part]
        if i == len(parts) - 1:
            return obj, part, annotation
        obj = getattr(obj, part)
    raise _unknown_key(cfg, key)


def _value_type(annotation: Any) -> Any:
    """The value type of a Dict[str, X] annotation."""
    args = typing.get_args(annotation)
    return args[1] if len(args) == 2 else Any


def get_value(cfg: Config, key: str) -> Any:
    owner, name, _ = _resolve(cfg, key)
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


# ---------------------------------------------------------------------------------------------- parsing
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_BOOL_WORDS = {word: word in _TRUE for word in (_TRUE | _FALSE) - {"1", "0"}}  # where 1 and 0 mean numbers


_SCALARS = (bool, int, float, str, type(None))


def _parse_scalar(text: str) -> Any:
    """Best-effort literal for untyped dict entries: JSON, then int/float/bool, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_scalar_type(annotation: Any) -> bool:
    """bool, int, float, str, or a Union of them (Optional included): the types `coerce` can check a value of."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    return all(member in _SCALARS for member in members)


def _describe(types: Sequence[Any]) -> str:
    names = {bool: "a bool", int: "an int", float: "a number", str: "a string"}
    if float in types:  # an int is a number too
        types = [t for t in types if t is not int]
    return " or ".join(names[t] for t in types)


def _coerce_union(value: Any, members: Sequence[Any], key: str) -> Any:
    """A value for a Union of scalars (a loss param): a bool stays a bool and an int an int; text is read as
    true/false/yes/no/on/off, then an int, then a number. Any other text is an error naming the key."""
    if isinstance(value, str):
        text = value.strip()
        if bool in members and text.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[text.lower()]
        for kind in (int, float):
            if kind in members:
                try:
                    return kind(text.replace("_", "") if kind is int else text)
                except ValueError:
                    pass
    elif isinstance(value, bool):
        if bool in members:
            return value
    elif isinstance(value, (int, float)):
        if type(value) in members:
            return value
        if float in members:
            return float(value)
    raise ConfigError(f"{key} expects {_describe(members)}, got {value!r}")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert `value` (a string from the command line, or a Python/JSON value) to `annotation`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _choice_error(key, value, args)
    if origin is typing.Union:  # Optional[X], or a Union of scalars
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key) if len(inner) == 1 else _coerce_union(value, inner, key)
    if dataclasses.is_dataclass(annotation):
        raise ConfigError(
            f"{key} is a section; set its fields, e.g. {key}.{dataclasses.fields(annotation)[0].name}=..."
        )
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
        value_type = _value_type(annotation)
        if value_type is Any:  # e.g. model.kwargs: whatever the backbone takes, as written
            return dict(value)
        return {name: coerce(item, value_type, f"{key}.{name}") for name, item in value.items()}
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
    """Load a recipe: a Python file defining `config` (a Config), an arcface_torch config (read by
    fr.migrate.arcface_config), or a JSON file as saved by a run. A path without `.py` resolves as arcface_torch's."""
    from fr.migrate.arcface_config import is_arcface_config, load_arcface_config, resolve_config_path

    path = resolve_config_path(path)
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
    if is_arcface_config(path):
        try:
            return from_dict(load_arcface_config(path), source=path)
        except UserInputError as exc:  # fr.migrate's own one-line errors
            raise exc if isinstance(exc, ConfigError) else ConfigError(str(exc)) from None
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
        line = next(
            (
                frame.lineno
                for frame in reversed(traceback.extract_tb(exc.__traceback__))
                if os.path.abspath(frame.filename) == target
            ),
            None,
        )
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
            if isinstance(value, str) and not _takes_text(annotation):
                # a recipe writes Python values: "0.1" for a float field is a mistake, not a literal to parse
                raise ConfigError(f"{source}: {key} expects {_type_name(annotation)}, got {value!r}")
            try:
                setattr(section, name, coerce(value, annotation, key))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None

    walk(cfg, "")
    return cfg


def _takes_text(annotation: Any) -> bool:
    """Whether a recipe may set this field to a str (a str field, or a fixed set of names)."""
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    return annotation is str or annotation is Any


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    names = {bool: "a bool", int: "an int", float: "a number", list: "a list", tuple: "a tuple", dict: "a mapping"}
    return names.get(origin or annotation, str(annotation))


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Load a recipe, apply overrides, validate."""
    return apply_overrides(load_file(path), overrides).validate()


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as JSON (atomically), loadable again with load_file."""
    from evaluation.fileio import atomic_write_text

    atomic_write_text(path, cfg.to_json() + "\n")
