"""Test helper: compare a sharded Partial FC run (per-rank results) with a dense single-process reference.

Each rank's result holds `weight`, `emb`, `sampled` (local indices), `class_start`, `num_local`, `loss`,
`emb_grad` and `weight_grad`; `reference(embeddings, kept_weight, targets)` returns the dense
(loss, embedding grad, kept-weight grad) computed with plain autograd.
"""
import pytest
import torch


# Setups shared by the sharded-head tests: embedding size, batch per rank, and per world size the class
# count and global labels (repeats, and labels owned by other ranks' shards); a larger class count for sampling.
D = 8
B_PER_RANK = 4
EXACT_SETUPS = {
    1: (10, [2, 2, 9, 0]),
    2: (11, [3, 7, 3, 10, 0, 7, 5, 6]),            # shards [0, 6), [6, 11)
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
        torch.testing.assert_close(r["emb_grad"], expected_emb, rtol=1e-4, atol=1e-5 * emb_scale,
                                   msg=lambda m: f"{where} rank {rank} embedding grad: {m}")
        expected_w = full_w_grad[r["class_start"]:r["class_start"] + r["num_local"]].float()
        w_scale = full_w_grad.abs().max().item() if global_atol else expected_w.abs().max()
        torch.testing.assert_close(r["weight_grad"], expected_w, rtol=1e-4, atol=1e-5 * w_scale,
                                   msg=lambda m: f"{where} rank {rank} weight grad: {m}")
