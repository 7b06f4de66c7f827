"""Backbone tests: registry errors, insightface-compatible key names and parameter counts, forward behaviour."""

import pytest
import torch
from torch import nn

import fr.models as models
from fr.models import registry

IRESNET_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(size: int = 112, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=gen) * 2 - 1


# ---------------------------------------------------------------- independent references


def iresnet_param_formula(depths, num_features=512, input_size=112) -> int:
    """Hand count: conv3x3 = 9*cin*cout, BN = 2*c (weight+bias), PReLU = c, shortcut = cin*cout + BN."""
    total = 9 * 3 * 64 + 2 * 64 + 64  # stem conv1, bn1, prelu
    cin = 64
    for width, depth in zip(WIDTHS, depths):
        for i in range(depth):
            c_in = cin if i == 0 else width
            total += 2 * c_in + 9 * c_in * width + 2 * width + width + 9 * width * width + 2 * width
            if i == 0:  # every stage's first block has stride 2, so a shortcut projection
                total += c_in * width + 2 * width
        cin = width
    side = input_size // 16
    total += 2 * 512  # bn2
    total += 512 * side * side * num_features + num_features  # fc
    total += 2 * num_features  # features BN (frozen weight counted)
    return total


def iresnet_expected_keys(depths):
    def bn(prefix):
        return [f"{prefix}.{k}" for k in BN_KEYS]

    keys = ["conv1.weight", *bn("bn1"), "prelu.weight"]
    for stage, depth in enumerate(depths, start=1):
        for b in range(depth):
            p = f"layer{stage}.{b}"
            keys += [
                *bn(f"{p}.bn1"),
                f"{p}.conv1.weight",
                *bn(f"{p}.bn2"),
                f"{p}.prelu.weight",
                f"{p}.conv2.weight",
                *bn(f"{p}.bn3"),
            ]
            if b == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    keys += [*bn("bn2"), "fc.weight", "fc.bias", *bn("features")]
    return keys


def mbf_param_formula(blocks=(1, 4, 6, 2), scale=2, num_features=512) -> int:
    def conv_bn(cin, cout, k=1, groups=1, prelu=True):
        return (cin // groups) * cout * k * k + 2 * cout + (cout if prelu else 0)

    def depthwise(cin, cout, hidden):
        return conv_bn(cin, hidden) + conv_bn(hidden, hidden, 3, hidden) + conv_bn(hidden, cout, prelu=False)

    a, b = 64 * scale, 128 * scale
    total = conv_bn(3, a, 3)
    total += conv_bn(a, a, 3, groups=64) if blocks[0] == 1 else blocks[0] * depthwise(a, a, 128)
    total += depthwise(a, a, 128) + blocks[1] * depthwise(a, a, 128)
    total += depthwise(a, b, 256) + blocks[2] * depthwise(b, b, 256)
    total += depthwise(b, b, 512) + blocks[3] * depthwise(b, b, 256)
    total += conv_bn(b, 512)  # conv_sep
    total += conv_bn(512, 512, 7, groups=512, prelu=False) + 512 * num_features + 2 * num_features  # GDC
    return total


# ---------------------------------------------------------------- registry


def test_all_backbones_registered():
    assert set(IRESNET_DEPTHS) | {"mobilefacenet"} <= set(models.list_backbones())


def test_unknown_name_suggests_close_match():
    with pytest.raises(KeyError) as err:
        models.build_backbone("iresnet5")
    msg = str(err.value)
    assert "'iresnet5'" in msg and "did you mean 'iresnet50'" in msg
    assert "mobilefacenet" in msg  # lists what is available
    assert "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_bad_kwarg_names_backbone_and_keyword():
    with pytest.raises(ValueError) as err:
        models.build_backbone("iresnet18", num_feature=128)
    msg = str(err.value)
    assert "iresnet18" in msg and "num_feature" in msg and "num_features" in msg and "input_size" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="mobilefacenet.*width"):
        models.build_backbone("mobilefacenet", width=16)


