"""Cosine logits between normalised embeddings and (unnormalised) class centres, with a hand-written backward."""

from __future__ import annotations

import torch


class CosineLogits(torch.autograd.Function):
    """apply(unit_embeddings [B, D], weight [k, D]) -> fp32 cos [B, k] = (e @ w.T) / |w|.

    The centres are never normalised as a [k, D] tensor: the product is scaled by the inverse row norms,
    and backward writes the weight gradient in one pass,
    grad_w = (G/|w|).T @ e - w * (sum_b G*cos) / |w|^2, instead of autograd's chain through the norm
    (with k in the millions, each [k, D] pass saved is a large share of the step). The matmuls run in the
    dtype autocast picks for the forward; everything else in fp32. Norms are clamped at 1e-12.
    """

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        inv_norm = weight.float().norm(dim=1).clamp_min(1e-12).reciprocal()
        raw = embeddings @ weight.t()
        cos = raw.float() * inv_norm
        ctx.save_for_backward(embeddings, weight, inv_norm, cos)
        ctx.mm_dtype = raw.dtype
        return cos

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        embeddings, weight, inv_norm, cos = ctx.saved_tensors
        grad = grad.float()
        scaled = (grad * inv_norm).to(ctx.mm_dtype)
        grad_emb = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_emb = (scaled @ weight.to(ctx.mm_dtype)).to(embeddings.dtype)
        if ctx.needs_input_grad[1]:
            coef = (grad * cos).sum(dim=0).mul_(inv_norm * inv_norm)
            grad_weight = (scaled.t() @ embeddings.to(ctx.mm_dtype)).float()
            grad_weight.addcmul_(weight.float(), coef.unsqueeze(1), value=-1.0)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_emb, grad_weight


def cosine_logits(unit_embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Functional form of `CosineLogits`."""
    return CosineLogits.apply(unit_embeddings, weight)
