"""arcface_torch configs as they are: their base.py merge, the key mapping, errors, recipes written from them,
and a two-step training run from one."""

import json
import logging
import os
import sys
import textwrap

import pytest

from fr.cli.train import main as train_main
from fr.config import Config, ConfigError, load_config, load_file
from tests.helpers import ROOT

# arcface_torch's configs/base.py, in their syntax (their W&B keys included)
THEIR_BASE = """
from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "r50"
config.resume = False
config.save_all_states = False
config.output = "ms1mv3_arcface_r50"
config.embedding_size = 512
config.sample_rate = 1
config.interclass_filtering_threshold = 0
config.fp16 = False
config.batch_size = 128
config.optimizer = "sgd"
config.lr = 0.1
config.momentum = 0.9
config.weight_decay = 5e-4
config.verbose = 2000
config.frequent = 10
config.dali = False
config.gradient_acc = 1
config.seed = 2048
config.num_workers = 2
config.wandb_key = "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
config.suffix_run_name = None
config.using_wandb = False
config.wandb_entity = "entity"
config.wandb_project = "project"
config.wandb_log_all = True
config.save_artifacts = False
config.wandb_resume = False
"""

# one of their recipes, in their syntax
THEIR_JOB = """
from easydict import EasyDict as edict

# make training faster
config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "r18"
config.resume = False
config.output = None
config.embedding_size = 256
config.sample_rate = 0.3
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 1e-4
config.batch_size = 64
config.lr = 0.2
config.verbose = 4000
config.dali = False

config.rec = "/train_tmp/glint360k"
config.num_classes = 360232
config.num_image = 17091657
config.num_epoch = 20
config.warmup_epoch = config.num_epoch // 10
config.gradient_acc = 2
config.val_targets = ['lfw', 'cfp_fp', "agedb_30"]
"""


def write_layout(tmp_path, job=THEIR_JOB, name="glint_r18", base=THEIR_BASE):
    """Their layout: configs/base.py beside configs/NAME.py; returns the path without `.py`, as they pass it."""
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    if base is not None:
        (configs / "base.py").write_text(textwrap.dedent(base))
    (configs / f"{name}.py").write_text(textwrap.dedent(job))
    return str(configs / name)


def expected_glint_r18() -> Config:
    """THEIR_JOB over THEIR_BASE, written out field by field in fr's terms."""
    cfg = Config()
    cfg.loss.name, cfg.loss.params = "cosface", {"s": 64.0, "m": 0.4}
    cfg.model.backbone, cfg.model.embedding_size = "iresnet18", 256
    cfg.partial_fc.sample_rate = 0.3
    cfg.train.amp, cfg.train.resume, cfg.train.seed, cfg.train.log_every, cfg.train.epochs = "auto", "", 2048, 10, 20
    cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay = "sgd", 0.2, 0.9, 1e-4
    cfg.optim.warmup_epochs, cfg.optim.gradient_accumulation = 2.0, 2
    cfg.data.root, cfg.data.num_classes, cfg.data.batch_size = "/train_tmp/glint360k", 360232, 64
    cfg.data.loader, cfg.data.num_workers = "torch", 2
    cfg.eval.every, cfg.eval.bins = 4000, ["lfw", "cfp_fp", "agedb_30"]
    cfg.output.dir, cfg.output.wandb = os.path.join("work_dirs", "glint_r18"), False
    return cfg


def test_their_config_merges_base_and_maps_every_key(tmp_path):
    cfg = load_config(write_layout(tmp_path))  # no `.py`: resolved as their get_config does
    assert cfg == expected_glint_r18()


def test_without_their_base_the_published_defaults_apply(tmp_path):
    # e.g. one of their files copied alone, or beside fr's own configs/base.py (an fr recipe, not theirs)
    fr_base = "from fr.config import Config\nconfig = Config()\nconfig.train.log_every = 77\n"
    cfg = load_config(write_layout(tmp_path, base=fr_base))
    assert cfg == expected_glint_r18()


@pytest.mark.parametrize(
    "margins, name, params",
    [
        ((1.0, 0.5, 0.0), "arcface", {"s": 64.0, "m": 0.5}),
        ((1.0, 0.0, 0.35), "cosface", {"s": 64.0, "m": 0.35}),
        ((1.0, 0.3, 0.2), "combined", {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}),
        ((0.9, 0.4, 0.15), "combined", {"s": 64.0, "m1": 0.9, "m2": 0.4, "m3": 0.15}),
    ],
)
def test_margin_list_picks_the_loss(tmp_path, margins, name, params):
    job = THEIR_JOB.replace("(1.0, 0.0, 0.4)", repr(margins))
    cfg = load_file(write_layout(tmp_path, job) + ".py")
    assert (cfg.loss.name, cfg.loss.params) == (name, params)


