"""Every recipe in configs/ loads and validates; docs/migration.md's tables match the recipes and the key map;
launch/torchrun.sh's examples name recipes that exist."""

import glob
import os
import re

import pytest

from fr.config import load_file
from fr.migrate.keymap import known_keys
from tests.helpers import ROOT

RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
DOC = os.path.join(ROOT, "docs", "migration.md")


def doc_rows(heading):
    """The rows of the table in docs/migration.md's section `heading` (up to the next `## `), as lists of cells."""
    with open(DOC, encoding="utf-8") as fh:
        section = fh.read().split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows[2:]]


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_loads_and_validates(path):
    cfg = load_file(path)
    if not cfg.data.root:  # base.py leaves the data to its recipes
        cfg.data.root = "/data"
    cfg.validate()


def test_recipe_table_matches_the_recipes():
    rows = doc_rows("## Recipes")
    listed = {row[0].strip("`") for row in rows}
    recipes = {f"configs/{os.path.basename(p)}" for p in RECIPES}
    assert listed <= recipes and len(rows) >= 20
    for file, backbone, loss, lr, wd, batch, epochs, warmup, rate, _source in rows:
        cfg = load_file(os.path.join(ROOT, file.strip("`")))
        assert cfg.model.backbone == backbone.strip("`"), file
        assert (cfg.loss.name, cfg.loss.params["m"]) == (loss.split()[0], float(loss.split("m=")[1].rstrip(")"))), file
        assert (cfg.optim.lr, cfg.optim.weight_decay) == (float(lr), float(wd)), file
        assert (cfg.data.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs) == (
            int(batch),
            int(epochs),
            float(warmup),
        )
        assert cfg.partial_fc.sample_rate == float(rate), file


def test_key_table_lists_every_key_fr_reads():
    documented = {row[0].strip("`") for row in doc_rows("## Key map")}
    assert documented == set(known_keys())


def test_torchrun_examples_name_existing_recipes():
    with open(os.path.join(ROOT, "launch", "torchrun.sh"), encoding="utf-8") as fh:
        named = set(re.findall(r"configs/[\w.]+\.py", fh.read()))
    assert named and all(os.path.isfile(os.path.join(ROOT, name)) for name in named)