def test_register_custom_and_duplicate(monkeypatch):
    monkeypatch.setattr(registry.BACKBONES, "_entries", dict(registry.BACKBONES._entries))

    @models.register_backbone("tiny_test_net")
    def tiny(width: int = 4):
        return nn.Linear(3, width)

    assert models.build_backbone("tiny_test_net", width=5).out_features == 5
    with pytest.raises(ValueError, match="already registered"):
        models.register_backbone("tiny_test_net")(lambda: nn.Identity())


# ---------------------------------------------------------------- iresnet


@pytest.mark.parametrize("name", sorted(IRESNET_DEPTHS))
def test_iresnet_param_count_matches_formula(name):
    model = models.build_backbone(name)
    assert n_params(model) == iresnet_param_formula(IRESNET_DEPTHS[name])


@pytest.mark.parametrize("name,millions", [("iresnet50", 43.59), ("iresnet100", 65.16)])
def test_iresnet_param_count_known_figures(name, millions):
    assert abs(iresnet_param_formula(IRESNET_DEPTHS[name]) / 1e6 - millions) < 0.01
    assert abs(n_params(models.build_backbone(name)) / 1e6 - millions) < 0.01


@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
def test_iresnet_state_dict_keys_match_insightface_layout(name):
    model = models.build_backbone(name)
    assert list(model.state_dict().keys()) == iresnet_expected_keys(IRESNET_DEPTHS[name])


def test_iresnet_shapes_of_key_tensors():
    sd = models.build_backbone("iresnet18").state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 3, 3)
    assert sd["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    assert sd["layer2.0.conv1.weight"].shape == (128, 64, 3, 3)  # stride lives on conv2
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7)


def test_iresnet_forward_shape_dtype_and_eval_determinism():
    model = models.build_backbone("iresnet18", num_features=128).eval()
    x = images()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, 128) and a.dtype == torch.float32
    assert model.num_features == 128
    assert torch.equal(a, b)


def test_iresnet50_forward():
    model = models.build_backbone("iresnet50").eval()
    with torch.no_grad():
        out = model(images())
    assert out.shape == (2, 512) and torch.isfinite(out).all()


def test_iresnet_fp16_runs_trunk_low_precision_and_returns_fp32():
    model = models.build_backbone("iresnet18", fp16=True).eval()
    seen = {}

    def record(module, inputs, output):
        seen["dtype"] = output.dtype

    model.layer4[-1].register_forward_hook(record)  # stages run block by block
    with torch.no_grad():
        out = model(images())
        ref = models.build_backbone("iresnet18").eval()
        ref.load_state_dict(model.state_dict())
        ref_out = ref(images())
    assert seen["dtype"] == torch.bfloat16  # CPU autocast dtype
    assert out.dtype == torch.float32 and out.shape == (2, 512)
    cos = nn.functional.cosine_similarity(out, ref_out).min()
    assert cos > 0.9


def test_iresnet_gradient_reaches_stem_and_features_weight_frozen():
    torch.manual_seed(0)
    model = models.build_backbone("iresnet18").train()
    out = model(images())
    (out * torch.randn_like(out)).sum().backward()  # a plain sum is constant under the final BN
    assert model.features.weight.requires_grad is False
    assert torch.equal(model.features.weight, torch.ones(512))
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_iresnet_other_input_size():
    model = models.build_backbone("iresnet18", input_size=96).eval()
    assert model.fc.in_features == 512 * 6 * 6
    with torch.no_grad():
        assert model(images(96)).shape == (2, 512)
    with pytest.raises(ValueError, match="multiple of 16"):
        models.build_backbone("iresnet18", input_size=100)


def test_iresnet_dropout_and_init():
    model = models.build_backbone("iresnet18", dropout=0.4)
    assert model.dropout.p == 0.4
    w = model.layer3[1].conv2.weight
    assert abs(w.std().item() - 0.1) < 0.01 and abs(w.mean().item()) < 0.01
    assert torch.equal(model.layer1[0].bn1.weight, torch.ones(64))


# ---------------------------------------------------------------- mobilefacenet


