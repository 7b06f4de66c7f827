"""Distributed reductions over class-sharded logits (softmax cross entropy, SFace), looked up by name."""

from __future__ import annotations

from typing import Callable

import torch

from fr.distributed import DistEnv, all_reduce
from fr.registry import Registry

Objective = Callable[[torch.Tensor, torch.Tensor, DistEnv], torch.Tensor]
OBJECTIVES = Registry("objective")
# Decorator: make `fn(logits, local_target, env) -> loss` available as `get_objective(name)`.
register_objective = OBJECTIVES.register
get_objective = OBJECTIVES.get


class DistributedSoftmaxCrossEntropy(torch.autograd.Function):
    """Mean softmax cross entropy over the global batch when each rank holds a contiguous slice of the classes.

    apply(logits [B, C_local], local_target [B] int64, env) -> fp32 scalar, the same on every rank.
    Every rank sees the same B rows (the gathered global batch); local_target is the target's column in
    this rank's slice, or -1 when another rank owns it, and each row's target must be owned by exactly one
    rank. Computed in fp32 and in log space, loss = max + log(sum exp(logit - max)) - target, with no
    probability clamp, so a sample whose target trails by 200 reports ~200. Backward gives the local
    columns (softmax - onehot) / B, in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_target: torch.Tensor, env: DistEnv) -> torch.Tensor:
        x = logits.float()
        batch, num_local = x.shape
        owned = local_target != -1
        if num_local:
            row_max = x.amax(dim=1)
            col = local_target.clamp(min=0).unsqueeze(1)
            target = torch.where(owned, x.gather(1, col).squeeze(1), x.new_zeros(()))
        else:
            row_max = x.new_full((batch,), float("-inf"))
            col = local_target.new_zeros((batch, 1))
            target = x.new_zeros((batch,))
        all_reduce(row_max, env, op="max")
        probs = (x - row_max.unsqueeze(1)).exp_()
        # One collective for both per-row sums: the local exp-sum and the target logit only its owner knows.
        sums = torch.stack([probs.sum(dim=1), target])
        all_reduce(sums, env, op="sum")
        sum_exp, target = sums[0], sums[1]
        loss = (row_max + sum_exp.log() - target).mean()
        probs.div_(sum_exp.unsqueeze(1))
        ctx.save_for_backward(probs, col, owned)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        probs, col, owned = ctx.saved_tensors
        scale = grad_loss / probs.shape[0]
        # Out of place so a retained graph can run backward again; costs one [B, C_local] buffer.
        grad = probs * scale
        if probs.shape[1]:
            grad.scatter_add_(1, col, (-scale * owned.to(grad.dtype)).unsqueeze(1))
        return grad.to(ctx.logits_dtype), None, None


@register_objective("softmax_ce")
def dist_softmax_cross_entropy(logits: torch.Tensor, local_target: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Functional form of `DistributedSoftmaxCrossEntropy`."""
    return DistributedSoftmaxCrossEntropy.apply(logits, local_target, env)


@register_objective("sface")
def dist_sface_loss(
    logits: torch.Tensor,
    local_target: torch.Tensor,
    env: DistEnv,
    s: float = 64.0,
    k: float = 80.0,
    a: float = 0.8,
    b: float = 1.23,
) -> tuple:
    """SFace over class shards: (loss, stats), both identical on every rank.

    logits = s*cos [B, C_local]. loss = mean_i[-r_intra_i * s*cos_y_i] + mean_i[sum_{j != y_i} r_inter_ij * s*cos_ij]
    with r_intra = sigmoid(k*(theta_y - a)) and r_inter = sigmoid(-k*(theta_j - b)) computed without gradient.
    The intra term comes from the rank owning the target, the inter partial sums from every rank; one
    all-reduce sums them. The returned loss carries only this rank's gradient, which is exact because the
    gathered embeddings' gradients are summed over ranks. stats: intra, inter (the two means), cos_y and
    cos_j (mean target / non-target cosine over the global batch and the classes in play).
    """
    x = logits.float()
    batch, num_local = x.shape
    owned = local_target != -1
    cos = x / s
    with torch.no_grad():
        weights = torch.sigmoid(-k * (torch.acos(cos.clamp(-1.0, 1.0)) - b))
    negative = torch.ones_like(x, dtype=torch.bool)
    if num_local:
        col = local_target.clamp(min=0).unsqueeze(1)
        negative.scatter_(1, col, ~owned.unsqueeze(1))
        target = torch.where(owned, x.gather(1, col).squeeze(1), x.new_zeros(()))
    else:
        target = x.new_zeros((batch,))
    with torch.no_grad():
        weight_y = torch.sigmoid(k * (torch.acos((target / s).clamp(-1.0, 1.0)) - a))
    intra = torch.where(owned, -weight_y * target, x.new_zeros(())).sum() / batch
    inter = (weights * negative * x).sum() / batch
    local = intra + inter
    with torch.no_grad():
        sums = torch.stack(
            [local, intra, inter, (target / s).sum(), (cos * negative).sum(), negative.sum().to(x.dtype)]
        )
    all_reduce(sums, env, op="sum")
    loss = local + (sums[0] - local).detach()
    stats = {
        "intra": sums[1].item(),
        "inter": sums[2].item(),
        "cos_y": sums[3].item() / batch,
        "cos_j": sums[4].item() / max(sums[5].item(), 1.0),
    }
    return loss, stats
