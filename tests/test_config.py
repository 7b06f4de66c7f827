"""Config: recipe loading, typed overrides, one-line errors with suggestions, JSON round trip."""
import json
import os

import pytest

from fr.config import Config, ConfigError, apply_overrides, load_config, load_file, save_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "configs", "base.py")


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["optim.lr=0.05", "loss.name=cosface", "train.max_steps=7",
                                     "eval.bins=a.bin,b.bin", "output.tensorboard=false", "optim.betas=[0.8,0.9]",
                                     "loss.params.m=0.35", "model.kwargs={\"scale\": 1}", "data.synth.seed=3"])
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.loss.name == "cosface"
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.eval.bins == ["a.bin", "b.bin"]
    assert cfg.output.tensorboard is False
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.loss.params == {"m": 0.35}
    assert cfg.model.kwargs == {"scale": 1}
    assert cfg.data.synth.seed == 3


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=0.1", "did you mean optim.lr"),
    ("optim.lr=fast", "optim.lr expects a number"),
    ("train.max_steps=1.5", "train.max_steps expects an int"),
    ("output.tensorboard=maybe", "expects a bool"),
    ("optim=3", "optim is a section"),
    ("data.batchsize=4", "did you mean data.batch_size"),
    ("lr", "not of the form key=value"),
])
def test_override_errors_are_one_line_and_name_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [override])
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_recipe_inherits_base_and_validates(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(f"from fr.config import inherit\nconfig = inherit(__file__, {BASE!r})\n"
                      "config.data.root = '/data'\nconfig.optim.lr = 0.02\n")
    cfg = load_config(str(recipe), ["loss.name=cosface"])
    assert cfg.model.backbone == "iresnet50"  # from base
    assert cfg.optim.lr == 0.02 and cfg.loss.name == "cosface"


@pytest.mark.parametrize("override, needle", [
    ("loss.name=arcfce", "did you mean arcface"),
    ("model.backbone=iresnet5", "iresnet50"),
    ("optim.name=adam", "adamw"),
    ("partial_fc.sample_rate=0", "partial_fc.sample_rate"),
    ("data.root=", "data.root is empty"),
])
def test_validation_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(BASE, ["data.root=/data", override])


def test_saved_json_loads_back_identically(tmp_path):
    cfg = load_config(BASE, ["data.root=/data", "optim.lr=0.3", "eval.bins=x", "loss.params.m=0.2"])
    path = tmp_path / "config.json"
    save_config(cfg, str(path))
    again = load_file(str(path))
    assert again == cfg
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