@pytest.mark.parametrize(
    "line, key",
    [("config.decay_epoch = [8, 12, 15]", "decay_epoch"), ("config.lr_func = lambda epoch: 1.0", "lr_func")],
)
def test_key_without_fr_equivalent_is_a_one_line_error(tmp_path, capsys, line, key):
    path = write_layout(tmp_path, THEIR_JOB + line + "\n")
    assert train_main([path, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("fr-train: error: ") and f"'{key}' has no fr equivalent" in err and "glint_r18.py" in err


def test_unknown_network_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="network='r2060' has no fr backbone"):
        load_file(write_layout(tmp_path, THEIR_JOB.replace('"r18"', '"r2060"')) + ".py")


def test_mapping_logged_once_and_logging_only_keys_warn_without_secrets(tmp_path, caplog):
    extra = 'config.save_all_states = True\nconfig.suffix_run_name = "try3"\nconfig.wandb_key = "s3cr3t-k3y"\n'
    path = write_layout(tmp_path, THEIR_JOB + extra)
    with caplog.at_level(logging.INFO, logger="fr.migrate"):
        load_config(path)
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    warned = {r.getMessage().split(": ", 1)[1].split("=")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert len(infos) == 1 and "margin_list=(1.0, 0.0, 0.4) -> loss.name='cosface'" in infos[0].getMessage()
    assert warned == {"save_all_states", "suffix_run_name", "wandb_key"}  # base.py's untouched defaults: quiet
    assert "s3cr3t" not in caplog.text


def test_wandb_keys_map_when_wandb_is_on(tmp_path):
    extra = 'config.using_wandb = True\nconfig.wandb_project = "faces"\nconfig.wandb_entity = "lab"\n'
    cfg = load_config(write_layout(tmp_path, THEIR_JOB + extra))
    assert (cfg.output.wandb, cfg.output.wandb_project, cfg.output.wandb_entity) == (True, "faces", "lab")


def test_easydict_is_neither_needed_nor_imported(tmp_path):
    modules = set(sys.modules)
    load_config(write_layout(tmp_path))
    assert "easydict" not in sys.modules and not {m for m in set(sys.modules) - modules if "easydict" in m}


def test_print_config_has_the_sections_and_keys_of_config_json(tmp_path, capsys):
    def keys(tree):  # each section's fields
        return {(section, name) for section, fields in tree.items() for name in fields}

    saved = keys(json.loads(Config().to_json()))  # what a run writes as config.json
    for config in (write_layout(tmp_path), os.path.join(ROOT, "configs", "synthetic.py")):
        assert train_main([config, "--print-config"]) == 0
        assert keys(json.loads(capsys.readouterr().out)) == saved


def test_written_recipe_loads_as_the_mapped_config(tmp_path, capsys):
    path, out = write_layout(tmp_path), str(tmp_path / "fr_recipe.py")
    assert train_main([path, "optim.lr=0.3", "--write-recipe", out]) == 0
    assert "easydict" not in open(out).read()
    assert load_config(out) == load_config(path, ["optim.lr=0.3"])


def test_their_config_trains_two_steps(tmp_path, record_dir, capsys):
    data = record_dir(8, 2)  # 16 images: one epoch of two batches of 8
    job = f"""
        from easydict import EasyDict as edict

        config = edict()
        config.margin_list = (1.0, 0.5, 0.0)
        config.network = "r18"
        config.output = {str(tmp_path / "out")!r}
        config.embedding_size = 128
        config.sample_rate = 1.0
        config.fp16 = True
        config.batch_size = 8
        config.lr = 0.1
        config.verbose = 2000
        config.frequent = 1
        config.num_workers = 0
        config.rec = {str(data)!r}
        config.num_classes = 8
        config.num_image = 16
        config.num_epoch = 1
        config.warmup_epoch = 0
        config.val_targets = []
        """
    slim = 'model.kwargs={"width": 16, "stem_stride": 2}'  # an override, as the tiny run slims its iResNet-18
    assert train_main([write_layout(tmp_path, job, name="tiny_r18"), slim]) == 0
    with open(tmp_path / "out" / "results.json") as fh:
        results = json.load(fh)
    with open(tmp_path / "out" / "config.json") as fh:
        saved = json.load(fh)
    assert results["steps"] == 2 and os.path.isfile(tmp_path / "out" / "model.pt")
    assert (saved["model"]["backbone"], saved["loss"]["name"], saved["train"]["amp"]) == (
        "iresnet18",
        "arcface",
        "auto",
    )
