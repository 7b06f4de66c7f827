"""EdgeFace backbones (edgeface_xs_gamma_06, edgeface_s_gamma_05, edgeface_base): EdgeNeXt hybrids whose linear
layers are low-rank, with the state_dict keys of the released EdgeFace checkpoints (timm's EdgeNeXt under
``model.``, ``linear1``/``linear2`` for a low-rank layer)."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from fr.models.iresnet import trunk_autocast
from fr.models.registry import register_backbone
from fr.models.vit import DropPath, linear_rates

LN_EPS = 1e-6


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LowRankLinear(nn.Module):
    """in -> rank (no bias) -> out: EdgeFace's replacement for a Linear, rank = max(2, int(min(in, out) * gamma))."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.linear1 = nn.Linear(in_features, rank, bias=False)
        self.linear2 = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def linear(in_features: int, out_features: int, gamma: Optional[float], bias: bool = True) -> nn.Module:
    """A full Linear when ``gamma`` is None, else its low-rank factorisation."""
    if gamma is None:
        return nn.Linear(in_features, out_features, bias=bias)
    rank = max(2, int(min(in_features, out_features) * gamma))
    return LowRankLinear(in_features, out_features, rank, bias)


class LowRankMlp(nn.Module):
    """Pointwise fc1 -> GELU -> fc2 on channels-last tensors."""

    def __init__(self, dim: int, hidden: int, gamma: Optional[float]):
        super().__init__()
        self.fc1 = linear(dim, hidden, gamma)
        self.act = nn.GELU()
        self.fc2 = linear(hidden, dim, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvEncoderBlock(nn.Module):
    """Depthwise k x k conv, then LayerNorm + MLP in channels-last, scaled by a learnt per-channel ``gamma``."""

    def __init__(self, dim: int, kernel: int, expand: int, gamma: Optional[float], drop_path: float, ls_init: float):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = LowRankMlp(dim, expand * dim, gamma)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gamma * self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))
        return x + self.drop_path(out.permute(0, 3, 1, 2))


class FourierPositions(nn.Module):
    """Sine/cosine encodings of each pixel's normalised (row, column), projected by a 1x1 conv to ``dim``."""

    def __init__(self, dim: int, hidden: int = 32, temperature: float = 10000.0):
        super().__init__()
        self.hidden = hidden
        self.temperature = temperature
        self.token_projection = nn.Conv2d(2 * hidden, dim, kernel_size=1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """[1, dim, H, W]"""
        device = self.token_projection.weight.device

        def encode(length: int) -> torch.Tensor:
            # positions 1..n scaled to (0, 2pi]; channel pairs (2i, 2i+1) share a frequency: sin, then cos
            pos = torch.arange(1, length + 1, device=device, dtype=torch.float32) / (length + 1e-6) * (2 * math.pi)
            pair = torch.arange(self.hidden, device=device) // 2
            angles = pos[:, None] / self.temperature ** (2 * pair / self.hidden)
            return torch.where(pair * 2 == torch.arange(self.hidden, device=device), angles.sin(), angles.cos())

        rows = encode(height)[:, None, :].expand(height, width, self.hidden)
        cols = encode(width)[None, :, :].expand(height, width, self.hidden)
        grid = torch.cat([rows, cols], dim=-1).permute(2, 0, 1).unsqueeze(0)
        return self.token_projection(grid.to(self.token_projection.weight.dtype))


class CrossCovarianceAttention(nn.Module):
    """Transposed (channel-to-channel) attention: per head, softmax(temperature * cos(q_c, k_c')) over channels,
    with q and k L2-normalised along the tokens."""

    def __init__(self, dim: int, num_heads: int, gamma: Optional[float]):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = linear(dim, dim * 3, gamma)
        self.proj = linear(dim, dim, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)  # [B, heads, dim/heads, tokens]
        weights = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        out = weights.softmax(dim=-1) @ v
        return self.proj(out.permute(0, 3, 1, 2).reshape(batch, tokens, dim))


class SplitTransposeBlock(nn.Module):
    """EdgeNeXt's SDTA block: channel groups mixed by a cascade of 3x3 depthwise convs, optional positional
    encoding, cross-covariance attention, then the LayerNorm + MLP of a ConvEncoderBlock."""

    def __init__(
        self,
        dim: int,
        scales: int,
        num_heads: int,
        expand: int,
        positions: bool,
        gamma: Optional[float],
        drop_path: float,
        ls_init: float,
    ):
        super().__init__()
        if scales < 2 or dim % num_heads:
            raise ValueError(f"EdgeFace SDTA block needs scales >= 2 and dim % heads == 0, got {scales}, {dim}")
        self.width = math.ceil(dim / scales)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=1, groups=self.width) for _ in range(scales - 1)
        )
        self.pos_embd = FourierPositions(dim) if positions else None
        self.norm_xca = nn.LayerNorm(dim, eps=LN_EPS)
        self.gamma_xca = nn.Parameter(torch.full((dim,), ls_init))
        self.xca = CrossCovarianceAttention(dim, num_heads, gamma)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = LowRankMlp(dim, expand * dim, gamma)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.split(self.width, dim=1)
        mixed = []
        for i, conv in enumerate(self.convs):
            mixed.append(conv(groups[0] if i == 0 else mixed[-1] + groups[i]))
        out = torch.cat(mixed + [groups[-1]], dim=1)

        batch, channels, height, width = out.shape
        tokens = out.flatten(2).transpose(1, 2)
        if self.pos_embd is not None:
            tokens = tokens + self.pos_embd(height, width).flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.gamma_xca * self.xca(self.norm_xca(tokens)))
        out = self.gamma * self.mlp(self.norm(tokens.reshape(batch, height, width, channels)))
        return x + self.drop_path(out.permute(0, 3, 1, 2))


