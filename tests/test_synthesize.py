"""Synthetic data set on disk: insightface layout, balanced disjoint verification pairs, determinism, caching."""
import json
import os
import pickle

import numpy as np
import pytest

from fr.cli.data import main as data_main
from fr.config import SynthConfig
from fr.data.datasets import RecordDataset
from fr.data.recordio import IndexedRecordIO, unpack
from fr.data.synthesize import ensure_synthetic, generate, plan_pairs

SMALL = dict(identities=6, per_identity=3, holdout_identities=5, pairs=40, seed=4)


def test_layout_and_pairs(tmp_path):
    out = str(tmp_path / "set")
    assert data_main(["synth", "--out", out, "--identities", "6", "--per-identity", "3",
                      "--holdout-identities", "5", "--pairs", "40", "--seed", "4", "--workers", "1"]) == 0
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
    pairs, issame = plan_pairs(cfg)
    images = [(a, ia) for a, ia, _, _ in pairs] + [(b, ib) for _, _, b, ib in pairs]
    assert len(set(images)) == len(images)
    assert all(cfg.identities <= k < cfg.identities + cfg.holdout_identities for k, _ in images)
    assert all((a == b) == same for (a, _, b, _), same in zip(pairs, issame))


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
