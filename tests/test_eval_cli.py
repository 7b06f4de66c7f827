"""fr-eval verify on checkpoints: the result equals an independent evaluation, and bad inputs are one-line errors."""

import json
import os

import numpy as np
import pytest
import torch

from evaluation.bin_format import encode_png, write_bin
from evaluation.verification import evaluate
from fr.cli.eval import main as eval_main


@pytest.fixture()
def run_dir(tmp_path, tiny_checkpoint):
    model = tiny_checkpoint(tmp_path, 32, data_root=tmp_path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
    issame = [bool(i % 2) for i in range(20)]
    write_bin(str(tmp_path / "pairs.bin"), [encode_png(x) for x in images], issame)
    return tmp_path, model, images, issame


def test_verify_matches_independent_flip_sum_evaluation(run_dir, capsys):
    path, model, images, issame = run_dir
    out = path / "result.json"
    assert eval_main(["verify", "--checkpoint", str(path), "--bin", str(path / "pairs.bin"), "--json", str(out)]) == 0
    got = json.load(open(out))["results"]["pairs"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    with torch.no_grad():
        embeddings = (model(x) + model(x.flip(3))).numpy()
    expected = evaluate(embeddings, issame, nrof_folds=10)
    assert got["accuracy"] == pytest.approx(expected.accuracy, abs=1e-9)
    assert got["xnorm"] == pytest.approx(expected.xnorm, rel=1e-4)
    assert "pairs" in capsys.readouterr().out


def test_bare_model_pt_needs_backbone_and_must_match(run_dir, tmp_path_factory, capsys):
    path, *_ = run_dir
    bare = tmp_path_factory.mktemp("bare")
    os.replace(path / "model.pt", bare / "model.pt")
    args = ["verify", "--checkpoint", str(bare / "model.pt"), "--bin", str(path / "pairs.bin")]
    assert eval_main(args) == 2
    assert "pass the backbone name" in capsys.readouterr().err
    assert eval_main(args + ["--backbone", "mobilefacenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match backbone 'mobilefacenet'" in err and "\n" not in err
    (bare / "model.pt").write_bytes((bare / "model.pt").read_bytes()[:1000])
    assert eval_main(args + ["--backbone", "iresnet18"]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_odd_bin_is_a_clear_error(run_dir, capsys):
    path, *_ = run_dir
    import pickle

    with open(path / "odd.bin", "wb") as fh:
        pickle.dump(([b"x"] * 3, [True]), fh)
    assert eval_main(["verify", "--checkpoint", str(path), "--bin", str(path / "odd.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert "odd.bin" in err and "\n" not in err


def test_verify_data_dir_targets(run_dir, capsys):
    path, *_ = run_dir
    os.replace(path / "pairs.bin", path / "lfw.bin")
    out = path / "t.json"
    assert (
        eval_main(
            ["verify", "--checkpoint", str(path), "--data-dir", str(path), "--targets", "lfw", "--json", str(out)]
        )
        == 0
    )
    assert list(json.load(open(out))["results"]) == ["lfw"]
    # default targets that are absent are skipped with a warning naming the file; named ones must exist
    assert eval_main(["verify", "--checkpoint", str(path), "--data-dir", str(path), "--json", str(out)]) == 0
    assert "cfp_fp.bin" in capsys.readouterr().err
    assert list(json.load(open(out))["results"]) == ["lfw"]
    assert eval_main(["verify", "--checkpoint", str(path), "--data-dir", str(path), "--targets", "cfp_fp"]) == 2
    assert "cfp_fp.bin" in capsys.readouterr().err
    assert eval_main(["verify", "--checkpoint", str(path)]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_onnx_model_gives_the_pytorch_accuracy(run_dir, export_onnx):
    pytest.importorskip("onnxruntime")

    path, model, *_ = run_dir
    onnx_path = path / "model.onnx"
    export_onnx(model, onnx_path)
    results = {}
    for name, ckpt in (("torch", str(path)), ("onnx", str(onnx_path))):
        out = path / f"{name}.json"
        assert eval_main(["verify", "--checkpoint", ckpt, "--bin", str(path / "pairs.bin"), "--json", str(out)]) == 0
        results[name] = json.load(open(out))["results"]["pairs"]
    assert results["onnx"]["accuracy"] == results["torch"]["accuracy"]
    assert results["onnx"]["xnorm"] == pytest.approx(results["torch"]["xnorm"], rel=1e-4)


def test_bad_onnx_file_is_a_clear_error(run_dir, capsys):
    pytest.importorskip("onnxruntime")
    path, *_ = run_dir
    (path / "bad.onnx").write_bytes(b"not a model")
    assert eval_main(["verify", "--checkpoint", str(path / "bad.onnx"), "--bin", str(path / "pairs.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.onnx" in err and "\n" not in err
