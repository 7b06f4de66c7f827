"""Config: recipe loading, typed overrides, one-line errors with suggestions, JSON round trip."""

import json
import os
import re
import typing

import pytest

from fr.config import Config, ConfigError, DataConfig, apply_overrides, load_config, load_file, save_config
from fr.heads import build_loss
from tests.helpers import ROOT

BASE = os.path.join(ROOT, "configs", "base.py")


def test_overrides_are_typed():
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=0.05",
            "loss.name=cosface",
            "train.max_steps=7",
            "eval.bins=a.bin,b.bin",
            "output.tensorboard=false",
            "optim.betas=[0.8,0.9]",
            "loss.params.m=0.35",
            'model.kwargs={"scale": 1}',
            "data.synth.seed=3",
        ],
    )
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.name == "cosface"
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.eval.bins == ["a.bin", "b.bin"]
    assert cfg.output.tensorboard is False
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.loss.params == {"m": 0.35}
    assert cfg.model.kwargs == {"scale": 1}
    assert cfg.data.synth.seed == 3


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "did you mean optim.lr"),
        ("optim.lr=fast", "optim.lr expects a number"),
        ("train.max_steps=1.5", "train.max_steps expects an int"),
        ("output.tensorboard=maybe", "expects a bool"),
        ("optim=3", "optim is a section"),
        ("data.batchsize=4", "did you mean data.batch_size"),
        ("lr", "not of the form key=value"),
    ],
)
def test_override_errors_are_one_line_and_name_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [override])
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_recipe_inherits_base_and_validates(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"from fr.config import inherit\nconfig = inherit(__file__, {BASE!r})\n"
        "config.data.root = '/data'\nconfig.optim.lr = 0.02\n"
    )
    cfg = load_config(str(recipe), ["loss.name=cosface"])
    assert cfg.model.backbone == "iresnet50"  # from base
    assert cfg.optim.lr == 0.02 and cfg.loss.name == "cosface"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("loss.name=arcfce", "did you mean arcface"),
        ("model.backbone=iresnet5", "iresnet50"),
        ("optim.name=adam", "adamw"),
        ("partial_fc.sample_rate=0", "partial_fc.sample_rate"),
        ("data.root=", "data.root is empty"),
    ],
)
def test_validation_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(BASE, ["data.root=/data", override])