class Stage(nn.Module):
    """Optional downsampling (channel LayerNorm + 2x2/2 conv), then conv blocks and ``global_blocks`` SDTA blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, block_args: dict, rates: Sequence[float]):
        super().__init__()
        if downsample:
            self.downsample: nn.Module = nn.Sequential(ChannelNorm(in_dim, eps=LN_EPS), nn.Conv2d(in_dim, dim, 2, 2))
        else:
            self.downsample = nn.Identity()
        conv_args = {k: block_args[k] for k in ("kernel", "expand", "gamma", "ls_init")}
        sdta_args = {k: block_args[k] for k in ("scales", "num_heads", "expand", "positions", "gamma", "ls_init")}
        local = depth - block_args["global_blocks"]
        self.blocks = nn.Sequential(
            *(
                ConvEncoderBlock(dim, drop_path=rates[i], **conv_args)
                if i < local
                else SplitTransposeBlock(dim, drop_path=rates[i], **sdta_args)
                for i in range(depth)
            )
        )


class EdgeFaceHead(nn.Module):
    """Global average pool, channel LayerNorm, dropout, (low-rank) linear to the embedding."""

    def __init__(self, channels: int, num_features: int, gamma: Optional[float], dropout: float):
        super().__init__()
        self.norm = ChannelNorm(channels, eps=LN_EPS)
        self.drop = nn.Dropout(dropout)
        self.fc = linear(channels, num_features, gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x.mean((2, 3), keepdim=True)).flatten(1)))


class EdgeNeXt(nn.Module):
    """Patchify stem (4x4/4 conv + channel LayerNorm) and four stages at strides 4, 8, 16, 32."""

    def __init__(
        self,
        num_features: int,
        dims: Sequence[int],
        depths: Sequence[int],
        heads: Sequence[int],
        gamma: Optional[float],
        dropout: float,
        drop_path: float,
    ):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), ChannelNorm(dims[0], eps=LN_EPS))
        rates = linear_rates(drop_path, sum(depths))
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            args = {
                "kernel": (3, 5, 7, 9)[i],
                "scales": (2, 2, 3, 4)[i],
                "global_blocks": (0, 1, 1, 1)[i],
                "positions": i == 1,
                "num_heads": heads[i],
                "expand": 4,
                "gamma": gamma,
                "ls_init": 1e-6,
            }
            first = sum(depths[:i])
            stages.append(Stage(dims[max(i - 1, 0)], dim, depth, i > 0, args, rates[first : first + depth]))
        self.stages = nn.Sequential(*stages)
        self.head = EdgeFaceHead(dims[-1], num_features, gamma, dropout)


class EdgeFace(nn.Module):
    """Images [B,3,S,S] in [-1,1] -> embeddings [B,num_features]; any S >= 32 (112 for the released models).

    ``gamma`` is the rank ratio of every linear layer (None: full rank). With ``fp16`` the stem and stages run
    under autocast and the head in float32; ``grad_checkpoint`` recomputes each block in the backward pass.
    """

    def __init__(
        self,
        num_features: int = 512,
        dims: Sequence[int] = (32, 64, 100, 192),
        depths: Sequence[int] = (3, 3, 9, 3),
        heads: Sequence[int] = (4, 4, 4, 4),
        gamma: Optional[float] = 0.6,
        input_size: int = 112,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        fp16: Union[bool, str] = False,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        dims, depths, heads = tuple(int(d) for d in dims), tuple(int(d) for d in depths), tuple(int(h) for h in heads)
        if not len(dims) == len(depths) == len(heads) == 4 or min(depths[1:]) < 1 or depths[0] < 0:
            raise ValueError(
                f"EdgeFace needs 4 dims, depths (stages 2-4 >= 1, for their SDTA block) and heads, "
                f"got {dims}, {depths}, {heads}"
            )
        if gamma is not None and not 0.0 < gamma <= 1.0:
            raise ValueError(f"EdgeFace gamma (rank ratio) must be in (0, 1] or None, got {gamma}")
        if input_size < 32:
            raise ValueError(f"EdgeFace input_size must be >= 32 (total stride 32), got {input_size}")
        self.num_features = num_features
        self.input_size = input_size
        self.fp16 = fp16
        self.grad_checkpoint = grad_checkpoint
        self.model = EdgeNeXt(num_features, dims, depths, heads, gamma, dropout, drop_path)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)  # cut at 2 std, as timm's EdgeNeXt
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.model
        with trunk_autocast(x.device.type, self.fp16):
            x = body.stem(x)
            for stage in body.stages:
                x = stage.downsample(x)
                for block in stage.blocks:
                    if self.grad_checkpoint and self.training:
                        x = checkpoint(block, x, use_reentrant=False)
                    else:
                        x = block(x)
        return body.head(x.float() if self.fp16 else x)


def _variant(name: str, dims: Sequence[int], heads: Sequence[int], gamma: Optional[float]):
    """A registered factory with an explicit signature (so the registry names bad keywords)."""

    def factory(
        num_features: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        fp16: Union[bool, str] = False,
        grad_checkpoint: bool = False,
        dims: Sequence[int] = tuple(dims),
        depths: Sequence[int] = (3, 3, 9, 3),
        heads: Sequence[int] = tuple(heads),
        gamma: Optional[float] = gamma,
    ) -> EdgeFace:
        return EdgeFace(
            num_features=num_features,
            dims=dims,
            depths=depths,
            heads=heads,
            gamma=gamma,
            input_size=input_size,
            dropout=dropout,
            drop_path=drop_path,
            fp16=fp16,
            grad_checkpoint=grad_checkpoint,
        )

    factory.__name__ = factory.__qualname__ = name
    rank = "full-rank" if gamma is None else f"rank ratio {gamma}"
    factory.__doc__ = f"EdgeFace: EdgeNeXt widths {tuple(dims)}, {rank} linear layers."
    return register_backbone(name)(factory)


# EdgeNeXt x_small / small / base widths and heads; the rank ratios of the released EdgeFace models
edgeface_xs_gamma_06 = _variant("edgeface_xs_gamma_06", (32, 64, 100, 192), (4, 4, 4, 4), 0.6)
edgeface_s_gamma_05 = _variant("edgeface_s_gamma_05", (48, 96, 160, 304), (8, 8, 8, 8), 0.5)
edgeface_base = _variant("edgeface_base", (80, 160, 288, 584), (8, 8, 8, 8), None)
