"""SFace: sigmoid-constrained hypersphere loss (its own objective, not a softmax)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from fr.heads.margins import MarginContext, MarginLoss, check_finite, register_loss
from fr.heads.objectives import dist_sface_loss


@register_loss("sface")
class SFace(MarginLoss):
    """SFace (s=64, k=80, a=0.8, b=1.23): logits are s*cos; the loss is `objectives.dist_sface_loss`.

    `last_stats` holds the last step's intra and inter terms and mean cos_y / cos_j (same on every rank).
    """

    objective = "sface"

    def __init__(self, s: float = 64.0, k: float = 80.0, a: float = 0.8, b: float = 1.23) -> None:
        super().__init__(s)
        self.k, self.a, self.b = check_finite("k", k), check_finite("a", a), check_finite("b", b)
        self.last_stats: Optional[Dict[str, float]] = None

    def forward(
        self, cos_logits: torch.Tensor, labels: torch.Tensor, ctx: Optional[MarginContext] = None
    ) -> torch.Tensor:
        return cos_logits * self.s

    def reduce(self, logits: torch.Tensor, local_target: torch.Tensor, ctx: MarginContext) -> torch.Tensor:
        loss, self.last_stats = dist_sface_loss(logits, local_target, ctx.env, self.s, self.k, self.a, self.b)
        return loss

    def extra_repr(self) -> str:
        return f"s={self.s}, k={self.k}, a={self.a}, b={self.b}"
