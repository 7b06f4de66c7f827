"""arcface_torch's config keys as fr's: the table (data) and the function that applies it.

Every key arcface_torch's train_v2.py reads is either carried over (DIRECT), converted (CONVERTED), taken by
fr from elsewhere (DERIVED), or only affects arcface_torch's own logging and files (LOGGING_ONLY: warned about
when set away from arcface_torch's default). Any other key is a one-line error naming it. docs/migration.md
shows the same table.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Optional, Tuple

from evaluation.errors import UserInputError


class ArcfaceConfigError(UserInputError):
    """An arcface_torch config fr cannot read, in one line naming the file and the key (fr.config.load_file
    re-raises it as fr.config.ArcfaceConfigError). fr.config imports this package, so it cannot import fr.config."""


# The value arcface_torch's base.py ships for wandb_key, meaning "no key set": a config still holding it set none.
UNSET_WANDB_KEY = "X" * 40

# arcface_torch's configs/base.py (the version with its W&B keys): the defaults when no base.py is beside a config.
UPSTREAM_BASE: Dict[str, Any] = {
    "margin_list": (1.0, 0.5, 0.0),
    "network": "r50",
    "resume": False,
    "save_all_states": False,
    "output": "ms1mv3_arcface_r50",
    "embedding_size": 512,
    "sample_rate": 1,
    "interclass_filtering_threshold": 0,
    "fp16": False,
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "verbose": 2000,
    "frequent": 10,
    "dali": False,
    "dali_aug": False,
    "gradient_acc": 1,
    "seed": 2048,
    "num_workers": 2,
    "wandb_key": UNSET_WANDB_KEY,
    "suffix_run_name": None,
    "using_wandb": False,
    "wandb_entity": "entity",
    "wandb_project": "project",
    "wandb_log_all": True,
    "save_artifacts": False,
    "wandb_resume": False,
}

# arcface_torch key -> fr key; the value carries over as it is
DIRECT: Dict[str, str] = {
    "embedding_size": "model.embedding_size",
    "sample_rate": "partial_fc.sample_rate",
    "interclass_filtering_threshold": "partial_fc.interclass_filtering_threshold",
    "batch_size": "data.batch_size",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "warmup_epoch": "optim.warmup_epochs",
    "gradient_acc": "optim.gradient_accumulation",
    "rec": "data.root",
    "num_classes": "data.num_classes",
    "num_workers": "data.num_workers",
    "num_epoch": "train.epochs",
    "seed": "train.seed",
    "frequent": "train.log_every",
    "verbose": "eval.every",
    "val_targets": "eval.bins",
    "output": "output.dir",
    "using_wandb": "output.wandb",
}

# arcface_torch's `network` names -> fr's canonical backbone names (fr's registry may also know the short names)
NETWORKS: Dict[str, str] = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "r200": "iresnet200",
    "mbf": "mobilefacenet",
    "mbf_large": "mobilefacenet_large",
    "vit_t": "vit_t",
    "vit_t_dp005_mask0": "vit_t_dp005_mask0",
    "vit_s": "vit_s",
    "vit_s_dp005_mask_0": "vit_s_dp005_mask_0",
    "vit_b": "vit_b",
    "vit_b_dp005_mask_005": "vit_b_dp005_mask_005",
    "vit_l": "vit_l",
    "vit_l_dp005_mask_005": "vit_l_dp005_mask_005",
    "vit_h": "vit_h",
}

DALI_AUG = ["resize", "blur", "hsv", "gray"]  # what arcface_torch's dali_aug applies, as fr's data.augment names
MARGIN_SCALE = 64.0  # arcface_torch's CombinedMarginLoss scale, fixed in train_v2.py

# keys fr takes from elsewhere -> where
DERIVED: Dict[str, str] = {
    "num_image": "fr counts the images in train.idx; the schedule's length follows from that count",
}

# keys that only affect arcface_torch's logging or its own checkpoint files -> what fr does instead
LOGGING_ONLY: Dict[str, str] = {
    "save_all_states": "fr writes its own resumable checkpoints (output.save_state, default true)",
    "wandb_key": "fr never reads keys from configs: log in with `wandb login` or WANDB_API_KEY",
    "suffix_run_name": "set output.wandb_name for the run's name",
    "wandb_log_all": "fr logs its metrics to W&B when output.wandb is true",
    "save_artifacts": "fr does not upload checkpoints to W&B",
    "wandb_resume": "fr starts a new W&B run for every (resumed) run",
    "notes": "not used",
}

# keys a config may set without effect, as arcface_torch ignores them there -> when they apply
CONDITIONAL: Dict[str, str] = {
    "dali_aug": "arcface_torch applies it only with dali=True",
    "wandb_project": "used only with using_wandb=True",
    "wandb_entity": "used only with using_wandb=True",
}

Converted = Optional[Dict[str, Any]]  # fr key -> value, or None: the key is ignored in this config


def _margin(value: Any, keys: Dict[str, Any]) -> Converted:
    """(m1, m2, m3): (1, m, 0) is ArcFace, (1, 0, m) CosFace, anything else fr's combined margin."""
    try:
        m1, m2, m3 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ArcfaceConfigError(f"margin_list must be three numbers (m1, m2, m3), got {value!r}") from None
    if m1 == 1.0 and m3 == 0.0:
        return {"loss.name": "arcface", "loss.params": {"s": MARGIN_SCALE, "m": m2}}
    if m1 == 1.0 and m2 == 0.0:
        return {"loss.name": "cosface", "loss.params": {"s": MARGIN_SCALE, "m": m3}}
    return {"loss.name": "combined", "loss.params": {"s": MARGIN_SCALE, "m1": m1, "m2": m2, "m3": m3}}


