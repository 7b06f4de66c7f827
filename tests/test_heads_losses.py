"""Every margin loss through Partial FC (world sizes 1-3, sampled or not) against a dense float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fr.heads import MarginContext, PartialFC, build_loss
from tests.helpers.partial_fc import B_PER_RANK, check_against_dense, head_cases, results_per_rank, run_head

EMB_SCALE = 20.0  # norms around 55: inside MagFace's [10, 110] and away from AdaFace's initial mean
# case id -> (loss name, loss params, PartialFC keywords)
LOSS_CASES = {
    "combined": ("combined", {}, {}),
    "combined_sphere": ("combined", {"m1": 1.35, "m2": 0.1, "m3": 0.15, "exact_gradient": True}, {}),
    "elastic_arc": ("elastic_arc", {"sigma": 0.05, "seed": 3}, {}),
    "elastic_cos": ("elastic_cos", {"seed": 4}, {}),
    "elastic_arc_plus": ("elastic_arc", {"plus": True, "sigma": 0.2}, {}),
    "elastic_cos_plus": ("elastic_cos", {"plus": True, "sigma": 0.2}, {}),
    "sface": ("sface", {}, {}),
    "adaface": ("adaface", {}, {}),
    "curricular": ("curricular", {"m": 0.2}, {}),
    "magface": ("magface", {}, {}),
    "cosface_filter": ("cosface", {}, {"interclass_filtering_threshold": 0.3}),
    "arcface_sparse": ("arcface", {}, {"update": "sparse"}),
}


# ----------------------------------------------------------------------------- independent dense reference


def _arc(cos, theta, m):
    """cos(theta + m) while theta + m <= pi, then cos - (1 - cos m)."""
    m = torch.as_tensor(m, dtype=cos.dtype)
    return torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - (1 - torch.cos(m)))


def reference_loss(case, emb, w, labels, out):
    """The whole problem's loss on one process in float64 with plain autograd (emb, w are leaves)."""
    name, params, head_kw = LOSS_CASES[case]
    onehot = F.one_hot(labels, w.shape[0]).bool()
    cos = F.normalize(emb) @ F.normalize(w).t()
    cos_y = cos.gather(1, labels[:, None])
    theta_y = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
    s = 64.0
    if name == "sface":
        with torch.no_grad():
            r_intra = torch.sigmoid(80 * (torch.acos(cos_y) - 0.8))
            r_inter = torch.sigmoid(-80 * (torch.acos(cos.clamp(-1, 1)) - 1.23))
        intra = (-r_intra * s * cos_y).mean()
        inter = (r_inter * s * cos).masked_fill(onehot, 0).sum(1).mean()
        return intra + inter
    others = cos
    extra = 0.0
    if name == "combined":
        m1, m2, m3 = params.get("m1", 1.0), params.get("m2", 0.3), params.get("m3", 0.2)
        c0 = math.cos((math.pi - m2) / m1) if (math.pi - m2) / m1 < math.pi else -2.0
        value = torch.where(m1 * theta_y + m2 <= math.pi, torch.cos(m1 * theta_y + m2) - m3, cos_y - c0 - 1 - m3)
        target = value if params.get("exact_gradient") else cos_y + (value - cos_y).detach()
    elif name == "elastic_arc":
        target = _arc(cos_y, theta_y, out["margins"][:, None].double())
    elif name == "elastic_cos":
        target = cos_y - out["margins"][:, None].double()
    elif name == "adaface":
        n = emb.detach().norm(dim=1, keepdim=True).clamp(1e-3, 100)
        mu, sd = 0.99 * 20 + 0.01 * n.mean(), 0.99 * 100 + 0.01 * n.std()
        z = (0.333 * (n - mu) / (sd + 1e-3)).clamp(-1, 1)
        t = torch.acos(cos_y.clamp(-1 + 1e-3, 1 - 1e-3))
        target = torch.cos((t - 0.4 * z).clamp(1e-3, math.pi - 1e-3)) - 0.4 - 0.4 * z
    elif name == "curricular":
        m = params["m"]
        t = 0.01 * cos_y.detach().mean()
        margined = _arc(cos_y, theta_y, m)
        hard = (cos.detach() > margined.detach()) & ~onehot
        others = torch.where(hard, cos * (t + cos), cos)
        target = margined
    elif name == "magface":
        a = emb.norm(dim=1, keepdim=True).clamp(10, 110)
        target = _arc(cos_y, theta_y, 0.45 + 0.35 * (a - 10) / 100)
        extra = 35 * (1 / a + a / 110**2).mean()
    elif name == "cosface":
        target = cos_y - 0.4
        others = cos.masked_fill((cos.detach() > head_kw["interclass_filtering_threshold"]) & ~onehot, 0.0)
    elif name == "arcface":
        target = cos_y + (_arc(cos_y, theta_y, 0.5) - cos_y).detach()
    logits = s * torch.where(onehot, target, others)
    return F.cross_entropy(logits, labels) + extra


def dense_reference(case, embeddings, weight, labels, out):
    emb = embeddings.double().requires_grad_(True)
    w = weight.double().requires_grad_(True)
    loss = reference_loss(case, emb, w, labels, out)
    loss.backward()
    return loss.item(), emb.grad, w.grad


# ----------------------------------------------------------------------------- workers


def _run_case(rank, case, num_classes, labels, sample_rate):
    name, params, head_kw = LOSS_CASES[case]
    return run_head(rank, build_loss(name, **params), num_classes, labels, sample_rate, emb_scale=EMB_SCALE, **head_kw)


def _worker_cases(rank, world_size):
    return [_run_case(rank, *case) for case in head_cases(LOSS_CASES, world_size)]


