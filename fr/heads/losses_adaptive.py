"""Margin losses with batch statistics: AdaFace, CurricularFace, MagFace (statistics from the global batch)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from fr.heads.margins import MarginContext, MarginLoss, arc_target, check_finite, register_loss


def _norms(ctx: MarginContext) -> torch.Tensor:
    if ctx.norms is None:
        raise ValueError("this loss needs ctx.norms (the gathered embedding norms); call it through PartialFC")
    return ctx.norms


@register_loss("adaface")
class AdaFace(MarginLoss):
    """AdaFace: margins scaled by the feature norm's position in an EMA of the batch norm statistics.

    z = clip(h * (n - mu) / (sigma + 1e-3), -1, 1) with n = clip(norm, 1e-3, 100) (no gradient);
    target logit s*(cos(clip(theta - m*z, 1e-3, pi - 1e-3)) - (m + m*z)), theta = acos(clamp(cos, +-(1-1e-3))),
    with gradient through acos. In training, mu and sigma (unbiased std) are updated first with momentum
    t_alpha from the norms of the whole gathered batch, so every rank holds the same values (buffers
    `batch_mean` = 20 and `batch_std` = 100 initially).
    """

    eps = 1e-3

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__(s)
        self.m, self.h, self.t_alpha = check_finite("m", m), check_finite("h", h), check_finite("t_alpha", t_alpha)
        if not 0.0 <= self.t_alpha <= 1.0:
            raise ValueError(f"t_alpha must be in [0, 1], got {self.t_alpha}")
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))
        self._scaler: Optional[torch.Tensor] = None

    def forward(
        self, cos_logits: torch.Tensor, labels: torch.Tensor, ctx: Optional[MarginContext] = None
    ) -> torch.Tensor:
        ctx = ctx if ctx is not None else MarginContext()
        norms = _norms(ctx).detach().float().clamp(0.001, 100.0)
        if self.training:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * norms.mean())
                std = norms.std() if norms.numel() > 1 else norms.new_zeros(())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        scaler = (norms - self.batch_mean) / (self.batch_std + self.eps)
        self._scaler = (scaler * self.h).clamp(-1.0, 1.0).unsqueeze(1)
        return super().forward(cos_logits, labels, ctx)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        theta = torch.acos(cos_target.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta_m = (theta - self.m * self._scaler).clamp(self.eps, math.pi - self.eps)
        return torch.cos(theta_m) - (self.m + self.m * self._scaler)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


@register_loss("curricular")
class CurricularFace(MarginLoss):
    """CurricularFace: ArcFace target (gradient through acos) plus re-weighted hard negatives.

    In training, t <- momentum * mean(target cos over the global batch) + (1 - momentum) * t first (t starts
    at 0, a buffer). Then every negative with cos_j > the row's margined target cos(theta_y + m) becomes
    cos_j * (t + cos_j); the comparison uses the global target cos, so it is the same on every rank
    whichever rank owns the target. Past theta + m = pi the target continues as in ArcFace.
    """

    needs_target_cos = True

    def __init__(self, s: float = 64.0, m: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__(s)
        self.m, self.momentum = check_finite("m", m), check_finite("momentum", momentum)
        if not 0.0 <= self.m < math.pi:
            raise ValueError(f"curricular margin m must be in [0, pi), got {self.m}")
        self.register_buffer("t", torch.tensor(0.0))

    def forward(
        self, cos_logits: torch.Tensor, labels: torch.Tensor, ctx: Optional[MarginContext] = None
    ) -> torch.Tensor:
        if ctx is None or ctx.target_cos is None:
            raise ValueError("curricular needs ctx.target_cos (the global target cosines); call it through PartialFC")
        target_all = ctx.target_cos.detach().float()
        if self.training:
            with torch.no_grad():
                self.t.mul_(1 - self.momentum).add_(self.momentum * target_all.mean())
        margined = arc_target(target_all, self.m).unsqueeze(1)
        hard = cos_logits.detach() > margined
        if cos_logits.shape[1]:
            # The target column is a positive, never a hard negative.
            cols, owned = labels.clamp(min=0).unsqueeze(1), (labels != -1).unsqueeze(1)
            is_target = torch.zeros_like(hard).scatter_(1, cols, owned)
            hard &= ~is_target
        reweighted = torch.where(hard, cos_logits * (self.t + cos_logits), cos_logits)
        # The base class then overwrites the target column with the margined target.
        return super().forward(reweighted, labels, ctx)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        return arc_target(cos_target, self.m)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, momentum={self.momentum}"


@register_loss("magface")
class MagFace(MarginLoss):
    """MagFace: ArcFace with margin m(a) growing linearly in the feature norm a, plus a norm regulariser.

    a = clamp(norm, l_a, u_a) (with gradient); m(a) = l_m + (u_m - l_m) * (a - l_a) / (u_a - l_a); target
    logit s*cos(theta + m(a)) with gradient through acos (continued past pi as in ArcFace). The loss adds
    lambda_g * mean over the global batch of g(a) = 1/a + a/u_a^2; its value is the same on every rank and
    its gradient is split 1/world_size per rank, because the gathered embeddings' gradients are summed.
    """

    def __init__(
        self,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
    ) -> None:
        super().__init__(s)
        self.l_a, self.u_a = check_finite("l_a", l_a), check_finite("u_a", u_a)
        self.l_m, self.u_m = check_finite("l_m", l_m), check_finite("u_m", u_m)
        self.lambda_g = check_finite("lambda_g", lambda_g)
        if not 0.0 < self.l_a < self.u_a:
            raise ValueError(f"magface needs 0 < l_a < u_a, got l_a={self.l_a}, u_a={self.u_a}")

    def clamped_norms(self, ctx: MarginContext) -> torch.Tensor:
        return _norms(ctx).float().clamp(self.l_a, self.u_a)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        a = self.clamped_norms(ctx).unsqueeze(1)
        margin = self.l_m + (self.u_m - self.l_m) * (a - self.l_a) / (self.u_a - self.l_a)
        return arc_target(cos_target, margin)

    def reduce(self, logits: torch.Tensor, local_target: torch.Tensor, ctx: MarginContext) -> torch.Tensor:
        a = self.clamped_norms(ctx)
        reg = (1.0 / a + a / self.u_a**2).mean()
        reg = reg.detach() + (reg - reg.detach()) / ctx.env.world_size
        return super().reduce(logits, local_target, ctx) + self.lambda_g * reg

    def extra_repr(self) -> str:
        return f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, lambda_g={self.lambda_g}"