def test_saved_json_loads_back_identically(tmp_path):
    cfg = load_config(
        BASE,
        [
            "data.root=/data",
            "optim.lr=0.3",
            "eval.bins=x",
            "loss.params.m=0.2",
            "loss.params.exact_gradient=on",
            "train.amp=off",
        ],
    )
    path = tmp_path / "config.json"
    save_config(cfg, str(path))
    again = load_file(str(path))
    assert again == cfg and again.loss.params["exact_gradient"] is True
    data = json.loads(path.read_text())
    data["optim"]["lrr"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_file(str(path))


def test_recipe_must_define_config(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define `config`"):
        load_file(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_file(str(tmp_path / "missing.py"))


def test_every_shipped_recipe_loads():
    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".py"):
            cfg = load_file(os.path.join(ROOT, "configs", name))
            assert isinstance(cfg, Config)


# ---------------------------------------------------------------------------------- checks beside their fields
def valid_config():
    return Config(data=DataConfig(root="/data"))


# (section to spoil, field, bad value, the exact one-line message) -- texts written out by hand
SECTION_RULES = [
    ("data", "root", "", "data.root is empty: set it to the directory holding train.rec/train.idx"),
    ("data", "batch_size", 0, "data.batch_size must be > 0, got 0"),
    ("data", "num_workers", -1, "data.num_workers must be >= 0, got -1"),
    ("data", "loader", "dail", "data.loader='dail' is not one of dali, torch, auto (did you mean dali?)"),
    (
        "data",
        "augment",
        ["blur", "blurr"],
        "data.augment[1]='blurr' is not one of blur, gray, hsv, resize (did you mean blur?)",
    ),
    ("model", "embedding_size", 0, "model.embedding_size must be > 0, got 0"),
    ("model", "backbone", "iresnet5", "model.backbone='iresnet5' is not one of"),
    ("loss", "name", "cosfac", "loss.name='cosfac' is not one of"),
    ("partial_fc", "sample_rate", 1.5, "partial_fc.sample_rate must be in (0, 1], got 1.5"),
    ("partial_fc", "update", "sprase", "partial_fc.update='sprase' is not one of dense, sparse (did you mean sparse?)"),
    (
        "partial_fc",
        "interclass_filtering_threshold",
        1.0,
        "partial_fc.interclass_filtering_threshold must be in [0, 1), got 1.0",
    ),
    ("optim", "lr", 0.0, "optim.lr must be > 0, got 0.0"),
    ("optim", "weight_decay", -1e-4, "optim.weight_decay must be >= 0, got -0.0001"),
    ("optim", "schedule", "pol", "optim.schedule='pol' is not one of constant, poly, poly_legacy (did you mean poly?)"),
    ("train", "epochs", 0, "train.epochs or train.max_steps must be > 0"),
    ("train", "device", "gpu", "train.device='gpu' is not one of auto, cpu, cuda (did you mean cpu?)"),
    ("train", "amp", "of", "train.amp='of' is not one of auto, on, off (did you mean off?)"),
    ("train", "log_every", 0, "train.log_every must be > 0, got 0"),
    ("eval", "batch_size", 0, "eval.batch_size must be > 0, got 0"),
    ("eval", "every", -1, "eval.every must be >= 0, got -1"),
    ("output", "keep_checkpoints", 0, "output.keep_checkpoints must be >= 1, got 0"),
    ("output", "checkpoint_every", -5, "output.checkpoint_every must be >= 0, got -5"),
]


@pytest.mark.parametrize(
    "section, name, bad, message", SECTION_RULES, ids=[f"{row[0]}.{row[1]}" for row in SECTION_RULES]
)
def test_each_section_validates_its_own_fields(section, name, bad, message):
    cfg = valid_config()
    cfg.validate()  # the starting point is valid: the error below is this field's
    part = getattr(cfg, section)
    setattr(part, name, bad)  # set in Python, as a script calling train(cfg) would: no override parsing involved
    for check in (part.validate, cfg.validate):  # the section alone, and through the whole config
        with pytest.raises(ConfigError) as info:
            check()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_rules_spanning_sections_are_checked_by_the_config():
    cfg = valid_config()
    cfg.partial_fc.update, cfg.optim.name = "sparse", "adamw"
    cfg.partial_fc.validate()
    cfg.optim.validate()
    with pytest.raises(ConfigError, match="^partial_fc.update=sparse needs optim.name=sgd, got 'adamw'$"):
        cfg.validate()


def test_config_validate_reaches_the_synth_section():
    cfg = valid_config()
    cfg.data.synth.identities = 0
    with pytest.raises(ConfigError, match=r"data\.synth\.identities"):
        cfg.validate()


@pytest.mark.parametrize(
    "key, choices",
    [
        ("partial_fc.update", ("dense", "sparse")),
        ("train.device", ("auto", "cpu", "cuda")),
        ("train.amp", ("auto", "on", "off")),
    ],
)
def test_fixed_choices_are_literal_annotations(key, choices):
    section, name = key.split(".")
    hint = typing.get_type_hints(type(getattr(Config(), section)))[name]
    assert typing.get_origin(hint) is typing.Literal and typing.get_args(hint) == choices


LITERAL_ERRORS = [
    ("train.device", "gpu", "train.device='gpu' is not one of auto, cpu, cuda (did you mean cpu?)"),
    ("train.amp", "of", "train.amp='of' is not one of auto, on, off (did you mean off?)"),
    ("partial_fc.update", "Sparse", "partial_fc.update='Sparse' is not one of dense, sparse (did you mean sparse?)"),
    ("train.device", "tpu9", "train.device='tpu9' is not one of auto, cpu, cuda"),
]


@pytest.mark.parametrize("key, value, message", LITERAL_ERRORS)
def test_fixed_choices_are_checked_by_overrides_recipes_and_saved_configs(tmp_path, key, value, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [f"{key}={value}"])  # parsing alone, before validate()
    assert str(info.value) == message

    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"from fr.config import inherit\nconfig = inherit(__file__, {BASE!r})\nconfig.{key} = {value!r}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_file(str(recipe))
    assert str(info.value) == f"{recipe}: {message}"

    saved = tmp_path / "config.json"
    section, name = key.split(".")
    saved.write_text(json.dumps({section: {name: value}}))
    with pytest.raises(ConfigError) as info:
        load_file(str(saved))
    assert str(info.value) == f"{saved}: {message}"


def test_fixed_choices_accept_every_listed_value(tmp_path):
    cfg = apply_overrides(valid_config(), ["train.device=cpu", "train.amp=off", "partial_fc.update=sparse"])
    assert (cfg.train.device, cfg.train.amp, cfg.partial_fc.update) == ("cpu", "off", "sparse")
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"from fr.config import inherit\nconfig = inherit(__file__, {BASE!r})\n"
        "config.data.root = '/data'\nconfig.train.device = 'cuda'\nconfig.train.amp = 'on'\n"
    )
    cfg = load_config(str(recipe))
    assert (cfg.train.device, cfg.train.amp) == ("cuda", "on")


def test_loss_params_are_typed_bools_and_numbers():
    cfg = apply_overrides(valid_config(), ["loss.params.exact_gradient=true", "loss.params.m=0.35", "loss.params.s=64"])
    assert cfg.loss.params == {"exact_gradient": True, "m": 0.35, "s": 64}
    assert cfg.loss.params["exact_gradient"] is True and isinstance(cfg.loss.params["s"], int)
    cfg.validate()
    loss = build_loss(cfg.loss.name, **cfg.loss.params)
    assert loss.exact_gradient is True and loss.m == 0.35 and loss.s == 64.0
    off = apply_overrides(valid_config(), ["loss.params.exact_gradient=False"]).loss.params["exact_gradient"]
    assert off is False
    whole = apply_overrides(valid_config(), ['loss.params={"exact_gradient": true, "m": 1e-1}']).loss.params
    assert whole == {"exact_gradient": True, "m": 0.1}
    elastic = apply_overrides(
        valid_config(),
        ["loss.name=elastic_cos", "loss.params.sigma=null", "loss.params.plus=yes", "loss.params.seed=7"],
    )
    assert elastic.validate().loss.params == {"sigma": None, "plus": True, "seed": 7}


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.params.m=big", "loss.params.m expects a bool or a number, got 'big'"),
        ('loss.params={"m": "0.5x"}', "loss.params.m expects a bool or a number, got '0.5x'"),
        ("loss.params.m.x=1", "unknown config key 'loss.params.m.x'"),
    ],
)
def test_loss_params_reject_text_naming_the_param(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(valid_config(), [override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["loss.params.mm=0.3"],
            "loss.params.mm: loss 'arcface' has no parameter 'mm' (did you mean m?); it takes s, m, exact_gradient",
        ),
        (
            ["loss.name=cosface", "loss.params.exact_gradient=true"],
            "loss.params.exact_gradient: loss 'cosface' has no parameter 'exact_gradient'; it takes s, m",
        ),
        (["loss.params.exact_gradient=0.5"], "loss.params.exact_gradient expects a bool (true/false), got 0.5"),
        (["loss.params.m=true"], "loss.params.m expects a number, got True"),
        (["loss.name=elastic_arc", "loss.params.seed=1.5"], "loss.params.seed expects an int, got 1.5"),
    ],
)
def test_loss_params_are_checked_against_the_loss_keywords(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, ["data.root=/data", *overrides])
    assert str(info.value) == message


