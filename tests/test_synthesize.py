"""Synthetic data set on disk: insightface layout, balanced disjoint verification pairs, determinism, caching,
and the data.synth rules shared by config loading and the generator."""

import json
import os
import pickle

import numpy as np
import pytest

from fr.cli.data import main as data_main
from fr.config import ConfigError, SynthConfig, load_config
from fr.data.datasets import RecordDataset
from fr.data.recordio import IndexedRecordIO, unpack
from fr.synth.dataset import ensure_synthetic, generate, plan_pairs
from tests.helpers.tiny_run import RECIPE

SMALL = dict(identities=6, per_identity=3, holdout_identities=5, pairs=40, seed=4)


def test_layout_and_pairs(tmp_path):
    out = str(tmp_path / "set")
    assert (
        data_main(
            [
                "synth",
                "--out",
                out,
                "--identities",
                "6",
                "--per-identity",
                "3",
                "--holdout-identities",
                "5",
                "--pairs",
                "40",
                "--seed",
                "4",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    rec = IndexedRecordIO(os.path.join(out, "train.idx"), os.path.join(out, "train.rec"), "r")
    header, _ = unpack(rec.read_idx(0))
    assert header.label.tolist() == [19.0, 25.0]  # 18 images, 6 identities
    dataset = RecordDataset(out, flip=False)
    assert [dataset[i][1] for i in range(18)] == [i // 3 for i in range(18)]
    with open(os.path.join(out, "synthetic_val.bin"), "rb") as fh:
        bins, issame = pickle.load(fh)
    assert len(bins) == 80 and len(issame) == 40
    folds = np.array(issame).reshape(10, 4)
    assert (folds.sum(axis=1) == 2).all()  # every contiguous fold balanced
    assert all(b[:2] == b"\xff\xd8" for b in bins)  # JPEG


def test_pairs_use_only_held_out_identities_and_no_image_twice():
    cfg = SynthConfig(**SMALL)
    pairs = plan_pairs(cfg)
    assert len(pairs) == cfg.pairs
    images = [pair.first for pair in pairs] + [pair.second for pair in pairs]
    assert len(set(images)) == len(images)
    assert all(cfg.identities <= ref.identity < cfg.identities + cfg.holdout_identities for ref in images)
    assert all((pair.first.identity == pair.second.identity) == pair.same for pair in pairs)
    # image numbers count up from 0 per identity, in pair order
    seen = {}
    for pair in pairs:
        for ref in (pair.first, pair.second):
            assert ref.image == seen.get(ref.identity, 0)
            seen[ref.identity] = ref.image + 1


def test_output_does_not_depend_on_worker_count(tmp_path):
    generate(str(tmp_path / "one"), SynthConfig(workers=1, **SMALL))
    generate(str(tmp_path / "two"), SynthConfig(workers=2, **SMALL))
    for name in ("train.rec", "train.idx", "synthetic_val.bin"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_cache_reuse_regeneration_and_refusal(tmp_path):
    out = str(tmp_path / "cache")
    ensure_synthetic(out, SynthConfig(workers=1, **SMALL))
    stamp = os.path.getmtime(os.path.join(out, "train.rec"))
    ensure_synthetic(out, SynthConfig(workers=2, **SMALL))  # worker count does not matter
    assert os.path.getmtime(os.path.join(out, "train.rec")) == stamp
    ensure_synthetic(out, SynthConfig(workers=1, **dict(SMALL, seed=5)))
    assert json.load(open(os.path.join(out, "synthetic.json")))["seed"] == 5
    other = tmp_path / "users_data"
    other.mkdir()
    (other / "train.rec").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="holds no synthetic set"):
        ensure_synthetic(str(other), SynthConfig(**SMALL))
    assert (other / "train.rec").read_bytes() == b"precious"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_pairs_must_fill_balanced_folds(tmp_path):
    with pytest.raises(ValueError, match="multiple of 20"):
        generate(str(tmp_path / "x"), SynthConfig(**dict(SMALL, pairs=30)))
    assert not (tmp_path / "x").exists()


# one bad value per data.synth field: zero or one identity, an odd or unbalanced pair count, negative numbers
BAD_VALUES = [
    ("identities", 0),
    ("per_identity", 0),
    ("holdout_identities", 1),
    ("pairs", 0),
    ("pairs", 10),
    ("pairs", 30),
    ("pairs", -20),
    ("seed", -1),
    ("workers", -1),
    ("difficulty", -0.5),
    ("difficulty", float("nan")),
    ("difficulty", float("inf")),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_each_synth_rule_names_its_key_in_config_loading_and_in_the_generator(field, value, tmp_path, capsys):
    key = f"data.synth.{field}"
    with pytest.raises(ConfigError) as loading:
        load_config(RECIPE, [f"data.root={tmp_path / 'data'}", f"{key}={value}"])
    message = str(loading.value)
    assert message.startswith(f"{key} (fr-data synth --{field.replace('_', '-')}) must be ")
    assert message.endswith(f", got {value}") and "\n" not in message
    # the generator applies the very same rule: the same message, before anything is written
    out = tmp_path / "set"
    with pytest.raises(ConfigError) as generating:
        generate(str(out), SynthConfig(**{**SMALL, field: value}))
    assert str(generating.value) == message
    assert not out.exists()
    flag = f"--{field.replace('_', '-')}"
    argv = [
        "synth",
        "--out",
        str(out),
        *[a for k, v in SMALL.items() if k != field for a in (f"--{k.replace('_', '-')}", str(v))],
        flag,
        str(value),
    ]
    assert data_main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"fr-data: error: {message}"


def test_the_smallest_valid_recipe_passes_every_rule():
    SynthConfig(
        identities=1, per_identity=1, holdout_identities=2, pairs=20, seed=0, workers=0, difficulty=0.0
    ).validate()
    cfg = load_config(RECIPE, ["data.synth.pairs=20", "data.synth.holdout_identities=2", "data.synth.difficulty=0"])
    assert (cfg.data.synth.pairs, cfg.data.synth.holdout_identities) == (20, 2)
