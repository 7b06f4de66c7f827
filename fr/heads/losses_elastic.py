"""ElasticFace: ArcFace/CosFace with a per-sample margin drawn from N(m, sigma) every step, and the "+" variants."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from fr.heads.margins import MarginContext, MarginLoss, arc_target, check_finite, register_loss
from fr.seeding import mix_seed


class ElasticMargin(MarginLoss):
    """Shared machinery: per-row margins for the global batch, identical on every rank.

    Each training forward draws B margins from N(m, sigma) with a CPU generator seeded by (seed, step), so
    every rank draws the same numbers (the step counter is in the state dict). With plus=True the drawn
    margins are sorted and assigned by rank of the row's global target cos: the largest target cos gets
    the smallest margin. In eval mode every row gets m. `last_margins` holds the [B] margins last used.
    """

    default_plus_sigma = 0.0

    def __init__(self, s: float, m: float, sigma: Optional[float], plus: bool, seed: int) -> None:
        super().__init__(s)
        self.m = check_finite("m", m)
        self.plus = bool(plus)
        if sigma is None:
            sigma = self.default_plus_sigma if self.plus else 0.05
        self.sigma = check_finite("sigma", sigma)
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        self.seed = int(seed)
        self.step = 0
        self.last_margins: Optional[torch.Tensor] = None
        self._margins: Optional[torch.Tensor] = None

    @property
    def needs_target_cos(self) -> bool:  # type: ignore[override]
        return self.plus

    def draw(self, batch: int, ctx: MarginContext, device: torch.device) -> torch.Tensor:
        """[B] margins for this step."""
        if not self.training:
            return torch.full((batch,), self.m, device=device)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.step))
        self.step += 1
        margins = torch.randn(batch, generator=generator, dtype=torch.float64) * self.sigma + self.m
        if self.plus:
            if ctx.target_cos is None:
                raise ValueError("plus=True needs ctx.target_cos (the global target cosines)")
            # Stable sorts keep ties deterministic and identical on every rank.
            order = torch.sort(ctx.target_cos.detach().double().cpu(), descending=True, stable=True).indices
            assigned = torch.empty_like(margins)
            assigned[order] = torch.sort(margins, stable=True).values
            margins = assigned
        return margins.float().to(device)

    def forward(
        self, cos_logits: torch.Tensor, labels: torch.Tensor, ctx: Optional[MarginContext] = None
    ) -> torch.Tensor:
        ctx = ctx if ctx is not None else MarginContext()
        self._margins = self.draw(cos_logits.shape[0], ctx, cos_logits.device)
        self.last_margins = self._margins
        return super().forward(cos_logits, labels, ctx)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"step": self.step}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, sigma={self.sigma}, plus={self.plus}, seed={self.seed}"


@register_loss("elastic_arc")
class ElasticArcFace(ElasticMargin):
    """ElasticArcFace: target logit s*cos(theta + m_i), m_i ~ N(m, sigma); gradient through acos.

    Defaults m=0.5, sigma=0.05; sigma=None with plus=True gives the "+" default 0.0175. Beyond
    theta + m_i = pi the target continues as in ArcFace (`arc_target`).
    """

    default_plus_sigma = 0.0175

    def __init__(
        self, s: float = 64.0, m: float = 0.5, sigma: Optional[float] = None, plus: bool = False, seed: int = 0
    ) -> None:
        super().__init__(s, m, sigma, plus, seed)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        return arc_target(cos_target, self._margins.unsqueeze(1))


@register_loss("elastic_cos")
class ElasticCosFace(ElasticMargin):
    """ElasticCosFace: target logit s*(cos - m_i), m_i ~ N(m, sigma). Defaults m=0.35, sigma=0.05 ("+": 0.02)."""

    default_plus_sigma = 0.02

    def __init__(
        self, s: float = 64.0, m: float = 0.35, sigma: Optional[float] = None, plus: bool = False, seed: int = 0
    ) -> None:
        super().__init__(s, m, sigma, plus, seed)

    def target_logit(self, cos_target: torch.Tensor, ctx: Optional[MarginContext] = None) -> torch.Tensor:
        return cos_target - self._margins.unsqueeze(1)