def test_loss_params_of_a_loss_taking_any_keyword_are_checked_by_type_only(monkeypatch):
    from fr.heads.margins import LOSSES

    def open_loss(s: float = 64.0, **extra):  # registered for this test only
        return s, extra

    monkeypatch.setitem(LOSSES._entries, "open_loss", open_loss)
    cfg = apply_overrides(valid_config(), ["loss.name=open_loss", "loss.params.anything=2", "loss.params.s=30"])
    assert cfg.validate().loss.params == {"anything": 2, "s": 30}
    cfg.loss.params["s"] = True  # a Python-built config: the annotated keyword's type is still checked
    with pytest.raises(ConfigError, match="^loss.params.s expects a number, got True$"):
        cfg.validate()


def test_recipe_loss_params_are_checked_too(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        f"from fr.config import inherit\nconfig = inherit(__file__, {BASE!r})\n"
        "config.data.root = '/data'\nconfig.loss.params = {'m': 'wide'}\n"
    )
    with pytest.raises(ConfigError, match=r"recipe.py: loss.params.m expects a bool or a number, got 'wide'$"):
        load_file(str(recipe))


@pytest.mark.parametrize(
    "section, name, bad, needle",
    [
        ("loss", "params", {"mm": 0.3}, "loss.params.mm"),
        ("data", "augment", ["sepia"], "data.augment[0]='sepia'"),
        ("train", "device", "gpu", "train.device='gpu'"),
    ],
)
def test_train_checks_a_python_built_config_before_any_process_group(tmp_path, monkeypatch, section, name, bad, needle):
    from fr.train import run

    def must_not_run(*args, **kwargs):
        raise AssertionError("process-group or data work started before the config was checked")

    monkeypatch.setattr(run, "init_distributed", must_not_run)
    monkeypatch.setattr(run, "prepare_data", must_not_run)
    cfg = valid_config()
    cfg.output.dir = str(tmp_path / "run")
    setattr(getattr(cfg, section), name, bad)
    with pytest.raises(ConfigError) as info:
        run.train(cfg)
    assert needle in str(info.value)
    assert not os.path.exists(cfg.output.dir)


