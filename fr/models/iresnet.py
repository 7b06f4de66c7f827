"""IResNet backbones (iresnet18/34/50/100/200) with insightface arcface_torch's layout and state_dict keys."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fr.models.registry import BACKBONES, register_backbone

BN_EPS = 1e-5


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def trunk_autocast(device_type: str, enabled: Union[bool, str]) -> ContextManager:
    """Mixed precision for a backbone's body: ``True`` is float16 on CUDA and bfloat16 elsewhere (CPU has no
    fast fp16 path); ``"fp16"`` or ``"bf16"`` names the dtype.

    When disabled this is a no-op rather than ``autocast(enabled=False)``, so an autocast region opened by
    the caller still applies.
    """
    if enabled is False or enabled is None:
        return contextlib.nullcontext()
    if isinstance(enabled, str):
        if enabled not in PRECISIONS:
            raise ValueError(f"fp16 must be true, false, 'fp16' or 'bf16', got {enabled!r}")
        dtype = PRECISIONS[enabled]
    else:
        dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device_type, dtype=dtype)


def run_blocks(blocks: nn.Module, x: torch.Tensor, grad_checkpoint: bool) -> torch.Tensor:
    """``blocks`` (a Sequential) one after another; with ``grad_checkpoint`` each block's activations are
    recomputed in the backward pass instead of kept (BatchNorm statistics are then updated twice per step,
    as in arcface_torch)."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if grad_checkpoint else block(x)
    return x


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Residual unit BN-conv-BN-PReLU-conv(stride)-BN, with a 1x1 conv+BN shortcut when the shape changes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * self.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


def _stage(inplanes: int, planes: int, depth: int) -> nn.Sequential:
    """``depth`` blocks; the first halves the resolution."""
    blocks = [IBasicBlock(inplanes, planes, stride=2)]
    blocks += [IBasicBlock(planes * IBasicBlock.expansion, planes) for _ in range(1, depth)]
    return nn.Sequential(*blocks)


class IResNet(nn.Module):
    """Images [B,3,S,S] in [-1,1] -> embeddings [B,num_features]; S must be a multiple of 16 (112 by default).

    With ``fp16`` the conv trunk runs under autocast and ``fc``/``features`` in float32, as insightface does;
    ``grad_checkpoint`` recomputes each residual unit in the backward pass (training only).
    ``width`` (64 in insightface) sets the stage widths to width*(1, 2, 4, 8), and ``stem_stride=2`` halves
    the resolution in the stem (S/32 rounded up at the end): both shrink the network for CPU runs
    while keeping the layout and key names.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: Union[bool, str] = False,
        input_size: int = 112,
        width: int = 64,
        stem_stride: int = 1,
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        if len(layers) != 4 or any(int(d) < 1 for d in layers):
            raise ValueError(f"IResNet needs 4 stage depths >= 1, got {tuple(layers)}")
        if input_size <= 0 or input_size % 16:
            raise ValueError(
                f"IResNet input_size must be a positive multiple of 16 (four stride-2 stages), got {input_size}"
            )
        if width < 1 or stem_stride not in (1, 2):
            raise ValueError(f"IResNet needs width >= 1 and stem_stride 1 or 2, got {width} and {stem_stride}")
        self.num_features = num_features
        self.fp16 = fp16
        self.input_size = input_size
        self.grad_checkpoint = grad_checkpoint
        widths = [width * f for f in (1, 2, 4, 8)]

        self.conv1 = _conv3x3(3, widths[0], stem_stride)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = _stage(widths[0], widths[0], layers[0])
        self.layer2 = _stage(widths[0], widths[1], layers[1])
        self.layer3 = _stage(widths[1], widths[2], layers[2])
        self.layer4 = _stage(widths[2], widths[3], layers[3])
        trunk_channels = widths[3] * IBasicBlock.expansion
        self.bn2 = nn.BatchNorm2d(trunk_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        # a 3x3/2 conv with padding 1 maps a side n to ceil(n / 2)
        side = -(-input_size // (16 * stem_stride))
        self.fc = nn.Linear(trunk_channels * side**2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        # insightface's choices; its released weights were trained from this init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The embedding BN only centres and shifts; its scale stays 1 so the norm is learnt by fc.
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with trunk_autocast(x.device.type, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            recompute = self.grad_checkpoint and self.training
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = run_blocks(stage, x, recompute)
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


def _variant(name: str, layers: Sequence[int]):
    """A registered factory with an explicit signature, so the registry can name bad keywords."""

    def factory(
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: Union[bool, str] = False,
        input_size: int = 112,
        width: int = 64,
        stem_stride: int = 1,
        grad_checkpoint: bool = False,
    ) -> IResNet:
        return IResNet(
            layers,
            num_features=num_features,
            dropout=dropout,
            fp16=fp16,
            input_size=input_size,
            width=width,
            stem_stride=stem_stride,
            grad_checkpoint=grad_checkpoint,
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"IResNet with stage depths {tuple(layers)}."
    return register_backbone(name)(factory)


iresnet18 = _variant("iresnet18", (2, 2, 2, 2))
iresnet34 = _variant("iresnet34", (3, 4, 6, 3))
iresnet50 = _variant("iresnet50", (3, 4, 14, 3))
iresnet100 = _variant("iresnet100", (3, 13, 30, 3))
iresnet200 = _variant("iresnet200", (6, 26, 60, 6))

# arcface_torch's network names (its configs' `network`); r2060 is not provided (1.2e9 parameters)
BACKBONES.alias("r18", "iresnet18")
BACKBONES.alias("r34", "iresnet34")
BACKBONES.alias("r50", "iresnet50")
BACKBONES.alias("r100", "iresnet100")
BACKBONES.alias("r200", "iresnet200")
