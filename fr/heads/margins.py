"""Margin losses on cosine logits (ArcFace, CosFace, ...) and the registry that builds them by name."""
from __future__ import annotations

import math

import torch
from torch import nn

from fr.registry import Registry

LOSSES = Registry("margin loss")
register_loss = LOSSES.register
available_losses = LOSSES.names


def build_loss(name: str, **params) -> nn.Module:
    """Instantiate the margin loss registered as `name`; unknown names or parameters raise a one-line ValueError."""
    return LOSSES.build(name, **params)


def _check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class MarginLoss(nn.Module):
    """Base for margin losses: replace each labelled row's target cosine, then scale every logit by `s`.

    `forward(cos_logits [B, C] fp32, labels [B] int64)` where label -1 marks a row whose target class is not
    in this shard (that row is only scaled). Subclasses that change just the target implement `target_logit`;
    losses that also reshape non-target logits override `forward`. `objective` names the distributed
    reduction in `fr.heads.objectives` that consumes the logits.
    """

    objective = "softmax_ce"

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = _check_finite("s", s)
        if self.s <= 0:
            raise ValueError(f"s must be positive, got {self.s}")

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """The target cosine after the margin (before scaling), elementwise."""
        raise NotImplementedError

    def forward(self, cos_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if cos_logits.shape[1] == 0:
            return cos_logits * self.s
        valid = (labels != -1).unsqueeze(1)
        # Gather/scatter with a dummy column for unlabelled rows instead of boolean indexing: no host sync, and
        # the dummy entry is written back unchanged, so its value and gradient pass straight through.
        cols = labels.clamp(min=0).unsqueeze(1)
        target = cos_logits.gather(1, cols)
        new_target = torch.where(valid, self.target_logit(target), target)
        return cos_logits.scatter(1, cols, new_target) * self.s


@register_loss("arcface")
class ArcFace(MarginLoss):
    """ArcFace, additive angular margin: target logit s*cos(theta + m), theta = acos(cos).

    cos is clamped to [-1+eps, 1-eps] before acos. Past theta = pi - m, where cos(theta + m) would turn back
    up, the target continues as cos - (1 - cos m): the penalty it had at that joint, so the target is
    continuous, non-decreasing in cos, never above cos, and finite (and NaN-free) on all of [-1, 1].
    With exact_gradient=False (default, like insightface arcface_torch) autograd sees the margin as a constant
    offset on the target (d target/d cos = 1); exact_gradient=True differentiates through acos and cos.
    """

    eps = 1e-7

    def __init__(self, s: float = 64.0, m: float = 0.5, exact_gradient: bool = False) -> None:
        super().__init__(s)
        self.m = _check_finite("m", m)
        if not 0.0 <= self.m < math.pi:
            raise ValueError(f"arcface margin m must be in [0, pi), got {self.m}")
        self.exact_gradient = bool(exact_gradient)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        clamped = cos_target.clamp(-1.0 + self.eps, 1.0 - self.eps)
        angular = torch.cos(torch.acos(clamped) + self.m)
        # theta + m <= pi  <=>  cos >= cos(pi - m) = -cos(m)
        shifted = cos_target - (1.0 - math.cos(self.m))
        new = torch.where(cos_target >= -math.cos(self.m), angular, shifted)
        if self.exact_gradient:
            return new
        return cos_target + (new - cos_target).detach()

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, exact_gradient={self.exact_gradient}"


@register_loss("cosface")
class CosFace(MarginLoss):
    """CosFace, additive cosine margin: target logit s*(cos - m)."""

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s)
        self.m = _check_finite("m", m)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"
