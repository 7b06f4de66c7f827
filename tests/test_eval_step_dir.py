"""fr-eval verify on resumable checkpoints (a step directory, a run's checkpoints/, a run directory without model.pt),
insightface's XNorm next to fr's xnorm against an independent computation, and --data-dir's missing sets."""

import json
import os

import numpy as np
import pytest
import torch

from evaluation.bin_format import encode_png, write_bin
from evaluation.verification import evaluate
from fr.cli.eval import main as eval_main
from fr.config import Config, save_config
from fr.distributed import DistEnv
from fr.models import build_backbone
from fr.train.checkpoint import CheckpointManager, run_settings
from tests.helpers.checkpoint import Saved

KWARGS = {"width": 8, "stem_stride": 2}
EMBEDDING = 16
STEP = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory holding config.json and one resumable checkpoint (step 3) of a tiny backbone, no model.pt;
    plus a 10-pair .bin (the fewest the 10-fold protocol takes)."""
    root = tmp_path_factory.mktemp("step_dir_run")
    cfg = Config()
    cfg.model.backbone, cfg.model.embedding_size, cfg.model.kwargs = "iresnet18", EMBEDDING, dict(KWARGS)
    save_config(cfg, str(root / "config.json"))
    torch.manual_seed(5)
    model = build_backbone("iresnet18", num_features=EMBEDDING, **KWARGS).eval()
    manager = CheckpointManager(str(root), DistEnv())
    manager.prepare(run_settings(cfg, num_classes=4))
    head = {"module": {"weight": torch.zeros(4, EMBEDDING)}, "optimizer": {"state": {}, "param_groups": []}}
    manager.track(
        strategy=Saved({"model": model.state_dict()}), head=Saved(head), trainer=Saved({"step": STEP, "epoch": 1})
    )
    step_dir = manager.save(STEP)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    issame = [bool(i % 3 == 0) for i in range(10)]
    write_bin(str(root / "lfw.bin"), [encode_png(x) for x in images], issame)
    return root, step_dir, independent_metrics(model, images, issame)


def insightface_style_xnorm(views):
    """Mean L2 norm of every row of every view, summed one by one in float64."""
    total, count = 0.0, 0
    for view in views:
        for row in np.asarray(view, dtype=np.float64):
            total += float(np.sqrt(np.sum(row * row)))
            count += 1
    return total / count


def independent_metrics(model, images, issame):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    with torch.no_grad():
        plain, flipped = model(x).numpy(), model(x.flip(3)).numpy()
    summed = plain + flipped
    return {
        "accuracy": evaluate(summed, issame).accuracy,
        "xnorm": float(np.mean(np.linalg.norm(summed.astype(np.float64), axis=1))),
        "xnorm_insightface": insightface_style_xnorm([plain, flipped]),
    }


@pytest.mark.parametrize("which", ["step_dir", "checkpoints_dir", "run_dir"])
def test_verify_reads_a_resumable_checkpoint(run, which, capsys):
    root, step_dir, expected = run
    checkpoint = {"step_dir": step_dir, "checkpoints_dir": str(root / "checkpoints"), "run_dir": str(root)}[which]
    out = root / f"{which}.json"
    assert eval_main(["verify", "--checkpoint", checkpoint, "--bin", str(root / "lfw.bin"), "--json", str(out)]) == 0
    got = json.load(open(out))["results"]["lfw"]
    assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert got["xnorm"] == pytest.approx(expected["xnorm"], rel=1e-5)
    assert got["xnorm_insightface"] == pytest.approx(expected["xnorm_insightface"], rel=1e-5)
    # With a flip-sum the two differ: insightface's averages the views' norms, fr's the sums'.
    assert abs(got["xnorm"] - got["xnorm_insightface"]) > 0.1 * got["xnorm_insightface"]
    assert "XNorm" in capsys.readouterr().out


def test_data_dir_skips_absent_default_sets_but_not_requested_ones(run, capsys):
    root, step_dir, _ = run
    out = root / "data_dir.json"
    assert eval_main(["verify", "--checkpoint", step_dir, "--data-dir", str(root), "--json", str(out)]) == 0
    assert list(json.load(open(out))["results"]) == ["lfw"]
    err = capsys.readouterr().err
    for name in ("cfp_fp", "agedb_30", "calfw", "cplfw"):
        assert f"fr-eval: warning: {os.path.join(str(root), name + '.bin')} not found, skipped" in err
    # Named with --targets, an absent set is an error naming its file.
    assert eval_main(["verify", "--checkpoint", step_dir, "--data-dir", str(root), "--targets", "lfw,cfp_fp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fr-eval: error: {os.path.join(str(root), 'cfp_fp.bin')}: no such verification set")
    # A --bin file that is absent, and a data directory without any default set, are errors too.
    assert eval_main(["verify", "--checkpoint", step_dir, "--bin", str(root / "nope.bin")]) == 2
    assert "nope.bin: no such verification set (--bin)" in capsys.readouterr().err
    empty = root / "empty"
    empty.mkdir()
    assert eval_main(["verify", "--checkpoint", step_dir, "--data-dir", str(empty)]) == 2
    assert f"fr-eval: error: {empty}: none of the verification sets lfw.bin" in capsys.readouterr().err
