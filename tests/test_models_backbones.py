"""Every registered backbone: shapes, determinism, gradients, options (dropout, gradient checkpointing,
channels_last, fp16/bf16, input size), arcface_torch aliases, and state dicts written from the published layouts
(arcface_torch's iResNet/MobileFaceNet/ViT, EdgeFace's timm EdgeNeXt) loading into fr's models."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fr.models as models
from fr.config import Config, ConfigError, apply_overrides
from fr.models.from_config import backbone_from_config, backbone_kwargs
from fr.models.registry import BACKBONES

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Small settings per family, so that every registered backbone runs in well under a second.
TINY = {
    "iresnet": ({"width": 2, "stem_stride": 2, "input_size": 16}, 16),
    "mobilefacenet_large": ({"input_size": 16}, 16),
    "mobilefacenet": ({"scale": 1, "input_size": 16}, 16),
    "vit": ({"embed_dim": 16, "depth": 2, "num_heads": 2, "input_size": 36}, 36),
    "edgeface": ({"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "heads": (2, 2, 2, 2), "input_size": 32}, 32),
}


def family_of(name):
    return next(f for f in TINY if name.startswith(f))  # the longest prefix first, as TINY lists them


def tiny(name, **extra):
    family = family_of(name)
    kwargs, size = TINY[family]
    torch.manual_seed(0)
    return models.build_backbone(name, num_features=8, **{**kwargs, **extra}), size


def images(size, batch=4, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- every backbone


def test_registry_lists_the_new_backbones():
    expected = {
        "vit_t",
        "vit_s",
        "vit_b",
        "vit_l",
        "edgeface_xs_gamma_06",
        "edgeface_s_gamma_05",
        "edgeface_base",
        "mobilefacenet",
        "mobilefacenet_large",
    }
    assert expected <= set(models.list_backbones())


# Deep variants of one class (iresnet34..200, mobilefacenet_large) share its code: their full-size shapes are
# checked on the meta device below; the compute tests run one per class plus every (cheap) ViT/EdgeFace size.
COMPUTED = [n for n in models.list_backbones() if not n.startswith(("iresnet", "mobilefacenet"))]
COMPUTED += ["iresnet18", "mobilefacenet"]


@pytest.mark.parametrize("name", models.list_backbones())
def test_full_size_output_shape_of_every_backbone(name):
    with torch.device("meta"):
        model = models.build_backbone(name, num_features=128).eval()
        assert model(torch.empty(2, 3, 112, 112)).shape == (2, 128)


@pytest.mark.parametrize("name", COMPUTED)
def test_shape_determinism_and_gradients(name):
    model, size = tiny(name)
    x = images(size)
    model.train()
    out = model(x)
    assert out.shape == (4, 8) and out.dtype == torch.float32
    (out * torch.randn_like(out)).sum().backward()  # a plain sum is constant under a final BatchNorm
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # masked ViT tokens skip the blocks, but every parameter still gets a gradient from the kept ones
    assert no_grad == [], no_grad
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[:1], rtol=1e-4, atol=1e-5)  # eval: samples do not interact


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "vit_t", "edgeface_xs_gamma_06"])
def test_grad_checkpoint_gives_the_same_gradients(name):
    kwargs = {"mask_ratio": 0.0, "drop_path": 0.0} if name.startswith("vit") else {}
    plain, size = tiny(name, **kwargs)
    recomputed, _ = tiny(name, grad_checkpoint=True, **kwargs)
    recomputed.load_state_dict(plain.state_dict())
    x = images(size)
    weights = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    for model in (plain, recomputed):
        (model.train()(x) * weights).sum().backward()
    for (key, p), q in zip(plain.named_parameters(), recomputed.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "vit_t", "edgeface_xs_gamma_06"])
def test_channels_last_agrees(name):
    model, size = tiny(name)
    model.eval()
    x = images(size)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "vit_t", "edgeface_xs_gamma_06"])
@pytest.mark.parametrize("precision", [True, "bf16"])
def test_low_precision_body_returns_float32_close_to_float32(name, precision):
    model, size = tiny(name)
    model.eval()
    x = images(size)
    with torch.no_grad():
        ref = model(x)
        model.fp16 = precision
        out = model(x)
    assert out.dtype == torch.float32
    assert F.cosine_similarity(out, ref).min() > 0.95
    assert not torch.equal(out, ref)  # bf16 really ran
    model.fp16 = "fp8"
    with pytest.raises(ValueError, match="fp16 must be"):
        model(x)


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "vit_t", "edgeface_xs_gamma_06"])
def test_dropout_acts_in_training_only(name):
    kwargs = {"mask_ratio": 0.0, "drop_path": 0.0} if name.startswith("vit") else {}
    model, size = tiny(name, dropout=0.5, **kwargs)
    x = images(size)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "name,size,check",
    [
        ("iresnet18", 96, lambda m: m.fc.in_features == 16 * 3 * 3),  # width 2: 16 channels, 96/2/16 = 3
        ("mobilefacenet", 96, lambda m: m.features.layers[0].layers[0].kernel_size == (6, 6)),
        ("vit_t", 45, lambda m: m.num_patches == 25 and m.feature[0].in_features == 16 * 25),
        ("edgeface_xs_gamma_06", 64, lambda m: m.input_size == 64),
    ],
)
def test_data_image_size_reaches_the_backbone(name, size, check):
    kwargs = dict(TINY[family_of(name)][0])
    kwargs.pop("input_size")
    cfg = apply_overrides(
        Config(),
        [f"model.backbone={name}", f"data.image_size={size}", "model.embedding_size=8"],
    )
    cfg.model.kwargs = kwargs
    model = backbone_from_config(cfg).eval()
    assert check(model)
    with torch.no_grad():
        assert model(images(size, batch=2)).shape == (2, 8)
    cfg.model.kwargs = {**kwargs, "input_size": 112}
    with pytest.raises(ConfigError, match="data.image_size"):
        backbone_from_config(cfg)


def test_config_keys_reach_the_backbone(monkeypatch):
    cfg = apply_overrides(Config(), ["model.backbone=r18", "model.grad_checkpoint=true", "model.dropout=0.25"])
    cfg.model.kwargs = {"width": 4, "stem_stride": 2}
    model = backbone_from_config(cfg)
    assert model.grad_checkpoint is True and model.dropout.p == 0.25 and model.input_size == 112
    # a user's backbone without input_size/grad_checkpoint still builds at 112; other settings name the keyword
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))
    BACKBONES.register("fixed_size_net")(lambda num_features=512: nn.Linear(3, num_features))
    cfg = apply_overrides(Config(), ["model.backbone=fixed_size_net", "model.embedding_size=4"])
    assert backbone_kwargs(cfg) == {"num_features": 4} and backbone_from_config(cfg).out_features == 4
    for override, keyword in [("data.image_size=96", "input_size"), ("model.grad_checkpoint=true", "grad_checkpoint")]:
        with pytest.raises(ValueError, match=f"has no parameter '{keyword}'"):
            backbone_from_config(apply_overrides(cfg, [override]))


# ---------------------------------------------------------------- aliases


ALIASES = {
    "r18": "iresnet18",
    "r34": "iresnet34",
    "r50": "iresnet50",
    "r100": "iresnet100",
    "r200": "iresnet200",
    "mbf": "mobilefacenet",
    "mbf_large": "mobilefacenet_large",
    "vit_t_dp005_mask0": "vit_t",
    "vit_s_dp005_mask_0": "vit_s",
    "vit_b_dp005_mask_005": "vit_b",
    "vit_l_dp005_mask_005": "vit_l",
}


def test_arcface_torch_names_are_aliases_and_valid_config_values():
    assert BACKBONES.aliases() == dict(sorted(ALIASES.items()))
    for alias in ALIASES:
        Config().model.__class__(backbone=alias).validate()  # accepted as model.backbone
        assert alias not in models.list_backbones()  # listed once, under its real name
    with torch.device("meta"):
        assert type(models.build_backbone("r34")).__name__ == "IResNet"
        assert len(models.build_backbone("r34").layer2) == 4
        vit = models.build_backbone("vit_t_dp005_mask0")
        assert vit.mask_ratio == 0.0 and vit.blocks[-1].drop_path.p == pytest.approx(0.05)
        assert models.build_backbone("vit_t").mask_ratio == 0.1
        assert models.build_backbone("vit_b_dp005_mask_005").mask_ratio == 0.05
        # an alias's defaults can still be overridden, like any keyword
        assert models.build_backbone("vit_t_dp005_mask0", mask_ratio=0.2).mask_ratio == 0.2
    with pytest.raises(ValueError, match="already registered"):
        BACKBONES.alias("r50", "iresnet18")
    with pytest.raises(ValueError, match="no parameter 'width'"):
        BACKBONES.alias("mbf_wide", "mobilefacenet", width=3)
    with pytest.raises(KeyError, match="did you mean 'r50'"):
        models.build_backbone("r5O")


def test_mobilefacenet_large_is_get_mbf_large():
    with torch.device("meta"):
        model = models.build_backbone("mbf_large")
    assert [len(model.layers[i].layers) for i in (1, 3, 5, 7)] == [2, 8, 12, 4]
    assert model.layers[0].layers[0].out_channels == 256 and model.conv_sep.layers[0].in_channels == 512


# ---------------------------------------------------------------- published layouts


def random_state(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state


def bn_shapes(prefix, c):
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (c,)) for k in BN}


def iresnet_layout(depths=(2, 2, 2, 2), width=64, emb=512, size=112):
    """arcface_torch's iresnet.py names: conv1/bn1/prelu, layerN.i.{bn1,conv1,bn2,prelu,conv2,bn3,downsample},
    bn2, fc, features."""
    widths = [width * f for f in (1, 2, 4, 8)]
    shapes = {"conv1.weight": (width, 3, 3, 3), **bn_shapes("bn1", width), "prelu.weight": (width,)}
    cin = width
    for stage, (w, depth) in enumerate(zip(widths, depths), start=1):
        for i in range(depth):
            p, c = f"layer{stage}.{i}", cin if i == 0 else w
            shapes.update(bn_shapes(f"{p}.bn1", c))
            shapes[f"{p}.conv1.weight"] = (w, c, 3, 3)
            shapes.update(bn_shapes(f"{p}.bn2", w))
            shapes[f"{p}.prelu.weight"] = (w,)
            shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
            shapes.update(bn_shapes(f"{p}.bn3", w))
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (w, c, 1, 1)
                shapes.update(bn_shapes(f"{p}.downsample.1", w))
        cin = w
    side = size // 16
    shapes.update(bn_shapes("bn2", widths[3]))
    shapes.update({"fc.weight": (emb, widths[3] * side * side), "fc.bias": (emb,), **bn_shapes("features", emb)})
    return shapes


def mbf_layout(emb=512):
    """arcface_torch's get_mbf(fp16, 512): layers.0..7 (ConvBlock/DepthWise/Residual), conv_sep, features (GDC)."""

    def conv(prefix, cin, cout, k, groups=1, prelu=True):
        out = {f"{prefix}.layers.0.weight": (cout, cin // groups, k, k), **bn_shapes(f"{prefix}.layers.1", cout)}
        if prelu:
            out[f"{prefix}.layers.2.weight"] = (cout,)
        return out

    def depthwise(prefix, cin, cout, hidden):
        return {
            **conv(f"{prefix}.layers.0", cin, hidden, 1),
            **conv(f"{prefix}.layers.1", hidden, hidden, 3, groups=hidden),
            **conv(f"{prefix}.layers.2", hidden, cout, 1, prelu=False),
        }

    shapes = {**conv("layers.0", 3, 128, 3), **conv("layers.1", 128, 128, 3, groups=64)}
    shapes.update(depthwise("layers.2", 128, 128, 128))
    for i in range(4):
        shapes.update(depthwise(f"layers.3.layers.{i}", 128, 128, 128))
    shapes.update(depthwise("layers.4", 128, 256, 256))
    for i in range(6):
        shapes.update(depthwise(f"layers.5.layers.{i}", 256, 256, 256))
    shapes.update(depthwise("layers.6", 256, 256, 512))
    for i in range(2):
        shapes.update(depthwise(f"layers.7.layers.{i}", 256, 256, 256))
    shapes.update(conv("conv_sep", 256, 512, 1))
    shapes.update(conv("features.layers.0", 512, 512, 7, groups=512, prelu=False))
    shapes["features.layers.2.weight"] = (emb, 512)
    shapes.update(bn_shapes("features.layers.3", emb))
    return shapes


def vit_layout(dim=256, depth=12, emb=512, patch=9, size=112):
    """arcface_torch's vit.py names: patch_embed.proj, pos_embed, blocks.i.{norm1, attn.qkv (no bias), attn.proj,
    norm2, mlp.fc1, mlp.fc2}, norm, feature.0-3 (Linear, BN, Linear, BN), mask_token."""
    tokens = (size // patch) ** 2
    shapes = {
        "pos_embed": (1, tokens, dim),
        "mask_token": (1, 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        shapes.update(
            {
                f"{p}.norm1.weight": (dim,),
                f"{p}.norm1.bias": (dim,),
                f"{p}.attn.qkv.weight": (3 * dim, dim),
                f"{p}.attn.proj.weight": (dim, dim),
                f"{p}.attn.proj.bias": (dim,),
                f"{p}.norm2.weight": (dim,),
                f"{p}.norm2.bias": (dim,),
                f"{p}.mlp.fc1.weight": (4 * dim, dim),
                f"{p}.mlp.fc1.bias": (4 * dim,),
                f"{p}.mlp.fc2.weight": (dim, 4 * dim),
                f"{p}.mlp.fc2.bias": (dim,),
            }
        )
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "feature.0.weight": (dim, dim * tokens)})
    shapes.update({**bn_shapes("feature.1", dim), "feature.2.weight": (emb, dim), **bn_shapes("feature.3", emb)})
    return shapes


def vit_reference(state, x, depth, heads):
    """arcface_torch's ViT forward in eval mode, from its published description, on a state dict."""
    dim = state["patch_embed.proj.bias"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    t = t.flatten(2).transpose(1, 2) + state["pos_embed"]
    batch, n, _ = t.shape
    for i in range(depth):
        s = {k[len(f"blocks.{i}.") :]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(t, (dim,), s["norm1.weight"], s["norm1.bias"])
        q, k, v = F.linear(h, s["attn.qkv.weight"]).reshape(batch, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        h = (attn @ v).transpose(1, 2).reshape(batch, n, dim)
        t = t + F.linear(h, s["attn.proj.weight"], s["attn.proj.bias"])
        h = F.layer_norm(t, (dim,), s["norm2.weight"], s["norm2.bias"])
        h = F.linear(F.relu6(F.linear(h, s["mlp.fc1.weight"], s["mlp.fc1.bias"])), s["mlp.fc2.weight"])
        t = t + h + s["mlp.fc2.bias"]
    t = F.layer_norm(t, (dim,), state["norm.weight"], state["norm.bias"]).reshape(batch, -1)

    def bn(z, p):
        return F.batch_norm(z, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], eps=2e-5)  # fmt: skip

    return bn(F.linear(bn(F.linear(t, state["feature.0.weight"]), "feature.1"), state["feature.2.weight"]), "feature.3")


def check_loads(model, shapes):
    own = model.state_dict()
    assert sorted(own) == sorted(shapes)
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(s) for k, s in shapes.items()}
    state = random_state(shapes)
    model.load_state_dict(state, strict=True)
    return state


def test_arcface_iresnet18_and_mbf_state_dicts_load():
    with torch.device("meta"):
        iresnet = models.build_backbone("r18")
        mbf = models.build_backbone("mbf")
    assert sorted(iresnet.state_dict()) == sorted(iresnet_layout())
    assert {k: tuple(v.shape) for k, v in mbf.state_dict().items()} == mbf_layout()
    small = models.build_backbone("iresnet18", width=8, num_features=16)
    check_loads(small, iresnet_layout(width=8, emb=16))


def test_arcface_vit_state_dict_loads_and_matches_its_forward():
    with torch.device("meta"):
        for name, dim, depth in [("vit_t", 256, 12), ("vit_s", 512, 12), ("vit_b", 512, 24), ("vit_l", 768, 24)]:
            own = models.build_backbone(name).state_dict()
            assert {k: tuple(v.shape) for k, v in own.items()} == vit_layout(dim, depth), name
    model = models.build_backbone("vit_t", embed_dim=32, depth=2, num_heads=4, num_features=16)
    state = check_loads(model, vit_layout(32, 2, emb=16))
    x = images(112, batch=3)
    with torch.no_grad():
        out = model.eval()(x)
        ref = vit_reference(state, x, depth=2, heads=4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_vit_masking_replaces_the_masked_tokens_with_the_mask_token():
    model, size = tiny("vit_t", mask_ratio=0.5, drop_path=0.0)
    seen = {}
    model.feature.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.train()(images(size))
    tokens = seen["x"].reshape(4, model.num_patches, model.embed_dim)
    is_mask = (tokens == model.mask_token.detach()).all(-1)
    assert is_mask.sum(1).tolist() == [model.num_patches - int(model.num_patches * 0.5)] * 4
    assert not is_mask.all(0).any()  # each sample masks its own positions (8 of 16 each)


def edgeface_layout(dims, depths, heads, gamma, emb=512):
    """EdgeFace's released layout: timm EdgeNeXt under ``model.`` (stem, stages.i.downsample, stages.i.blocks.j
    conv blocks {conv_dw, norm, mlp.fc1/fc2, gamma} and a last SDTA block {convs, pos_embd (stage 1),
    norm_xca, gamma_xca, xca.temperature/qkv/proj, norm, mlp, gamma}, head.norm, head.fc), with every Linear
    replaced by linear1 (no bias, rank = max(2, int(min(in, out) * gamma))) and linear2."""
    shapes = {}

    def lin(prefix, cin, cout):
        if gamma is None:
            shapes.update({f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)})
        else:
            rank = max(2, int(min(cin, cout) * gamma))
            shapes.update({f"{prefix}.linear1.weight": (rank, cin), f"{prefix}.linear2.weight": (cout, rank)})
            shapes[f"{prefix}.linear2.bias"] = (cout,)

    def vec(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)})

    shapes.update({"model.stem.0.weight": (dims[0], 3, 4, 4), "model.stem.0.bias": (dims[0],)})
    vec("model.stem.1", dims[0])
    for i, (d, depth) in enumerate(zip(dims, depths)):
        s = f"model.stages.{i}"
        if i:
            vec(f"{s}.downsample.0", dims[i - 1])
            shapes[f"{s}.downsample.1.weight"] = (d, dims[i - 1], 2, 2)
            shapes[f"{s}.downsample.1.bias"] = (d,)
        for j in range(depth):
            b = f"{s}.blocks.{j}"
            if i > 0 and j == depth - 1:  # the SDTA block
                width = math.ceil(d / (2, 2, 3, 4)[i])
                for c in range((2, 2, 3, 4)[i] - 1):
                    shapes[f"{b}.convs.{c}.weight"] = (width, 1, 3, 3)
                    shapes[f"{b}.convs.{c}.bias"] = (width,)
                if i == 1:
                    shapes[f"{b}.pos_embd.token_projection.weight"] = (d, 64, 1, 1)
                    shapes[f"{b}.pos_embd.token_projection.bias"] = (d,)
                vec(f"{b}.norm_xca", d)
                shapes[f"{b}.gamma_xca"] = (d,)
                shapes[f"{b}.xca.temperature"] = (heads[i], 1, 1)
                lin(f"{b}.xca.qkv", d, 3 * d)
                lin(f"{b}.xca.proj", d, d)
            else:
                k = (3, 5, 7, 9)[i]
                shapes[f"{b}.conv_dw.weight"] = (d, 1, k, k)
                shapes[f"{b}.conv_dw.bias"] = (d,)
            vec(f"{b}.norm", d)
            lin(f"{b}.mlp.fc1", d, 4 * d)
            lin(f"{b}.mlp.fc2", 4 * d, d)
            shapes[f"{b}.gamma"] = (d,)
    vec("model.head.norm", dims[-1])
    lin("model.head.fc", dims[-1], emb)
    return shapes


@pytest.mark.parametrize(
    "name,dims,heads,gamma,mparams",
    [
        ("edgeface_xs_gamma_06", (32, 64, 100, 192), (4, 4, 4, 4), 0.6, 1.77),
        ("edgeface_s_gamma_05", (48, 96, 160, 304), (8, 8, 8, 8), 0.5, 3.65),
        ("edgeface_base", (80, 160, 288, 584), (8, 8, 8, 8), None, 18.23),
    ],
)
def test_edgeface_released_layout_and_parameter_count(name, dims, heads, gamma, mparams):
    layout = edgeface_layout(dims, (3, 3, 9, 3), heads, gamma)
    with torch.device("meta"):
        own = models.build_backbone(name).state_dict()
    assert {k: tuple(v.shape) for k, v in own.items()} == layout
    assert sum(math.prod(s) for s in layout.values()) / 1e6 == pytest.approx(mparams, abs=0.005)  # README table


def test_edgeface_state_dict_loads_and_positions_follow_the_formula():
    model, size = tiny("edgeface_xs_gamma_06")
    check_loads(model, edgeface_layout((8, 16, 24, 32), (1, 1, 2, 1), (2, 2, 2, 2), 0.6, emb=8))
    # The Fourier encoding at (row r, col c) of an H x W map: channels 0-31 encode the row, 32-63 the column,
    # pair (2i, 2i+1) = sin, cos of (pos / (n + 1e-6) * 2pi) / 10000^(2i/32), pos counted from 1.
    encoder = model.model.stages[1].blocks[0].pos_embd
    projection = nn.Conv2d(64, 64, 1)
    nn.init.eye_(projection.weight[:, :, 0, 0])
    nn.init.zeros_(projection.bias)
    encoder.token_projection = projection
    with torch.no_grad():
        grid = encoder(3, 5)[0]
    r, c, i = 2, 4, 5  # row 3 of 3, column 5 of 5, frequency pair 5
    freq = 10000 ** (2 * i / 32)
    row_angle, col_angle = (r + 1) / (3 + 1e-6) * 2 * math.pi / freq, (c + 1) / (5 + 1e-6) * 2 * math.pi / freq
    expected = [math.sin(row_angle), math.cos(row_angle), math.sin(col_angle), math.cos(col_angle)]
    got = [grid[2 * i, r, c], grid[2 * i + 1, r, c], grid[32 + 2 * i, r, c], grid[33 + 2 * i, r, c]]
    assert [float(g) for g in got] == pytest.approx(expected, abs=1e-5)


def test_bad_options_are_one_line_errors():
    for name, kwargs, match in [
        ("vit_t", {"embed_dim": 30, "num_heads": 4}, "divisible"),
        ("vit_t", {"mask_ratio": 1.0}, r"\[0, 1\)"),
        ("edgeface_xs_gamma_06", {"gamma": 0.0}, "gamma"),
        ("edgeface_xs_gamma_06", {"input_size": 16}, "input_size"),
        ("edgeface_xs_gamma_06", {"dims": (8, 16, 24)}, "4 dims"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            models.build_backbone(name, **kwargs)
        assert "\n" not in str(err.value)
    model, _ = tiny("vit_t")
    with pytest.raises(ValueError, match="36x36"):
        model(images(32))
