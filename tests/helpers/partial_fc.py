"""Sharded Partial FC against a dense single-process reference: the shared setups, one rank's run of a case
(called inside spawned workers), and the comparison.

Each rank's result holds `weight`, `emb`, `sampled` (local indices), `class_start`, `num_local`, `loss`,
`emb_grad` and `weight_grad`; `reference(embeddings, kept_weight, targets)` returns the dense
(loss, embedding grad, kept-weight grad) computed with plain autograd.
"""

import pytest
import torch

from fr.distributed import env_from_group
from fr.heads import PartialFC
from tests.helpers.distributed import run_distributed

# Setups shared by the sharded-head tests: embedding size, batch per rank, and per world size the class
# count and global labels (repeats, and labels owned by other ranks' shards); a larger class count for sampling.
D = 8
B_PER_RANK = 4
EXACT_SETUPS = {
    1: (10, [2, 2, 9, 0]),
    2: (11, [3, 7, 3, 10, 0, 7, 5, 6]),  # shards [0, 6), [6, 11)
    3: (10, [9, 0, 4, 9, 5, 5, 1, 7, 3, 8, 0, 6]),  # shards [0, 4), [4, 7), [7, 10)
}
SAMPLED_CLASSES = 40
SAMPLED_LABELS = [1, 33, 1, 25, 7, 39, 20, 21, 12, 2, 33, 30]


def check_against_dense(results, labels, reference, where, batch_per_rank, loss_abs=None, global_atol=False):
    """Loss and per-rank gradient slices equal the dense reference over the (sampled) classes.

    Gradient atol is 1e-5 times the largest expected entry, of the rank's slice or, with `global_atol`,
    of the whole reference gradient (for losses whose gradients span many orders of magnitude).
    """
    labels = torch.tensor(labels)
    weight = torch.cat([r["weight"] for r in results])
    embeddings = torch.cat([r["emb"] for r in results])
    kept = torch.cat([r["sampled"] + r["class_start"] for r in results])
    remap = torch.full((weight.shape[0],), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))
    assert (remap[labels] >= 0).all(), f"{where}: a positive class was not sampled"
    ref_loss, ref_emb_grad, ref_w_grad = reference(embeddings, weight[kept], remap[labels])
    full_w_grad = torch.zeros_like(weight, dtype=torch.float64)
    full_w_grad[kept] = ref_w_grad
    for rank, r in enumerate(results):
        assert r["loss"] == pytest.approx(ref_loss, rel=1e-5, abs=loss_abs), f"{where} rank {rank}: loss"
        rows = slice(rank * batch_per_rank, (rank + 1) * batch_per_rank)
        expected_emb = ref_emb_grad[rows].float()
        emb_scale = ref_emb_grad.abs().max().item() if global_atol else expected_emb.abs().max()
        torch.testing.assert_close(
            r["emb_grad"],
            expected_emb,
            rtol=1e-4,
            atol=1e-5 * emb_scale,
            msg=lambda m, rank=rank: f"{where} rank {rank} embedding grad: {m}",
        )
        expected_w = full_w_grad[r["class_start"] : r["class_start"] + r["num_local"]].float()
        w_scale = full_w_grad.abs().max().item() if global_atol else expected_w.abs().max()
        torch.testing.assert_close(
            r["weight_grad"],
            expected_w,
            rtol=1e-4,
            atol=1e-5 * w_scale,
            msg=lambda m, rank=rank: f"{where} rank {rank} weight grad: {m}",
        )


def head_cases(names, world_size):
    """(name, num_classes, labels, sample_rate) per name: every class kept (EXACT_SETUPS), then 30% sampled."""
    num_classes, labels = EXACT_SETUPS[world_size]
    cases = [(name, num_classes, labels, 1.0) for name in names]
    return cases + [(name, SAMPLED_CLASSES, SAMPLED_LABELS[: world_size * B_PER_RANK], 0.3) for name in names]


def run_head(rank, margin_loss, num_classes, labels, sample_rate, emb_scale=1.0, steps=1, **head_kw):
    """This rank's `steps` forward/backward passes of a PartialFC over its slice of `labels` (seeded embeddings
    times `emb_scale`); the result holds what check_against_dense and the tests read."""
    env = env_from_group()
    gen = torch.Generator().manual_seed(1000 + rank)
    emb = (torch.randn(B_PER_RANK, D, generator=gen) * emb_scale).requires_grad_(True)
    head = PartialFC(margin_loss, D, num_classes, sample_rate=sample_rate, env=env, **head_kw)
    weight = head.weight.detach().clone()
    local_labels = torch.tensor(labels[rank * B_PER_RANK : (rank + 1) * B_PER_RANK])
    for _ in range(steps):
        emb.grad = None
        head.weight.grad = None
        loss = head(emb, local_labels)
        loss.backward()
    if head.update == "sparse":
        assert head.weight.grad is None
        index, rows_grad = head.take_sparse_grads()
        weight_grad = torch.zeros_like(weight).index_copy_(0, index, rows_grad)
    else:
        weight_grad = head.weight.grad
    return {
        "loss": loss.item(),
        "emb": emb.detach(),
        "emb_grad": emb.grad,
        "weight": weight,
        "weight_grad": weight_grad,
        "class_start": head.class_start,
        "num_local": head.num_local,
        "num_sample": head.num_sample,
        "sampled": head.last_sampled.clone(),
        "state": head.state_dict(),
        "margins": getattr(margin_loss, "last_margins", None),
        "buffers": {k: v.clone() for k, v in margin_loss.named_buffers()},
        "stats": getattr(margin_loss, "last_stats", None),
    }


def results_per_rank(worker, world_size):
    """`worker(rank, world_size)` of each rank: in this process without a group for one rank, else spawned."""
    return [worker(0, 1)] if world_size == 1 else run_distributed(worker, world_size)