def _network(value: Any, keys: Dict[str, Any]) -> Converted:
    """The canonical fr name when it is registered, else the name itself when fr's registry knows it."""
    from fr.models.registry import BACKBONES

    known = BACKBONES.choices()
    for name in (NETWORKS.get(value), value):
        if name in known:
            return {"model.backbone": name}
    close = difflib.get_close_matches(str(value), list(NETWORKS), n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ArcfaceConfigError(f"network={value!r} has no fr backbone{hint}; fr has {', '.join(known)}")


def _fp16(value: Any, keys: Dict[str, Any]) -> Converted:
    # fp16 is CUDA-only in arcface_torch; "auto" is fp16 on CUDA and fp32 on CPU
    return {"train.amp": "auto" if value else "off"}


def _dali(value: Any, keys: Dict[str, Any]) -> Converted:
    return {"data.loader": "dali" if value else "torch"}


def _dali_aug(value: Any, keys: Dict[str, Any]) -> Converted:
    if not value:
        return {"data.augment": []}
    if not keys.get("dali"):
        return None  # arcface_torch's torch loader does not augment
    return {"data.augment": list(DALI_AUG)}


def _resume(value: Any, keys: Dict[str, Any]) -> Converted:
    # arcface_torch resumes from its output directory; fr's "auto" does, from fr's own checkpoints
    return {"train.resume": "auto" if value else ""}


def _wandb_field(fr_key: str) -> Callable[[Any, Dict[str, Any]], Converted]:
    def convert(value: Any, keys: Dict[str, Any]) -> Converted:
        return {fr_key: value} if keys.get("using_wandb") else None

    return convert


# arcface_torch key -> (the fr keys it sets, for the docs and the log; the conversion)
CONVERTED: Dict[str, Tuple[str, Callable[[Any, Dict[str, Any]], Converted]]] = {
    "margin_list": ("loss.name, loss.params", _margin),
    "network": ("model.backbone", _network),
    "fp16": ("train.amp", _fp16),
    "dali": ("data.loader", _dali),
    "dali_aug": ("data.augment", _dali_aug),
    "resume": ("train.resume", _resume),
    "wandb_project": ("output.wandb_project", _wandb_field("output.wandb_project")),
    "wandb_entity": ("output.wandb_entity", _wandb_field("output.wandb_entity")),
}

SECRET = {"wandb_key"}  # never echoed in logs or errors


def known_keys() -> List[str]:
    return sorted(set(DIRECT) | set(CONVERTED) | set(DERIVED) | set(LOGGING_ONLY))


def _shown(key: str, value: Any) -> str:
    return f"{key}=<hidden>" if key in SECRET else f"{key}={value!r}"


def map_config(keys: Dict[str, Any], source: str) -> Tuple[Dict[str, Dict[str, Any]], List[str]]:
    """fr's config sections ({section: {field: value}}, for fr.config.from_dict; fr's defaults elsewhere) for
    arcface_torch's merged `keys`, and one log line per key.

    A key without an fr equivalent is a ArcfaceConfigError naming it; a LOGGING_ONLY key (or a W&B key without
    using_wandb, or dali_aug without dali) set away from arcface_torch's default is a warning, logged by the caller.
    """
    import logging

    log = logging.getLogger("fr.migrate.arcface_config")
    unknown = [key for key in keys if key not in known_keys()]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, known_keys(), n=2)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ArcfaceConfigError(
            f"{source}: arcface_torch key {key!r} has no fr equivalent{hint}; docs/migration.md lists the keys fr maps"
        )
    sections: Dict[str, Dict[str, Any]] = {}
    lines: List[str] = []
    for key, value in keys.items():
        if key in DIRECT:
            values: Converted = {DIRECT[key]: value}
        elif key in CONVERTED:
            try:
                values = CONVERTED[key][1](value, keys)
            except ArcfaceConfigError as exc:
                raise ArcfaceConfigError(f"{source}: {exc}") from None
        else:
            values = None
        if values is None:
            why = DERIVED.get(key) or LOGGING_ONLY.get(key) or CONDITIONAL[key]
            lines.append(f"{_shown(key, value)} -> (not mapped: {why})")
            if key not in DERIVED and value != UPSTREAM_BASE.get(key, None):
                log.warning("%s: %s has no effect in fr: %s", source, _shown(key, value), why)
            continue
        for fr_key, fr_value in values.items():
            section, name = fr_key.split(".")
            sections.setdefault(section, {})[name] = fr_value
        shown = ", ".join(f"{fr_key}={fr_value!r}" for fr_key, fr_value in values.items())
        lines.append(f"{_shown(key, value)} -> {shown}")
    return sections, lines
