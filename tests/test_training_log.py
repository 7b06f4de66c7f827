"""What a run reports: training.log beside the console (rank 0, appended on resume) with the fields arcface_torch
users grep for, the fp16 loss scale, the Weights & Biases mirror of TensorBoard's scalars (wandb injected as a
fake module: it is not a dependency), and insightface's XNorm in the verification during training."""

import json
import logging
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.bin_format import encode_png, write_bin
from fr.cli.train import main as train_main
from fr.config import ConfigError, load_config
from fr.distributed import DistEnv
from fr.models import build_backbone
from fr.train.logging import MetricLogger, grad_scale_of, require_wandb
from fr.train.run import train
from fr.train.verification_hook import VerificationHook
from tests.helpers.tiny_run import RECIPE, tiny_overrides

# step N/M (the global step), the epoch, mean loss, learning rate, samples/s over all ranks, remaining time
LINE = re.compile(
    r"\[rank0\] INFO fr\.train: step (\d+)/(\d+) epoch (\d+)  loss (\d+\.\d{4})  lr ([\d.e+-]+)  "
    r"(\d+\.\d) samples/s  eta (\d+:)?\d+:\d\d"
)


def overrides(data, out, **extra):
    values = {
        "data.synthetic": "false",
        "data.batch_size": 16,
        "model.kwargs": '{"width": 8, "stem_stride": 2}',
        "model.embedding_size": 16,
        "eval.bins": "[]",
        "eval.every": 0,
        "eval.at_start": "false",
        "output.tensorboard": "false",
        "train.log_every": 1,
    }
    values.update(extra)
    return tiny_overrides(data, out, **values)


class FakeWandb:
    """Stands in for the wandb module: records init's keywords, every log call and finish."""

    def __init__(self):
        self.inits, self.logged, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return SimpleNamespace(log=lambda values, step: self.logged.append((step, values)), finish=self._finish)

    def _finish(self):
        self.finished += 1


def test_training_log_has_the_fields_and_resume_appends(record_dir, tmp_path, monkeypatch):
    data, out = str(record_dir(8, 2)), str(tmp_path / "run")
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    wandb = {"output.wandb": "true", "output.wandb_project": "fr-test", "output.wandb_name": "tiny"}
    assert train_main([RECIPE] + overrides(data, out, **{"train.max_steps": 2}, **wandb)) == 0
    first = open(f"{out}/training.log").read()
    steps = [(int(m.group(1)), int(m.group(2))) for m in LINE.finditer(first)]
    assert steps == [(1, 2), (2, 2)], first
    assert "training iresnet18 on 16 images" in first
    # W&B: the configured run, given the resolved config; the scalars TensorBoard gets, at the same steps.
    assert fake.inits == [
        {
            "project": "fr-test",
            "entity": None,
            "name": "tiny",
            "dir": out,
            "config": json.load(open(f"{out}/config.json")),
        }
    ]
    assert [step for step, _ in fake.logged] == [1, 2] and fake.finished == 1
    assert {"train/loss", "train/lr", "train/samples_per_sec", "train/skipped_steps"} <= set(fake.logged[0][1])
    assert "train/grad_scale" not in fake.logged[0][1]  # fp32 on the CPU: no loss scale
    # The resumed run appends: the first run's lines stay, then the resume and step 3.
    monkeypatch.delitem(sys.modules, "wandb")
    assert train_main([RECIPE] + overrides(data, out, **{"train.max_steps": 3, "train.resume": "auto"})) == 0
    both = open(f"{out}/training.log").read()
    assert both.startswith(first)
    assert "resumed from" in both[len(first) :]
    assert [int(m.group(1)) for m in LINE.finditer(both)] == [1, 2, 3]


class Recorder:
    """A TensorBoard SummaryWriter's add_scalar, recorded."""

    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((step, tag, value))

    def flush(self):
        pass

    def close(self):
        pass


def test_fp16_loss_scale_in_the_line_and_wandb_mirrors_tensorboard(monkeypatch, caplog):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    strategy = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True))
    logger = MetricLogger(None, 32, 10, enabled=True, grad_scale=grad_scale_of(strategy), wandb={"project": "p"})
    logger.writer = Recorder()
    logger.update(torch.tensor(2.5))
    with caplog.at_level(logging.INFO, logger="fr.train"):
        logger.log(1, 0, 0.1, {"train/skipped_steps": 0.0})
    logger.scalars(1, {"val/lfw_accuracy": 0.9})  # what the verification hook sends
    assert re.search(r"step 1/10 epoch 0  loss 2\.5000  lr 0\.1  \d+\.\d samples/s  grad scale 1024  eta ", caplog.text)
    mirrored = [(step, tag, value) for step, values in fake.logged for tag, value in values.items()]
    assert mirrored == logger.writer.scalars
    assert ("train/grad_scale" in {tag for _, tag, _ in mirrored}) and (1, "val/lfw_accuracy", 0.9) in mirrored
    logger.close()
    assert fake.finished == 1
    # No enabled scaler (fp32, bf16) or none at all: the line leaves the scale out.
    assert grad_scale_of(SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False))) is None
    assert grad_scale_of(SimpleNamespace()) is None


def test_wandb_not_installed_is_a_one_line_error_before_anything_is_written(record_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r"^output\.wandb=true needs the wandb package, which is not installed"):
        require_wandb()
    out = tmp_path / "run"
    cfg = load_config(RECIPE, overrides(str(record_dir(2, 2)), str(out), **{"output.wandb": "true"}))
    with pytest.raises(ConfigError, match="needs the wandb package"):
        train(cfg)
    assert not out.exists()


def test_verification_logs_insightface_xnorm(tmp_path, caplog):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (20, 112, 112, 3), dtype=np.uint8)
    write_bin(str(tmp_path / "lfw.bin"), [encode_png(x) for x in images], [1, 0] * 5)
    torch.manual_seed(1)
    model = build_backbone("iresnet18", num_features=16, width=8, stem_stride=2).eval()
    hook = VerificationHook(["lfw"], str(tmp_path), DistEnv(), batch_size=8)
    hook.load()
    sent = {}
    with caplog.at_level(logging.INFO, logger="fr.train"):
        result = hook(model, 7, lambda step, values: sent.update(values))["lfw"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        views = [model(x).double().numpy(), model(x.flip(3)).double().numpy()]
    norms = [np.sqrt((row**2).sum()) for view in views for row in view]  # every row of both views, one by one
    assert result["xnorm_insightface"] == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    assert result["xnorm"] == pytest.approx(np.linalg.norm(views[0] + views[1], axis=1).mean(), rel=1e-5)
    assert sent["val/lfw_xnorm_insightface"] == result["xnorm_insightface"]
    assert re.search(r"\[lfw\]\[7\] accuracy-flip [\d.]+ \+- [\d.]+  xnorm [\d.]+  XNorm [\d.]+", caplog.text)
