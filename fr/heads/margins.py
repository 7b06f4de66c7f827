"""Margin losses on cosine logits (ArcFace, CosFace, combined), their per-step context, and the loss registry."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import nn

from fr.distributed import DistEnv
from fr.heads.objectives import get_objective
from fr.registry import Registry

LOSSES = Registry("margin loss")
register_loss = LOSSES.register
available_losses = LOSSES.names
build_loss = LOSSES.build  # unknown names or parameters raise a one-line ValueError

ANGLE_EPS = 1e-7


def check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


@dataclass
class MarginContext:
    """Per-step inputs some losses need besides the cosines; every field is about the GLOBAL (gathered) batch.

    norms: [B] embedding norms before normalisation, with autograd (identical values on every rank).
    target_cos: [B] each row's target cosine, detached, identical on every rank (filled by PartialFC only
    for losses with `needs_target_cos = True`, since it costs one all-reduce).
    """

    env: DistEnv = field(default_factory=DistEnv)
    norms: Optional[torch.Tensor] = None
    target_cos: Optional[torch.Tensor] = None


def arc_target(cos: torch.Tensor, m: Union[float, torch.Tensor]) -> torch.Tensor:
    """cos(acos(cos) + m), continued past theta + m = pi as cos - (1 - cos m); m may be a per-row tensor.

    The continuation keeps the target continuous, non-decreasing in cos and finite on [-1, 1]; cos is
    clamped to [-1 + 1e-7, 1 - 1e-7] before acos, so gradients stay finite at cos = +-1.
    """
    m = torch.as_tensor(m, dtype=cos.dtype, device=cos.device)
    angular = torch.cos(torch.acos(cos.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS)) + m)
    cos_m = torch.cos(m)
    # theta + m <= pi  <=>  cos >= cos(pi - m) = -cos(m)
    return torch.where(cos >= -cos_m, angular, cos - (1.0 - cos_m))


def constant_offset(cos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """`new` in value, `cos` in gradient: the margin acts as a constant offset (insightface arcface_torch)."""
    return cos + (new - cos).detach()


class MarginLoss(nn.Module):
    """Base for margin losses: replace each labelled row's target cosine, then scale every logit by `s`.

    `forward(cos [B, C] fp32, local_target [B] int64, ctx: MarginContext = None) -> logits`, where -1 marks
    a row whose target class is not in this shard (that row is only scaled). Subclasses that change just
    the target implement `target_logit(cos_target [B, 1], ctx)`; losses that reshape other logits override
    `forward`. `reduce(logits, local_target, ctx)` turns logits into the loss with the objective named by
    `objective`; losses with extra terms override it.

    `fused_margin = True` declares that `target_logit(cos)` depends on the cosine alone (no ctx, no state
    set by `forward`) and that `forward` and `reduce` are this base's with softmax CE, so PartialFC may
    take its fused path. Each class declares it for itself: it is not inherited, as a subclass may break it.
    """

    objective = "softmax_ce"
    needs_target_cos = False
    fused_margin = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.fused_margin = bool(cls.__dict__.get("fused_margin", False))

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = check_finite("s", s)
        if self.s <= 0:
            raise ValueError(f"s must be positive, got {self.s}")

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        """The target cosine after the margin (before scaling), elementwise."""
        # Subclasses define this or override forward; reaching the base means neither was done.
        raise TypeError(f"{type(self).__name__} must define target_logit(cos, ctx) or override forward")

    def forward(
        self, cos_logits: torch.Tensor, labels: torch.Tensor, ctx: Optional[MarginContext] = None
    ) -> torch.Tensor:
        ctx = ctx if ctx is not None else MarginContext()
        if cos_logits.shape[1] == 0:
            return cos_logits * self.s
        valid = (labels != -1).unsqueeze(1)
        # Gather/scatter with a dummy column for unlabelled rows instead of boolean indexing: no host sync, and
        # the dummy entry is written back unchanged, so its value and gradient pass straight through.
        cols = labels.clamp(min=0).unsqueeze(1)
        target = cos_logits.gather(1, cols)
        new_target = torch.where(valid, self.target_logit(target, ctx), target)
        return cos_logits.scatter(1, cols, new_target) * self.s

    def reduce(self, logits: torch.Tensor, local_target: torch.Tensor, ctx: MarginContext) -> torch.Tensor:
        """The loss from this shard's logits; the same value on every rank."""
        return get_objective(self.objective)(logits, local_target, ctx.env)


@register_loss("arcface")
class ArcFace(MarginLoss):
    """ArcFace, additive angular margin: target logit s*cos(theta + m), theta = acos(cos).

    Past theta = pi - m the target continues as cos - (1 - cos m) (see `arc_target`): continuous,
    non-decreasing in cos, never above cos, finite on all of [-1, 1]. With exact_gradient=False (default,
    like insightface arcface_torch) autograd sees the margin as a constant offset on the target
    (d target/d cos = 1); exact_gradient=True differentiates through acos and cos.
    """

    eps = ANGLE_EPS
    fused_margin = True

    def __init__(self, s: float = 64.0, m: float = 0.5, exact_gradient: bool = False) -> None:
        super().__init__(s)
        self.m = check_finite("m", m)
        if not 0.0 <= self.m < math.pi:
            raise ValueError(f"arcface margin m must be in [0, pi), got {self.m}")
        self.exact_gradient = bool(exact_gradient)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        new = arc_target(cos_target, self.m)
        return new if self.exact_gradient else constant_offset(cos_target, new)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, exact_gradient={self.exact_gradient}"


@register_loss("cosface")
class CosFace(MarginLoss):
    """CosFace, additive cosine margin: target logit s*(cos - m)."""

    fused_margin = True

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s)
        self.m = check_finite("m", m)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        return cos_target - self.m

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


@register_loss("combined")
class CombinedMargin(MarginLoss):
    """Combined margin (ArcFace paper): target logit s*(cos(m1*theta + m2) - m3), any m1 > 0, 0 <= m2 < pi, m3.

    Where m1*theta + m2 would pass pi (cos below c0 = cos((pi - m2)/m1)), the target continues linearly as
    cos - c0 - 1 - m3, which is continuous and non-decreasing. m1=1, m3=0 is ArcFace; m1=1, m2=0 is
    CosFace. Defaults are the ArcFace paper's combination (1, 0.3, 0.2). exact_gradient as in ArcFace.
    """

    fused_margin = True

    def __init__(
        self, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2, exact_gradient: bool = False
    ) -> None:
        super().__init__(s)
        self.m1, self.m2, self.m3 = check_finite("m1", m1), check_finite("m2", m2), check_finite("m3", m3)
        if self.m1 <= 0:
            raise ValueError(f"combined margin m1 must be positive, got {self.m1}")
        if not 0.0 <= self.m2 < math.pi:
            raise ValueError(f"combined margin m2 must be in [0, pi), got {self.m2}")
        self.exact_gradient = bool(exact_gradient)
        self.joint = math.cos(min((math.pi - self.m2) / self.m1, math.pi))

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        theta = torch.acos(cos_target.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS))
        angular = torch.cos(self.m1 * theta + self.m2) - self.m3
        new = torch.where(cos_target >= self.joint, angular, cos_target - self.joint - 1.0 - self.m3)
        return new if self.exact_gradient else constant_offset(cos_target, new)

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, exact_gradient={self.exact_gradient}"
