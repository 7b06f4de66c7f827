"""ONNX export (fr.export.onnx, `fr-export onnx`): onnxruntime reproduces every backbone; bad exports are refused."""

import inspect
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from fr.cli.export import main as export_main
from fr.config import Config, save_config
from fr.export.onnx import OnnxExportError, OnnxParityError, export_onnx
from fr.models.registry import BACKBONES

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def small_kwargs(name):
    """Constructor keywords that shrink a backbone for a fast export, by the keywords its factory takes."""
    params = inspect.signature(BACKBONES.get(name)).parameters
    kwargs = {}
    if "width" in params:  # iResNet: narrow stages, halved stem; the deepest ones also on small images
        kwargs.update(width=8, stem_stride=2)
        if name in ("iresnet100", "iresnet200"):
            kwargs.update(input_size=32)
    if "depth" in params:  # ViT
        kwargs.update(depth=2, embed_dim=64, num_heads=4)
    if "depths" in params:  # EdgeFace (keeps each variant's low-rank ratio)
        kwargs.update(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), heads=(2, 2, 2, 2))
    if name.startswith("mobilefacenet") and "input_size" in params:
        kwargs.update(input_size=32)
    return kwargs


# Two at their real size (iresnet18's stages at full width; a halved stem keeps it fast).
REAL = {"mobilefacenet": {}, "iresnet18": {"stem_stride": 2}}
# Every registered backbone (aliases build the same modules), the others in a small size.
CASES = [
    pytest.param(name, REAL.get(name, small_kwargs(name)), id=name + ("-real" if name in REAL else ""))
    for name in BACKBONES.choices()
    if name in BACKBONES.names()
]


def l2(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def onnxruntime_embed(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(autouse=True)
def one_thread():
    # The exporter's trace and check run many small convolutions: threads only contend on a shared 2-core CI.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_onnxruntime_reproduces_the_backbone(name, kwargs, tmp_path):
    torch.manual_seed(0)
    model = BACKBONES.build(name, **kwargs).eval()
    size = kwargs.get("input_size", 112)
    path = tmp_path / "model.onnx"
    report = export_onnx(model, str(path))
    assert report["opset"] == 17 and report["max_abs_diff"] <= 1e-4
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]  # no temporary left behind

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, size, size] and inp.type == "tensor(float)"
    assert (inp.name, out.name) == ("images", "embeddings")
    # Batch sizes other than the traced and the checked ones, on images the export never saw.
    for batch in (1, 5):
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(l2(got) - l2(expected)).max() <= 1e-4
        # The output is the raw embedding, not a normalised one.
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1), rtol=1e-3)


def test_mixed_precision_body_is_exported_in_float32(tmp_path):
    torch.manual_seed(0)
    model = BACKBONES.build("iresnet18", width=8, stem_stride=2, fp16="bf16").eval()
    export_onnx(model, str(tmp_path / "m.onnx"))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    float32 = onnx.TensorProto.FLOAT
    assert all(t.data_type == float32 for t in proto.graph.initializer)
    casts = [a.i for n in proto.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert all(to == float32 for to in casts)
    assert {p.key: p.value for p in proto.metadata_props}["fr.input"].startswith("images: RGB, NCHW")
    model.fp16 = False  # the reference: the same weights, all in float32
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(l2(onnxruntime_embed(tmp_path / "m.onnx", x)) - l2(expected)).max() <= 1e-4


class DiffersWhenExported(nn.Module):
    """A backbone whose exported graph computes something else than its eager forward (an exporter bug)."""

    def __init__(self, num_features: int = 8):
        super().__init__()
        self.fc = nn.Linear(3 * 112 * 112, num_features)

    def forward(self, x):
        y = self.fc(torch.flatten(x, 1))
        return y.flip(1) if torch.onnx.is_in_onnx_export() else y


def test_parity_failure_removes_the_file_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(OnnxParityError, match="differs from PyTorch") as caught:
        export_onnx(DiffersWhenExported(), str(out))
    assert caught.value.report["max_abs_diff"] > 1e-4
    assert out.read_bytes() == b"previous export" and sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_a_backbone_with_non_finite_embeddings_is_refused(tmp_path):
    model = DiffersWhenExported()
    with torch.no_grad():
        model.fc.bias.fill_(float("nan"))
    with pytest.raises(OnnxParityError, match="NaN/inf"):
        export_onnx(model, str(tmp_path / "m.onnx"))
    assert os.listdir(tmp_path) == []


def test_opset_below_17_is_refused(tmp_path):
    with pytest.raises(OnnxExportError, match="--opset 16"):
        export_onnx(DiffersWhenExported(), str(tmp_path / "m.onnx"), opset=16)
    assert os.listdir(tmp_path) == []


def write_run(run_dir, backbone, kwargs, embedding_size=32):
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.backbone, cfg.model.embedding_size, cfg.model.kwargs = backbone, embedding_size, kwargs
    model = BACKBONES.build(backbone, num_features=embedding_size, **kwargs).eval()
    save_config(cfg, str(run_dir / "config.json"))
    torch.save(model.state_dict(), run_dir / "model.pt")
    return model


def test_cli_exports_a_run_directory(tmp_path, capsys):
    model = write_run(tmp_path, "iresnet18", {"width": 8, "stem_stride": 2})
    out, report = tmp_path / "out" / "model.onnx", tmp_path / "report.json"
    assert export_main(["onnx", "--checkpoint", str(tmp_path), "--out", str(out), "--json", str(report)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    got = json.loads(report.read_text())
    assert got["backbone"] == "iresnet18" and got["opset"] == 17 and got["max_abs_diff"] <= 1e-4
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(onnxruntime_embed(out, x), expected, rtol=1e-4, atol=1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["fr.backbone"] == "iresnet18"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--opset", "13"], "--opset 13: expected 17.."),
        (["--backbone", "iresnet34"], "names backbone 'iresnet18', not --backbone 'iresnet34'"),
    ],
)
def test_cli_refuses_before_writing(tmp_path, capsys, args, message):
    write_run(tmp_path, "iresnet18", {"width": 8, "stem_stride": 2})
    out = tmp_path / "model.onnx"
    assert export_main(["onnx", "--checkpoint", str(tmp_path), "--out", str(out)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_cli_refuses_weights_that_do_not_fit(tmp_path, capsys):
    write_run(tmp_path, "iresnet18", {"width": 8, "stem_stride": 2})
    os.remove(tmp_path / "config.json")  # a bare model.pt: the architecture comes from --backbone alone
    out = tmp_path / "model.onnx"
    argv = ["onnx", "--checkpoint", str(tmp_path / "model.pt"), "--backbone", "mobilefacenet", "--out", str(out)]
    assert export_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match backbone 'mobilefacenet'" in err and "\n" not in err
    assert not out.exists()


def test_cli_parity_failure_is_a_nonzero_exit_and_no_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(BACKBONES._entries, "differs_when_exported", DiffersWhenExported)
    write_run(tmp_path, "differs_when_exported", {})
    out = tmp_path / "model.onnx"
    assert export_main(["onnx", "--checkpoint", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs from PyTorch" in err and "\n" not in err
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.pt"]
