"""Fused cosine logits + target margin + scale + distributed softmax cross entropy, on one [B, k] buffer."""

from __future__ import annotations

from typing import Callable

import torch

from fr.distributed import DistEnv, all_reduce

TargetFn = Callable[[torch.Tensor], torch.Tensor]


class FusedMarginSoftmaxCE(torch.autograd.Function):
    """apply(unit_embeddings [B, D], weight [k, D], local_target [B], target_fn, s, env) -> mean loss.

    Equals `DistributedSoftmaxCrossEntropy(MarginLoss.forward(CosineLogits(e, w)))` for a margin that only
    changes the target cosine, new = target_fn(cos_target) (elementwise, differentiable), with every logit
    scaled by s; k > 0, computed in the inputs' dtype (PartialFC uses it for fp32 only). The [B, k]
    cosines become logits, then softmax probabilities, then the gradient, in place in one buffer: at
    k = 100k and B = 256 each extra elementwise pass or temporary over it is a large share of the step.
    The cosines are not kept; backward gets sum_b G*cos per centre from the [k, D] weight gradient itself:
    with M = (G/|w|).T @ e, grad_w = M - w * (w . M) / |w|^2. Backward consumes the saved buffer, so it
    can run only once per forward.
    """

    @staticmethod
    def forward(
        ctx,
        embeddings: torch.Tensor,
        weight: torch.Tensor,
        local_target: torch.Tensor,
        target_fn: TargetFn,
        s: float,
        env: DistEnv,
    ) -> torch.Tensor:
        inv_norm = weight.norm(dim=1).clamp_min_(1e-12).reciprocal_()
        x = embeddings @ weight.t()
        x.mul_(inv_norm)
        owned = local_target != -1
        col = local_target.clamp(min=0).unsqueeze(1)
        cos_target = x.gather(1, col)
        # The margin's value and slope on [B, 1] only; autograd on this small tensor keeps any margin exact.
        with torch.enable_grad():
            probe = cos_target.detach().requires_grad_(True)
            new = target_fn(probe)
            (slope,) = torch.autograd.grad(new.sum(), probe)
        new = torch.where(owned.unsqueeze(1), new.detach(), cos_target)
        x.scatter_(1, col, new).mul_(s)
        row_max = x.amax(dim=1)
        target = torch.where(owned, x.gather(1, col).squeeze(1), x.new_zeros(()))
        all_reduce(row_max, env, op="max")
        x.sub_(row_max.unsqueeze(1)).exp_()
        # One collective for both per-row sums: the local exp-sum and the target logit only its owner knows.
        sums = torch.stack([x.sum(dim=1), target])
        all_reduce(sums, env, op="sum")
        sum_exp, target = sums[0], sums[1]
        loss = (row_max + sum_exp.log() - target).mean()
        x.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(embeddings, weight, inv_norm, x, col, owned, slope)
        ctx.s = s
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("FusedMarginSoftmaxCE backward consumes its buffer and cannot run twice")
        ctx.used = True
        embeddings, weight, inv_norm, probs, col, owned, slope = ctx.saved_tensors
        scale = grad_loss.to(probs.dtype) * ctx.s / probs.shape[0]
        # In place: G/|w| = scale * (p - onehot * ...) / |w|; the target column is fixed up on [B, 1].
        grad = probs.mul_(inv_norm * scale)
        fixed = (grad.gather(1, col) - scale * inv_norm[col]) * slope
        grad.scatter_(1, col, torch.where(owned.unsqueeze(1), fixed, grad.gather(1, col)))
        grad_emb = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_emb = grad @ weight
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t() @ embeddings
            coef = torch.bmm(grad_weight.unsqueeze(1), weight.unsqueeze(2)).view(-1).mul_(inv_norm * inv_norm)
            grad_weight.addcmul_(weight, coef.unsqueeze(1), value=-1.0)
        return grad_emb, grad_weight, None, None, None, None


def fused_margin_softmax_ce(
    unit_embeddings: torch.Tensor,
    weight: torch.Tensor,
    local_target: torch.Tensor,
    target_fn: TargetFn,
    s: float,
    env: DistEnv,
) -> torch.Tensor:
    """Functional form of `FusedMarginSoftmaxCE`."""
    return FusedMarginSoftmaxCE.apply(unit_embeddings, weight, local_target, target_fn, s, env)
