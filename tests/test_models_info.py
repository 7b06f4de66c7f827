"""fr-info's parameter and GMAC counts against the published figures, the new recipes, and a tiny ViT trained
end to end on the synthetic set (AdamW, warmup, linear decay)."""

import json
import os

import pytest
import torch

from fr.cli.info import main as info_main
from fr.cli.info import model_info
from fr.cli.train import main as train_main
from fr.config import load_config
from fr.models import build_backbone
from fr.models.complexity import count_macs
from tests.helpers import ROOT

# (backbone, published GMACs, published millions of parameters, where from). Insightface's and EdgeFace's
# "FLOPs" count one per multiply-add of convolutions/linear layers/matmuls (really MACs) for iResNet, MBF and
# ViT; EdgeFace's README counts 2 per multiply-add (its 154 "MFLOPs" are 77 M MACs). Tolerance: 2%.
PUBLISHED = [
    ("iresnet18", 2.61, None, "arcface_torch README"),
    ("iresnet50", 6.31, 43.6, "arcface_torch README"),
    ("iresnet100", 12.09, None, "arcface_torch README"),
    ("mobilefacenet", 0.44, 2.06, "arcface_torch get_mbf(fp16, 512)"),
    ("vit_t", 1.51, None, "arcface_torch README (WF42M ViT-T)"),
    ("edgeface_xs_gamma_06", 0.154 / 2, 1.77, "EdgeFace README: 154 MFLOPs"),
    ("edgeface_s_gamma_05", 0.30612 / 2, 3.65, "EdgeFace README: 306.12 MFLOPs"),
    ("edgeface_base", 1.39883 / 2, 18.23, "EdgeFace README: 1398.83 MFLOPs"),
]


@pytest.mark.parametrize("name,gmacs,mparams,source", PUBLISHED, ids=[row[0] for row in PUBLISHED])
def test_counts_match_the_published_figures(name, gmacs, mparams, source):
    info = model_info(name, [])
    assert info["gmacs"] == pytest.approx(gmacs, rel=0.02), source
    if mparams is not None:
        assert info["mparams"] == pytest.approx(mparams, rel=0.02), source


def test_counter_counts_what_it_should():
    """One conv and one linear, counted by hand: the counter's MACs, not FLOPs, and nothing for BN/ReLU."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),  # 8x8 output, 4 x 3*3*3 MACs per pixel
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 5),
    )
    assert count_macs(model, 8) == 8 * 8 * 4 * 27 + 256 * 5


def test_cli_prints_counts_at_the_configured_size(capsys):
    assert info_main(["model", "r50", "data.image_size=96", "model.embedding_size=256", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["registered_as"] == "iresnet50" and info["input_size"] == 96 and info["embedding_size"] == 256
    # only the last Linear (512*6*6 -> 256) depends on the embedding size; the trunk scales with the area
    assert info["parameters"] == 43590848 - (512 * 49 * 512 + 3 * 512) + (512 * 36 * 256 + 3 * 256)
    assert info["gmacs"] == pytest.approx(6.31 * (96 / 112) ** 2, rel=0.02)
    assert info_main(["model", "mbf", 'model.kwargs={"scale": 1}']) == 0
    text = capsys.readouterr().out
    assert "alias of mobilefacenet" in text and "GMACs" in text and "parameters" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["model", "resnet50"], "model.backbone='resnet50'"),
        (["model", "mbf", 'model.kwargs={"width": 2}'], "no parameter 'width'"),
        (["model", "r50", "data.image_size=100"], "multiple of 16"),
        (["model", "r50", "model.embeding_size=3"], "embeding_size"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert info_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fr-info: error:") and message in err and "\n" not in err


@pytest.mark.parametrize(
    "recipe,backbone,optimizer,sample_rate",
    [
        ("wf42m_pfc03_vit_t.py", "vit_t_dp005_mask0", "adamw", 0.3),
        ("wf42m_pfc02_vit_b.py", "vit_b_dp005_mask_005", "adamw", 0.2),
        ("ms1mv3_edgeface_xs.py", "edgeface_xs_gamma_06", "adamw", 1.0),
    ],
)
def test_recipes_load_and_validate(recipe, backbone, optimizer, sample_rate):
    cfg = load_config(os.path.join(ROOT, "configs", recipe))
    assert (cfg.model.backbone, cfg.optim.name, cfg.partial_fc.sample_rate) == (backbone, optimizer, sample_rate)
    assert cfg.loss.name == "cosface" and cfg.loss.params["m"] == 0.4
    assert cfg.optim.schedule == "poly" and cfg.optim.power == 1.0  # arcface_torch's linear decay
    if "vit" in recipe:
        assert cfg.optim.lr == 0.001 and cfg.optim.weight_decay == 0.1 and cfg.optim.warmup_epochs == 4
        assert cfg.train.epochs == 40


def test_tiny_vit_trains_end_to_end(tiny_run, tmp_path, capsys):
    out_dir = str(tmp_path / "vit")
    overrides = {
        "model.backbone": "vit_t",
        "model.kwargs": '{"embed_dim": 32, "depth": 2, "num_heads": 4}',
        "model.embedding_size": 32,
        "model.grad_checkpoint": "true",
        "optim.name": "adamw",
        "optim.lr": 0.003,
        "optim.weight_decay": 0.05,
        "optim.warmup_epochs": 0.25,
        "train.max_steps": 8,
        "eval.every": 8,
        "eval.at_start": "false",
    }
    assert train_main(tiny_run.argv(out_dir, **overrides)) == 0
    capsys.readouterr()
    results = json.load(open(os.path.join(out_dir, "results.json")))
    losses = [loss for _, loss in results["history"]["loss"]]
    assert results["steps"] == 8 and losses[-1] < losses[0]
    state = torch.load(os.path.join(out_dir, "model.pt"), map_location="cpu", weights_only=True)
    model = build_backbone("vit_t", embed_dim=32, depth=2, num_heads=4, num_features=32)
    model.load_state_dict(state, strict=True)
    assert "synthetic_val" in results["verification"]