# ---------------------------------------------------------------------------------- documented override forms
DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")
)
KEY_VALUE = r"[a-z_]+(?:\.[a-z_0-9]+)+=[^`\s]*(?: [^`\s]+)*"


def documented_overrides():
    """Every `key=value` the docs show: inline code spans, and the words of fenced command lines."""
    forms = set()
    for path in DOCS:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        forms.update(re.findall(rf"`({KEY_VALUE})`", text))
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL):
            forms.update(re.findall(r"(?:^|(?<=\s))([a-z_]+(?:\.[a-z_0-9]+)+=\S+)", block))
    return sorted(forms)


def expected_value(text, default):
    """What the docs mean by the text, read independently of fr.config's parser."""
    if isinstance(default, bool):
        return {"true": True, "false": False}[text]
    if isinstance(default, list):
        return text.split(",")
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_the_parser_finds_the_documented_overrides():
    forms = documented_overrides()
    for known in (
        "optim.lr=0.05",
        "loss.params.m=0.35",
        'model.kwargs={"width": 32}',
        "eval.bins=lfw,cfp_fp",
        "train.resume=auto",
        "loss.params.exact_gradient=true",
    ):
        assert known in forms


@pytest.mark.parametrize("override", documented_overrides())
def test_every_documented_override_works(override):
    key, text = override.split("=", 1)
    section, *rest = key.split(".")
    default = getattr(getattr(Config(), section), rest[0])
    default = default.get(rest[1]) if len(rest) == 2 else default
    cfg = load_config(BASE, ["data.root=/data", override])
    value = getattr(getattr(cfg, section), rest[0])
    value = value[rest[1]] if len(rest) == 2 else value
    assert value == expected_value(text, default)
