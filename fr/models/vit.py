"""Face ViTs (vit_t/s/b/l) with insightface arcface_torch's layout and state_dict keys: 9x9 patches of a 112x112
face (a 12x12 grid, 144 tokens), pre-norm blocks with ReLU6 MLPs, no class token, and a feature head over the
flattened tokens."""

from __future__ import annotations

import contextlib
from typing import ContextManager, List, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fr.models.iresnet import trunk_autocast
from fr.models.registry import BACKBONES, register_backbone

FEATURE_BN_EPS = 2e-5  # arcface_torch's feature head; the blocks use LayerNorm's default 1e-5


def linear_rates(last: float, count: int) -> List[float]:
    """``count`` drop-path rates rising evenly from 0 to ``last`` (plain floats: no tensor, so meta-device
    construction for counting works)."""
    return [last * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv: [B,3,S,S] -> [B, (S // patch)^2, dim]."""

    def __init__(self, input_size: int, patch_size: int, dim: int):
        super().__init__()
        self.input_size = input_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"ViT built for {self.input_size}x{self.input_size} images (data.image_size), got {tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """fc1 -> ReLU6 -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def float32_region(device_type: str) -> ContextManager:
    """Autocast switched off (where the device has autocast: the meta device used for counting has none)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class Attention(nn.Module):
    """Multi-head self-attention; qkv has no bias, proj has one.

    The score/softmax/weighted-sum core always runs in float32 (as arcface_torch does: fp16 scores overflow),
    written as plain matmuls so that FLOP counters and ONNX see them.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        with float32_region(x.device.type):
            q, k, v = qkv.float().unbind(0)
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = (self.drop(weights) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.drop(self.proj(out.to(qkv.dtype)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x)), each through DropPath."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """Images [B,3,S,S] in [-1,1] -> embeddings [B,num_features]; S is fixed at construction (112 by default).

    In training, ``mask_ratio`` of each sample's tokens (chosen at random) skip the blocks and come back as the
    learnt ``mask_token`` before the feature head. ``drop_path`` rises linearly from 0 at the first block to the
    given rate at the last. ``dropout`` is the blocks' attention/projection/MLP dropout. With ``fp16`` the blocks
    run under autocast (the attention core, the final norm and the feature head stay float32).
    """

    def __init__(
        self,
        num_features: int = 512,
        input_size: int = 112,
        patch_size: int = 9,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        mask_ratio: float = 0.1,
        fp16: Union[bool, str] = False,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        if patch_size < 1 or input_size < patch_size:
            raise ValueError(f"ViT needs input_size >= patch_size >= 1, got {input_size} and {patch_size}")
        if depth < 1 or embed_dim < 1:
            raise ValueError(f"ViT needs depth >= 1 and embed_dim >= 1, got {depth} and {embed_dim}")
        if not 0.0 <= mask_ratio < 1.0 or not 0.0 <= drop_path < 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"ViT mask_ratio, drop_path and dropout must be in [0, 1), got {mask_ratio}, {drop_path}, {dropout}"
            )
        self.num_features = num_features
        self.input_size = input_size
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.fp16 = fp16
        self.grad_checkpoint = grad_checkpoint

        self.patch_embed = PatchEmbed(input_size, patch_size, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(dropout)
        rates = linear_rates(drop_path, depth)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, dropout, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * self.num_patches, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=FEATURE_BN_EPS),
            nn.Linear(embed_dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=FEATURE_BN_EPS),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # cut at +-2 absolute, as timm
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _kept_tokens(self, batch: int, device: torch.device) -> Optional[torch.Tensor]:
        """Indices [B, kept] of the tokens each sample keeps this step, or None when nothing is masked."""
        if not self.training or self.mask_ratio == 0.0:
            return None
        kept = int(self.num_patches * (1.0 - self.mask_ratio))
        return torch.rand(batch, self.num_patches, device=device).argsort(dim=1)[:, :kept]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        with trunk_autocast(x.device.type, self.fp16):
            x = self.pos_drop(self.patch_embed(x) + self.pos_embed)
            kept = self._kept_tokens(batch, x.device)
            if kept is not None:
                x = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, self.embed_dim))
            for block in self.blocks:
                if self.grad_checkpoint and self.training:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        x = self.norm(x.float())
        if kept is not None:  # masked positions get the (un-normalised) mask token, kept ones their output
            full = self.mask_token.to(x.dtype).expand(batch, self.num_patches, -1)
            x = full.scatter(1, kept.unsqueeze(-1).expand(-1, -1, self.embed_dim), x)
        return self.feature(x.reshape(batch, self.num_patches * self.embed_dim))


def _variant(name: str, embed_dim: int, depth: int, drop_path: float, mask_ratio: float):
    """A registered factory with an explicit signature (so the registry names bad keywords)."""

    def factory(
        num_features: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        drop_path: float = drop_path,
        mask_ratio: float = mask_ratio,
        fp16: Union[bool, str] = False,
        grad_checkpoint: bool = False,
        embed_dim: int = embed_dim,
        depth: int = depth,
        num_heads: int = 8,
        patch_size: int = 9,
        mlp_ratio: float = 4.0,
    ) -> VisionTransformer:
        return VisionTransformer(
            num_features=num_features,
            input_size=input_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            drop_path=drop_path,
            mask_ratio=mask_ratio,
            fp16=fp16,
            grad_checkpoint=grad_checkpoint,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"Face ViT: width {embed_dim}, {depth} blocks, 8 heads, patch 9."
    return register_backbone(name)(factory)


# arcface_torch's get_model settings; vit_l exists there only as its WebFace42M variant (drop_path/mask 0.05).
vit_t = _variant("vit_t", 256, 12, 0.1, 0.1)
vit_s = _variant("vit_s", 512, 12, 0.1, 0.1)
vit_b = _variant("vit_b", 512, 24, 0.1, 0.1)
vit_l = _variant("vit_l", 768, 24, 0.05, 0.05)

# arcface_torch's WebFace42M network names, as written in its configs
BACKBONES.alias("vit_t_dp005_mask0", "vit_t", drop_path=0.05, mask_ratio=0.0)
BACKBONES.alias("vit_s_dp005_mask_0", "vit_s", drop_path=0.05, mask_ratio=0.0)
BACKBONES.alias("vit_b_dp005_mask_005", "vit_b", drop_path=0.05, mask_ratio=0.05)
BACKBONES.alias("vit_l_dp005_mask_005", "vit_l")
