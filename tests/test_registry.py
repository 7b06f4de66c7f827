"""Every name lookup goes through fr.registry.Registry: the same one-line error with close matches, and the
registered names (config values) stay what they were."""

import importlib.util
import os

import pytest

from evaluation.errors import UserInputError
from fr.config import ConfigError, DataConfig, OptimConfig, load_config
from fr.data import decode
from fr.data.augment import AUGMENTS, Compose
from fr.data.dali_augment import DALI_AUGMENTS
from fr.data.decode import DECODERS, get_decoder
from fr.data.loader import LOADERS, build_loader
from fr.distributed import DistEnv
from fr.registry import Registry, UnknownNameError
from fr.train.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from tests.helpers import ROOT

BASE = os.path.join(ROOT, "configs", "base.py")


def _optimizer(name):
    return build_optimizer([], OptimConfig(name=name))


def _scheduler(name):
    return build_scheduler(None, OptimConfig(schedule=name), total_steps=10, warmup_steps=0)


# (what looks the name up, kind in the message, misspelt name, its suggestion, every accepted name in order)
LOOKUPS = [
    (_optimizer, "optimizer", "adamww", "adamw", "adamw, sgd"),
    (_scheduler, "LR schedule", "pol", "poly", "constant, poly, poly_legacy"),
    (
        lambda name: build_loader(DataConfig(root="/nowhere", loader=name), DistEnv()),
        "data loader",
        "dail",
        "dali",
        "dali, torch, auto",
    ),
    (
        lambda name: build_loader(DataConfig(root="/nowhere", loader=name), DistEnv()),
        "data loader",
        "aut",
        "auto",
        "dali, torch, auto",
    ),
    (get_decoder, "image decoder", "pilow", "pillow", "pillow, simplejpeg, auto"),
    (lambda name: Compose([name]), "augmentation", "blurr", "blur", "blur, gray, hsv, resize"),
    (DALI_AUGMENTS.get, "DALI augmentation", "grey", "gray", "blur, gray, hsv, resize"),
]


@pytest.mark.parametrize("lookup, kind, typo, meant, accepted", LOOKUPS, ids=[row[2] for row in LOOKUPS])
def test_unknown_name_is_one_line_with_a_suggestion(lookup, kind, typo, meant, accepted):
    with pytest.raises(UnknownNameError) as info:
        lookup(typo)
    assert str(info.value) == f"unknown {kind} {typo!r} (did you mean {meant!r}?); accepted: {accepted}"
    assert isinstance(info.value, KeyError) and isinstance(info.value, UserInputError)


def test_registered_names_are_unchanged():
    # Config values are a contract: these are the names the plain dicts had.
    assert OPTIMIZERS.names() == ["adamw", "sgd"] and SCHEDULES.names() == ["constant", "poly", "poly_legacy"]
    assert LOADERS.names() == ["dali", "torch"] and LOADERS.choices() == ["dali", "torch", "auto"]
    assert list(DECODERS) == ["simplejpeg", "pillow"]  # fastest first: "auto" takes the first installed
    assert AUGMENTS.names() == DALI_AUGMENTS.names() == ["blur", "gray", "hsv", "resize"]


def test_registry_mapping_access_special_names_and_order():
    reg = Registry("widget", special=("auto",))
    second, first = (lambda: 2), (lambda: 1)
    reg.register("zeta")(second)
    reg.register("alpha")(first)
    assert list(reg) == ["zeta", "alpha"] and reg.items() == [("zeta", second), ("alpha", first)]
    assert reg.names() == ["alpha", "zeta"] and reg.choices() == ["alpha", "zeta", "auto"] and len(reg) == 2
    assert reg["alpha"] is first and "alpha" in reg and "auto" not in reg
    with pytest.raises(KeyError) as info:
        reg["autp"]
    assert str(info.value) == "unknown widget 'autp' (did you mean 'auto'?); accepted: alpha, zeta, auto"
    with pytest.raises(ValueError, match="'auto' is reserved"):
        reg.register("auto")(first)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(second)


def test_auto_decoder_is_the_first_installed_one(monkeypatch):
    fastest = "simplejpeg" if importlib.util.find_spec("simplejpeg") else "pillow"
    assert get_decoder("auto") is get_decoder(fastest)

    def pillow():
        return "pillow decoder"

    fake = Registry("image decoder", special=("auto",))
    fake.register("missing")(lambda: None)
    fake.register("pillow")(pillow)
    monkeypatch.setattr(decode, "DECODERS", fake)
    assert get_decoder("auto") == "pillow decoder"
    with pytest.raises(UserInputError, match=r"^image decoder 'missing' is not installed \(pip install missing\)$"):
        get_decoder("missing")


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "data.augment=blur,blurr",
            "data.augment[1]='blurr' is not one of blur, gray, hsv, resize (did you mean blur?)",
        ),
        ("data.augment=sepia", "data.augment[0]='sepia' is not one of blur, gray, hsv, resize"),
        ("data.loader=dail", "data.loader='dail' is not one of dali, torch, auto (did you mean dali?)"),
        ("optim.schedule=pol", "optim.schedule='pol' is not one of constant, poly, poly_legacy (did you mean poly?)"),
    ],
)
def test_config_checks_registered_names_before_anything_runs(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, ["data.root=/data", override])
    assert str(info.value) == message


def test_config_accepts_every_registered_augmentation_and_loader():
    cfg = load_config(BASE, ["data.root=/data", "data.augment=resize,blur,hsv,gray", "data.loader=auto"])
    assert cfg.data.augment == ["resize", "blur", "hsv", "gray"]
