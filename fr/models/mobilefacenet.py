"""MobileFaceNet backbone with insightface arcface_torch's ``get_mbf`` layout and state_dict keys."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from fr.models.iresnet import run_blocks, trunk_autocast
from fr.models.registry import BACKBONES, register_backbone


class LinearBlock(nn.Module):
    """Conv + BN with no activation (``layers.0`` conv, ``layers.1`` BN)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBlock(LinearBlock):
    """Conv + BN + PReLU (``layers.0/1/2``)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1):
        super().__init__(in_c, out_c, kernel, stride, padding, groups)
        self.layers.append(nn.PReLU(out_c))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden``, 3x3 depthwise (``stride``), linear 1x1 project.

    ``hidden`` is what insightface calls ``groups``: a fixed width (128/256/512) independent of ``scale``.
    """

    def __init__(self, in_c: int, out_c: int, hidden: int, stride: int = 2, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` shape-preserving residual DepthWise units."""

    def __init__(self, channels: int, num_block: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            *(DepthWise(channels, channels, hidden, stride=1, residual=True) for _ in range(num_block))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: linear depthwise k x k over the whole map, flatten, (dropout), Linear, BN1d.

    The dropout is applied between the entries of ``layers`` so that their indices (the state_dict keys)
    stay insightface's.
    """

    def __init__(self, num_features: int, kernel: int = 7, channels: int = 512, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel=kernel, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, flatten, fc, bn = self.layers
        return bn(fc(self.dropout(flatten(conv(x)))))


@register_backbone("mobilefacenet")
class MobileFaceNet(nn.Module):
    """Images [B,3,S,S] in [-1,1] -> embeddings [B,num_features]; S must be a multiple of 16 (112 by default).

    insightface's ``mbf``; ``blocks=(2, 8, 12, 4), scale=4`` gives ``mbf_large``.
    ``blocks`` are the residual unit counts of the four stages, ``scale`` multiplies the trunk widths (64, 128).
    With ``fp16`` the ``layers`` trunk runs under autocast and ``conv_sep``/``features`` in float32.
    ``dropout`` acts before the embedding Linear; ``grad_checkpoint`` recomputes each unit of ``layers`` in the
    backward pass (training only).
    """

    def __init__(
        self,
        num_features: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        fp16: Union[bool, str] = False,
        input_size: int = 112,
        dropout: float = 0.0,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or blocks[0] < 1 or min(blocks) < 0:
            raise ValueError(f"MobileFaceNet blocks must be 4 counts (first >= 1, others >= 0), got {blocks}")
        if int(scale) != scale or scale < 1:
            raise ValueError(f"MobileFaceNet scale must be a positive integer, got {scale}")
        if input_size <= 0 or input_size % 16:
            raise ValueError(
                f"MobileFaceNet input_size must be a positive multiple of 16 (four stride-2 steps), got {input_size}"
            )
        self.num_features = num_features
        self.fp16 = fp16
        self.input_size = input_size
        self.grad_checkpoint = grad_checkpoint
        narrow, wide = 64 * scale, 128 * scale

        if blocks[0] == 1:
            # Not fully depthwise at scale > 1: insightface fixes groups at 64, and checkpoints carry that shape.
            stage0 = ConvBlock(narrow, narrow, kernel=3, padding=1, groups=64)
        else:
            stage0 = Residual(narrow, blocks[0], hidden=128)
        self.layers = nn.Sequential(
            ConvBlock(3, narrow, kernel=3, stride=2, padding=1),
            stage0,
            DepthWise(narrow, narrow, hidden=128),
            Residual(narrow, blocks[1], hidden=128),
            DepthWise(narrow, wide, hidden=256),
            Residual(wide, blocks[2], hidden=256),
            DepthWise(wide, wide, hidden=512),
            Residual(wide, blocks[3], hidden=256),
        )
        self.conv_sep = ConvBlock(wide, 512)
        self.features = GDC(num_features, kernel=input_size // 16, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with trunk_autocast(x.device.type, self.fp16):
            x = run_blocks(self.layers, x, self.grad_checkpoint and self.training)
        x = self.conv_sep(x.float() if self.fp16 else x)
        return self.features(x)


@register_backbone("mobilefacenet_large")
def mobilefacenet_large(
    num_features: int = 512,
    fp16: Union[bool, str] = False,
    input_size: int = 112,
    dropout: float = 0.0,
    grad_checkpoint: bool = False,
) -> MobileFaceNet:
    """arcface_torch's ``get_mbf_large``: 2/8/12/4 residual units, widths 256/512."""
    return MobileFaceNet(
        num_features,
        blocks=(2, 8, 12, 4),
        scale=4,
        fp16=fp16,
        input_size=input_size,
        dropout=dropout,
        grad_checkpoint=grad_checkpoint,
    )


# arcface_torch's network names
BACKBONES.alias("mbf", "mobilefacenet")
BACKBONES.alias("mbf_large", "mobilefacenet_large")
