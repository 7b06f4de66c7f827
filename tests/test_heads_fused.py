"""The fused margin + softmax CE function against plain autograd through the unfused modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fr.distributed import DistEnv
from fr.heads import (
    ArcFace,
    CombinedMargin,
    CosFace,
    MarginLoss,
    PartialFC,
    available_losses,
    build_loss,
    dist_softmax_cross_entropy,
)
from fr.heads.cosine import cosine_logits
from fr.heads.fused import fused_margin_softmax_ce

LOSSES = [ArcFace(), ArcFace(exact_gradient=True), CosFace(), CombinedMargin(m1=1.2, exact_gradient=True)]


def _inputs(seed, b=6, k=9, d=5, double=False):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    emb = torch.randn(b, d, generator=gen, dtype=dtype, requires_grad=True)
    weight = (torch.randn(k, d, generator=gen, dtype=dtype) * 0.1).requires_grad_(True)
    # -1 marks rows whose target another shard owns; repeats exercise the shared-column gradient.
    target = torch.tensor([3, -1, 0, 3, k - 1, -1][:b])
    return emb, weight, target


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_fused_matches_plain_autograd(loss):
    env = DistEnv()
    emb, weight, target = _inputs(0)
    plain = dist_softmax_cross_entropy(loss(cosine_logits(F.normalize(emb), weight), target), target, env)
    plain_grads = torch.autograd.grad(plain, [emb, weight])
    fused = fused_margin_softmax_ce(F.normalize(emb), weight, target, loss.target_logit, loss.s, env)
    fused_grads = torch.autograd.grad(fused, [emb, weight])
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_fused_exact_in_double_and_backward_runs_once():
    loss, env = ArcFace(s=4.0), DistEnv()
    emb, weight, target = _inputs(1, double=True)
    # Plain autograd in float64, written out: normalised centres, margin on owned targets, log-sum-exp.
    cos = F.normalize(emb) @ F.normalize(weight).t()
    owned = (target != -1).unsqueeze(1)
    onehot = F.one_hot(target.clamp(min=0), cos.shape[1]).bool() & owned
    logits = loss.s * torch.where(onehot, loss.target_logit(cos), cos)
    target_logit = torch.where(owned.squeeze(1), logits.gather(1, target.clamp(min=0).unsqueeze(1)).squeeze(1), 0.0)
    plain = (logits.logsumexp(dim=1) - target_logit).mean()
    plain_grads = torch.autograd.grad(plain, [emb, weight])
    fused = fused_margin_softmax_ce(F.normalize(emb), weight, target, loss.target_logit, loss.s, env)
    fused_grads = torch.autograd.grad(fused, [emb, weight], retain_graph=True)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(fused_grads, plain_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        fused.backward()


def test_partial_fc_fused_path_equals_unfused():
    torch.manual_seed(0)
    emb = torch.randn(8, 16, requires_grad=True)
    labels = torch.randint(0, 50, (8,))
    heads = [PartialFC(ArcFace(), 16, 50, sample_rate=0.5, seed=1) for _ in range(2)]
    # The filter at a threshold no cosine reaches changes nothing but forces the unfused path.
    heads[1].interclass_filtering_threshold = 0.999
    losses, grads = [], []
    for head in heads:
        loss = head(emb, labels)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [emb, head.weight]))
    assert heads[0]._fusable(emb, heads[0].weight) and not heads[1]._fusable(emb, heads[1].weight)
    torch.testing.assert_close(losses[0], losses[1])
    for got, want in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


class _Shifted(MarginLoss):
    """A margin outside fr that declares the fused path: target cos - 0.2."""

    fused_margin = True

    def target_logit(self, cos_target, ctx=None):
        return cos_target - 0.2


class _ArcFaceReadingContext(ArcFace):
    """An ArcFace subclass whose target reads ctx, which the fused path does not pass: it must not inherit it."""

    def target_logit(self, cos_target, ctx=None):
        return super().target_logit(cos_target, ctx) + 0.0 * ctx.norms.mean()


def test_fused_path_is_declared_per_margin_class():
    emb = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 9, 3, 1, 7])
    heads = {name: PartialFC(build_loss(name), 8, 10) for name in available_losses()}
    fused = {name for name, head in heads.items() if head._fusable(emb, head.weight)}
    assert fused == {"arcface", "cosface", "combined"}
    inherited = PartialFC(_ArcFaceReadingContext(s=8.0), 8, 10)
    assert not inherited._fusable(emb, inherited.weight)
    assert torch.isfinite(inherited(emb, labels))

    heads = [PartialFC(_Shifted(s=8.0), 8, 10, seed=2) for _ in range(2)]
    heads[1].interclass_filtering_threshold = 0.999  # forces the general path, changes nothing else
    fused_loss, plain_loss = (head(emb, labels) for head in heads)
    torch.testing.assert_close(fused_loss, plain_loss)
    fused_loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):  # only the fused function refuses this
        fused_loss.backward()


def test_partial_fc_takes_margin_losses_only():
    with pytest.raises(TypeError, match="margin_loss must be a fr.heads.MarginLoss, got Identity"):
        PartialFC(torch.nn.Identity(), 8, 10)