@pytest.mark.parametrize("kwargs", [{}, {"scale": 1}, {"blocks": (2, 8, 12, 4), "scale": 4}, {"num_features": 128}])
def test_mbf_param_count_matches_formula(kwargs):
    model = models.build_backbone("mobilefacenet", **kwargs)
    args = {"blocks": (1, 4, 6, 2), "scale": 2, "num_features": 512, **kwargs}
    assert n_params(model) == mbf_param_formula(**args)


def test_mbf_state_dict_key_names_and_shapes():
    sd = models.build_backbone("mobilefacenet").state_dict()
    expected = {
        "layers.0.layers.0.weight": (128, 3, 3, 3),  # stem conv 3x3/2, 64*scale
        "layers.0.layers.2.weight": (128,),  # PReLU
        "layers.1.layers.0.weight": (128, 2, 3, 3),  # groups=64 at scale 2
        "layers.2.layers.0.layers.0.weight": (128, 128, 1, 1),  # DepthWise expand
        "layers.2.layers.1.layers.0.weight": (128, 1, 3, 3),  # DepthWise depthwise
        "layers.2.layers.2.layers.0.weight": (128, 128, 1, 1),  # DepthWise project
        "layers.3.layers.3.layers.2.layers.1.running_var": (128,),  # 4th residual unit
        "layers.4.layers.2.layers.0.weight": (256, 256, 1, 1),
        "layers.5.layers.5.layers.1.layers.0.weight": (256, 1, 3, 3),
        "layers.6.layers.1.layers.0.weight": (512, 1, 3, 3),
        "layers.7.layers.1.layers.0.layers.0.weight": (256, 256, 1, 1),
        "conv_sep.layers.0.weight": (512, 256, 1, 1),
        "features.layers.0.layers.0.weight": (512, 1, 7, 7),
        "features.layers.2.weight": (512, 512),
        "features.layers.3.running_mean": (512,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layers.8.layers.0.weight" not in sd and "layers.7.layers.2.layers.0.layers.0.weight" not in sd
    assert "features.layers.2.bias" not in sd


def test_mbf_forward_shape_dtype_determinism_and_grad():
    torch.manual_seed(0)
    model = models.build_backbone("mobilefacenet", num_features=256)
    assert model.num_features == 256
    out = model.train()(images())
    (out * torch.randn_like(out)).sum().backward()
    assert model.layers[0].layers[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        a, b = model(images()), model(images())
    assert a.shape == (2, 256) and a.dtype == torch.float32 and torch.equal(a, b)


def test_mbf_fp16_returns_fp32_and_channels_last_agrees():
    model = models.build_backbone("mobilefacenet", scale=1, fp16=True).eval()
    with torch.no_grad():
        assert model(images()).dtype == torch.float32
        model.fp16 = False
        ref = model(images())
        cl = model.to(memory_format=torch.channels_last)(images().to(memory_format=torch.channels_last))
    assert torch.allclose(ref, cl, atol=1e-4, rtol=1e-4)


def test_mbf_other_input_size_and_validation():
    model = models.build_backbone("mobilefacenet", scale=1, input_size=96).eval()
    assert model.features.layers[0].layers[0].kernel_size == (6, 6)
    with torch.no_grad():
        assert model(images(96)).shape == (2, 512)
    with pytest.raises(ValueError, match="blocks"):
        models.build_backbone("mobilefacenet", blocks=(1, 2, 3))
    with pytest.raises(ValueError, match="input_size"):
        models.build_backbone("mobilefacenet", input_size=120)


def test_iresnet_width_and_stem_stride_shrink_it_for_cpu():
    model = models.build_backbone("iresnet18", width=16, stem_stride=2, num_features=128).eval()
    # stages 16, 32, 64, 128 wide; 112 -> 56 (stem) -> 28 -> 14 -> 7 -> 4
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv1.out_channels] == [16, 128]
    assert model.fc.in_features == 128 * 4 * 4
    assert model(torch.randn(2, 3, 112, 112)).shape == (2, 128)
    with pytest.raises(ValueError, match="stem_stride"):
        models.build_backbone("iresnet18", stem_stride=3)