@pytest.fixture(scope="module", params=[1, 2, 3])
def results(request):
    world_size = request.param
    return world_size, results_per_rank(_worker_cases, world_size)


def _check_against_dense(per_rank, case, labels, where):
    check_against_dense(
        per_rank,
        labels,
        lambda e, w, t: dense_reference(case, e, w, t, per_rank[0]),
        where,
        B_PER_RANK,
        loss_abs=1e-5,
        global_atol=True,
    )


def test_every_loss_matches_dense_reference(results):
    world_size, per_rank = results
    for index, (case, _, labels, rate) in enumerate(head_cases(LOSS_CASES, world_size)):
        _check_against_dense(
            [r[index] for r in per_rank], case, labels, f"{case} world={world_size} sample_rate={rate}"
        )


def test_statistics_and_draws_identical_on_every_rank(results):
    world_size, per_rank = results
    for index, (case, _, _, _rate) in enumerate(head_cases(LOSS_CASES, world_size)):
        first = per_rank[0][index]
        for r in per_rank[1:]:
            for key, value in first["buffers"].items():
                assert torch.equal(value, r[index]["buffers"][key]), f"{case}: buffer {key} differs across ranks"
            if first["margins"] is not None:
                assert torch.equal(first["margins"], r[index]["margins"]), f"{case}: margins differ across ranks"
            assert first["stats"] == r[index]["stats"]
        if case == "curricular":
            assert first["buffers"]["t"].item() != 0.0
        if case == "adaface":
            assert first["buffers"]["batch_mean"].item() != 20.0


def test_elastic_plus_margins_fall_as_target_cos_rises(results):
    world_size, per_rank = results
    for index, (case, _num_classes, labels, _rate) in enumerate(head_cases(LOSS_CASES, world_size)):
        if not case.endswith("_plus"):
            continue
        rs = [r[index] for r in per_rank]
        emb = F.normalize(torch.cat([r["emb"] for r in rs]).double())
        weight = F.normalize(torch.cat([r["weight"] for r in rs]).double())
        target_cos = (emb * weight[torch.tensor(labels)]).sum(1)
        margins = rs[0]["margins"].double()
        order = target_cos.argsort()
        assert (margins[order].diff() <= 0).all(), f"{case}: margins not monotone in target cos"
        assert margins.std() > 0.05


def test_sface_stats(results):
    world_size, per_rank = results
    for index, (case, _, _labels, _rate) in enumerate(head_cases(LOSS_CASES, world_size)):
        if case != "sface":
            continue
        stats = per_rank[0][index]["stats"]
        assert stats["intra"] + stats["inter"] == pytest.approx(per_rank[0][index]["loss"], rel=1e-5)
        assert -1 <= stats["cos_y"] <= 1 and -1 <= stats["cos_j"] <= 1


def test_elastic_with_zero_sigma_equals_fixed_margin():
    gen = torch.Generator().manual_seed(0)
    cos = (torch.rand(6, 5, generator=gen) * 2 - 1).requires_grad_(True)
    labels = torch.tensor([0, 4, 2, -1, 2, 1])
    exact_arc = build_loss("arcface", m=0.5, exact_gradient=True)
    pairs = [
        (build_loss("elastic_cos", m=0.35, sigma=0.0), build_loss("cosface", m=0.35)),
        (build_loss("elastic_arc", m=0.5, sigma=0.0), exact_arc),
        (build_loss("elastic_arc", m=0.5, sigma=0.0, plus=True), exact_arc),
    ]
    for elastic, fixed in pairs:
        ctx = MarginContext(target_cos=torch.rand(6, generator=gen))
        (got,) = torch.autograd.grad(elastic(cos, labels, ctx).sum(), cos)
        (want,) = torch.autograd.grad(fixed(cos, labels).sum(), cos)
        torch.testing.assert_close(elastic(cos, labels, ctx), fixed(cos, labels), rtol=0, atol=0)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert build_loss("elastic_arc", plus=True).sigma == 0.0175 and build_loss("elastic_cos", plus=True).sigma == 0.02
    assert build_loss("elastic_arc").sigma == 0.05 and build_loss("elastic_cos").m == 0.35


@pytest.mark.parametrize(
    "name", ["combined", "elastic_arc", "elastic_cos", "adaface", "curricular", "magface", "sface"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_nan_at_cos_plus_minus_one(name, dtype):
    head = PartialFC(build_loss(name), 3, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3) * 0.01)
    emb = torch.tensor(
        [[20.0, 0.0, 0.0], [0.0, -50.0, 0.0], [0.0, 0.0, 1.0], [-100.0, 0.0, 0.0]], dtype=dtype, requires_grad=True
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = head(emb, torch.tensor([0, 1, 2, 0]))
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_combined_allows_every_combination_and_is_monotone():
    cos = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    for m1, m2, m3 in [
        (1.0, 0.5, 0.0),
        (1.0, 0.0, 0.35),
        (1.35, 0.0, 0.0),
        (1.2, 0.3, 0.2),
        (0.9, 0.5, 0.1),
        (2.0, 1.0, 0.3),
    ]:
        loss = build_loss("combined", s=1.0, m1=m1, m2=m2, m3=m3)
        target = loss.target_logit(cos)
        assert torch.isfinite(target).all() and (target.diff() >= -1e-12).all(), (m1, m2, m3)
    with pytest.raises(ValueError, match="m1 must be positive"):
        build_loss("combined", m1=0.0)


def test_parameter_validation():
    with pytest.raises(ValueError, match="update must be one of dense, sparse"):
        PartialFC(build_loss("arcface"), 4, 10, update="lazy")
    with pytest.raises(ValueError, match="softmax-type"):
        PartialFC(build_loss("sface"), 4, 10, interclass_filtering_threshold=0.2)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        build_loss("elastic_cos", sigma=-1.0)
