"""Tests for fr.heads: margins, the distributed softmax CE and Partial FC against a dense single-process reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fr.distributed import DistEnv, env_from_group
from fr.heads import (
    ArcFace,
    CosFace,
    DistributedSoftmaxCrossEntropy,
    PartialFC,
    build_loss,
    dist_softmax_cross_entropy,
    register_loss,
    shard_range,
)
from tests.helpers.partial_fc import (
    B_PER_RANK,
    EXACT_SETUPS,
    SAMPLED_CLASSES,
    SAMPLED_LABELS,
    D,
    check_against_dense,
    head_cases,
    results_per_rank,
    run_head,
)

MARGINS = {"arcface": {"s": 64.0, "m": 0.5}, "cosface": {"s": 64.0, "m": 0.4}}


# ----------------------------------------------------------------------------- independent dense reference


def reference_logits(cos: torch.Tensor, labels: torch.Tensor, name: str, s: float, m: float) -> torch.Tensor:
    """Margin written out by hand: arcface cos(theta+m) up to theta = pi - m, then cos - (1 - cos m)."""
    onehot = F.one_hot(labels, cos.shape[1]).bool()
    if name == "cosface":
        target = cos - m
    else:
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        value = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - (1 - math.cos(m)))
        target = cos + (value - cos).detach()  # the margin is a constant offset for the gradient
    return s * torch.where(onehot, target, cos)


def dense_reference(embeddings, weight, labels, name):
    """Loss and gradients of the whole problem on one process in float64 with plain autograd."""
    emb = embeddings.double().requires_grad_(True)
    w = weight.double().requires_grad_(True)
    cos = F.normalize(emb) @ F.normalize(w).t()
    loss = F.cross_entropy(reference_logits(cos, labels, name, **MARGINS[name]), labels)
    loss.backward()
    return loss.item(), emb.grad, w.grad


# ----------------------------------------------------------------------------- workers (module level: picklable)


def _run_case(rank, name, num_classes, labels, sample_rate, seed=0, steps=1):
    return run_head(rank, build_loss(name, **MARGINS[name]), num_classes, labels, sample_rate, steps=steps, seed=seed)


def _worker_cases(rank, world_size):
    return [_run_case(rank, *case) for case in head_cases(MARGINS, world_size)]


def _worker_sampling(rank, world_size):
    labels = SAMPLED_LABELS[: world_size * B_PER_RANK]
    first = _run_case(rank, "cosface", SAMPLED_CLASSES, labels, 0.3, seed=5)
    again = _run_case(rank, "cosface", SAMPLED_CLASSES, labels, 0.3, seed=5)
    other_seed = _run_case(rank, "cosface", SAMPLED_CLASSES, labels, 0.3, seed=6)
    second_step = _run_case(rank, "cosface", SAMPLED_CLASSES, labels, 0.3, seed=5, steps=2)
    # A fresh head that loads the state after one step must draw what the original draws at step two.
    env = env_from_group()
    resumed = PartialFC(CosFace(), D, SAMPLED_CLASSES, sample_rate=0.3, env=env, seed=5)
    resumed.load_state_dict(first["state"])
    resumed(first["emb"], torch.tensor(labels[rank * B_PER_RANK : (rank + 1) * B_PER_RANK]))
    return {
        "first": first["sampled"],
        "again": again["sampled"],
        "first_loss": first["loss"],
        "again_loss": again["loss"],
        "other_seed": other_seed["sampled"],
        "second": second_step["sampled"],
        "resumed": resumed.last_sampled,
        "num_sample": first["num_sample"],
    }


def _worker_misc(rank, world_size):
    """Several small two-rank checks in one process group, to pay for one spawn."""
    return {
        "sampling": _worker_sampling(rank, world_size),
        "objective": _worker_objective(rank, world_size),
        "bad_batches": _worker_bad_batches(rank, world_size),
    }


def _worker_objective(rank, world_size):
    """Sharded DistributedSoftmaxCrossEntropy on uneven column slices of one dense logit matrix."""
    env = env_from_group()
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 30
    targets = torch.tensor([0, 10, 5, 6, 5, 2])
    start, num_local = shard_range(11, world_size, rank)
    local = logits[:, start : start + num_local].float().requires_grad_(True)
    in_shard = (targets >= start) & (targets < start + num_local)
    loss = dist_softmax_cross_entropy(local, torch.where(in_shard, targets - start, -1), env)
    loss.backward()
    return {"loss": loss.item(), "grad": local.grad, "start": start, "num_local": num_local}


def _worker_bad_batches(rank, world_size):
    env = env_from_group()
    errors = {}
    for case, (b, label) in {"size": (4 - rank, 0), "range": (4, 11 * rank)}.items():
        head = PartialFC(CosFace(), D, 11, env=env)
        try:
            head(torch.randn(b, D), torch.full((b,), label))
        except ValueError as exc:
            errors[case] = str(exc)
    return errors


# ----------------------------------------------------------------------------- tests


def _check_against_dense(results, labels, name, where):
    """Loss and per-rank gradient slices equal the dense reference over the (sampled) classes."""
    check_against_dense(results, labels, lambda e, w, t: dense_reference(e, w, t, name), where, B_PER_RANK)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_partial_fc_matches_dense_reference(world_size):
    results = results_per_rank(_worker_cases, world_size)
    shards = [(r[0]["class_start"], r[0]["num_local"]) for r in results]
    num_classes = EXACT_SETUPS[world_size][0]
    assert shards == [shard_range(num_classes, world_size, rank) for rank in range(world_size)]
    if world_size == 3:
        assert [n for _, n in shards] == [4, 3, 3]
    for index, (name, _, labels, rate) in enumerate(head_cases(MARGINS, world_size)):
        per_rank = [r[index] for r in results]
        if rate < 1:
            # the sampled cases must really drop classes on some rank
            assert any(len(r["sampled"]) < r["num_local"] for r in per_rank)
            for r in per_rank:
                untouched = torch.ones(r["num_local"], dtype=torch.bool)
                untouched[r["sampled"]] = False
                assert (r["weight_grad"][untouched] == 0).all()
        _check_against_dense(per_rank, labels, name, f"{name} world={world_size} sample_rate={rate}")


@pytest.fixture(scope="module")
def two_rank_misc(run_distributed):
    return run_distributed(_worker_misc, 2)


def test_sampling_keeps_positives_and_is_reproducible(two_rank_misc):
    world_size = 2
    results = [r["sampling"] for r in two_rank_misc]
    labels = torch.tensor(SAMPLED_LABELS[: world_size * B_PER_RANK])
    for rank, r in enumerate(results):
        start, num_local = shard_range(SAMPLED_CLASSES, world_size, rank)
        positives = set((labels[(labels >= start) & (labels < start + num_local)] - start).tolist())
        sampled = r["first"].tolist()
        assert positives <= set(sampled)
        assert sampled == sorted(set(sampled))
        assert len(sampled) == max(r["num_sample"], len(positives))
        assert torch.equal(r["first"], r["again"]) and r["first_loss"] == r["again_loss"]
        assert torch.equal(r["second"], r["resumed"])
        if len(sampled) - len(positives) >= 3:  # enough random negatives that a repeat would be a bug
            assert not torch.equal(r["first"], r["other_seed"])
            assert not torch.equal(r["first"], r["second"])
    assert not torch.equal(results[0]["first"], results[1]["first"])


def test_distributed_softmax_ce_matches_dense(two_rank_misc):
    results = [r["objective"] for r in two_rank_misc]
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(6, 11, generator=gen, dtype=torch.float64) * 30).float().requires_grad_(True)
    targets = torch.tensor([0, 10, 5, 6, 5, 2])
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    for r in results:
        assert r["loss"] == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(r["grad"], logits.grad[:, r["start"] : r["start"] + r["num_local"]])


def test_mismatched_batches_raise_on_every_rank(two_rank_misc):
    for errors in [r["bad_batches"] for r in two_rank_misc]:
        assert "same number of embeddings" in errors["size"]
        assert "num_classes=11" in errors["range"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_softmax_ce_single_process_any_dtype(dtype):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 7, generator=gen) * 20).to(dtype).requires_grad_(True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    loss = DistributedSoftmaxCrossEntropy.apply(logits, targets, DistEnv())
    loss.backward()
    exact = logits.detach().double().requires_grad_(True)
    expected = F.cross_entropy(exact, targets)
    expected.backward()
    assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(logits.grad.double(), exact.grad, rtol=tol, atol=tol)


def test_loss_is_not_clamped():
    logits = torch.tensor([[0.0, 200.0, -5.0]], requires_grad=True)
    loss = dist_softmax_cross_entropy(logits, torch.tensor([0]), DistEnv())
    assert loss.item() == pytest.approx(200.0, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[-1.0, 1.0, 0.0]]))

    # Through Partial FC: the embedding is opposite its own class centre and equal to another's.
    head = PartialFC(CosFace(s=64.0, m=0.4), 2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    loss = head(torch.tensor([[-3.0, 0.0]]), torch.tensor([0]))
    exact = F.cross_entropy(torch.tensor([[64.0 * (-1 - 0.4), 64.0]], dtype=torch.float64), torch.tensor([0]))
    assert exact.item() > 69.08
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


@pytest.mark.parametrize(
    "loss", [ArcFace(), ArcFace(exact_gradient=True), CosFace()], ids=["arcface", "arcface_exact_gradient", "cosface"]
)
def test_no_nan_at_cos_plus_minus_one(loss):
    head = PartialFC(loss, 3, 3, sample_rate=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3) * 0.01)
    # rows: exactly on its class centre (cos = +1), exactly opposite (cos = -1), both against other classes too
    emb = torch.tensor([[2.0, 0.0, 0.0], [0.0, -5.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], requires_grad=True)
    out = head(emb, torch.tensor([0, 1, 2, 0]))
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    cos = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    logits = loss(cos, torch.tensor([0, 0]))
    assert torch.isfinite(logits).all()


def test_arcface_target_is_continuous_monotone_and_penalising():
    for m in (0.2, 0.5, 1.0, 2.5):
        arc = ArcFace(s=1.0, m=m)
        cos = torch.linspace(-1, 1, 20001, dtype=torch.float64)
        target = arc.target_logit(cos)
        steps = target.diff()
        assert torch.isfinite(target).all()
        assert (steps >= -1e-12).all(), f"m={m}: not monotone"
        joint = -math.cos(m)  # where theta + m = pi and the rule switches branch
        below, above = arc.target_logit(torch.tensor([joint - 1e-9, joint + 1e-9], dtype=torch.float64))
        assert above.item() == pytest.approx(-1.0, abs=1e-6) and below.item() == pytest.approx(-1.0, abs=1e-6)
        assert (target <= cos + 1e-12).all(), f"m={m}: margin rewards the target"
        assert target[-1].item() == pytest.approx(math.cos(m), abs=1e-3)
        assert target[0].item() == pytest.approx(-2 + math.cos(m), abs=1e-9)


def test_arcface_exact_gradient_matches_autograd_of_formula():
    cos = torch.tensor([[0.3, -0.2], [0.9, 0.1], [-0.95, 0.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0])
    ArcFace(s=2.0, m=0.5, exact_gradient=True)(cos, labels).sum().backward()
    c = cos.detach()[:, 0]
    # d/dc cos(acos c + m) = cos m + sin m * c / sqrt(1 - c^2), on the angular branch (c >= -cos m)
    angular = math.cos(0.5) + math.sin(0.5) * c / torch.sqrt(1 - c * c)
    expected = torch.where(c >= -math.cos(0.5), angular, torch.ones_like(c)) * 2.0
    torch.testing.assert_close(cos.grad[:, 0], expected)
    torch.testing.assert_close(cos.grad[:, 1], torch.full((3,), 2.0, dtype=torch.float64))


def test_rows_without_local_target_are_only_scaled():
    cos = torch.tensor([[0.5, 0.1], [0.2, 0.3]])
    for loss in (ArcFace(s=10.0), CosFace(s=10.0)):
        out = loss(cos, torch.tensor([-1, 1]))
        torch.testing.assert_close(out[0], cos[0] * 10)
        assert out[1, 0].item() == pytest.approx(2.0)
        assert out[1, 1].item() < 3.0


def test_build_loss():
    assert isinstance(build_loss("arcface", s=30.0, m=0.3), ArcFace)
    assert build_loss("cosface").m == 0.4
    with pytest.raises(
        ValueError,
        match=r"unknown margin loss 'arcfce' \(did you mean 'arcface'.*\?\); accepted: "
        r"adaface, arcface, combined, cosface, curricular, elastic_arc, elastic_cos, magface, sface$",
    ):
        build_loss("arcfce")
    with pytest.raises(ValueError, match=r"has no parameter 'scale'.*accepted: s, m, exact_gradient"):
        build_loss("arcface", scale=64.0)
    with pytest.raises(ValueError, match=r"did you mean 'm'"):
        build_loss("cosface", mm=0.3)
    with pytest.raises(ValueError) as info:
        build_loss("nope")
    assert "\n" not in str(info.value) and "arcface" in str(info.value)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("arcface")(CosFace)
    with pytest.raises(ValueError, match="m must be in"):
        ArcFace(m=4.0)
    with pytest.raises(ValueError, match="s must be positive"):
        CosFace(s=0.0)


def test_partial_fc_construction():
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [shard_range(12, 4, r) for r in range(4)] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    head = PartialFC(ArcFace(), 16, 10, sample_rate=0.5, env=DistEnv(rank=1, world_size=3))
    assert (head.class_start, head.num_local, head.weight.shape) == (4, 3, (3, 16))
    assert "classes=[4, 7)" in repr(head)
    std = PartialFC(CosFace(), 64, 1000).weight.std().item()
    assert std == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcFace(), 8, 10, sample_rate=0.0)
    with pytest.raises(ValueError, match="world size"):
        PartialFC(ArcFace(), 8, 2, env=DistEnv(rank=0, world_size=3))
    with pytest.raises(ValueError, match=r"shape \[batch, 8\]"):
        PartialFC(ArcFace(), 8, 10)(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
