"""The embedding all-gather and its two backwards (all-reduce, reduce-scatter) against a dense reference."""

import os
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fr.distributed import (
    all_gather_with_grad,
    cleanup,
    env_from_group,
    gather_backward_all_reduce,
    gather_backward_for,
    gather_backward_reduce_scatter,
)

B, D = 3, 5  # per-rank batch and embedding size: every rank passes the same shape


def _inputs(rank):
    return torch.Generator().manual_seed(100 + rank)


def _local_embeddings(rank, device="cpu"):
    return torch.randn(B, D, generator=_inputs(rank)).to(device)


def _loss_weights(rank, world_size, device="cpu"):
    """Each rank's loss weighs the whole gathered [W*B, D] batch differently."""
    gen = _inputs(1000 + rank)
    return torch.randn(world_size * B, D, generator=gen).to(device)


def _gather_grad(rank, world_size, backward_fn, device="cpu"):
    """This rank's gradient of sum((w_rank * gathered)**2 / 2 + w_rank * gathered) through the all-gather."""
    env = env_from_group(torch.device(device))
    x = _local_embeddings(rank, device).requires_grad_(True)
    gathered = all_gather_with_grad(x, env, backward_fn=backward_fn)
    w = _loss_weights(rank, world_size, device)
    ((w * gathered) ** 2 / 2 + w * gathered).sum().backward()
    return {"gathered": gathered.detach().cpu(), "grad": x.grad.detach().cpu()}


def _both_backwards(rank, world_size):
    out = {
        "all_reduce": _gather_grad(rank, world_size, gather_backward_all_reduce),
        "default": _gather_grad(rank, world_size, None),
    }
    try:
        out["reduce_scatter"] = _gather_grad(rank, world_size, gather_backward_reduce_scatter)
    except RuntimeError as exc:  # gloo in older torch builds has no reduce_scatter at all
        if "does not support reduce_scatter" not in str(exc):
            raise
    return out


def _dense_reference(world_size):
    """Single process: d/dx_r of sum over ranks q of loss_q(cat(x_0..x_{W-1})), by autograd on the concatenation."""
    xs = [_local_embeddings(r).requires_grad_(True) for r in range(world_size)]
    full = torch.cat(xs, dim=0)
    total = sum(
        ((_loss_weights(q, world_size) * full) ** 2 / 2 + _loss_weights(q, world_size) * full).sum()
        for q in range(world_size)
    )
    total.backward()
    return full.detach(), [x.grad for x in xs]


def _check_against_reference(results, world_size, paths):
    full, expected = _dense_reference(world_size)
    for rank, result in enumerate(results):
        for path in paths:
            torch.testing.assert_close(result[path]["gathered"], full)
            torch.testing.assert_close(result[path]["grad"], expected[rank], rtol=1e-5, atol=1e-6)


def test_backward_choice_by_backend():
    assert gather_backward_for("nccl") is gather_backward_reduce_scatter
    assert gather_backward_for("gloo") is gather_backward_all_reduce
    assert gather_backward_for("mpi") is gather_backward_all_reduce  # unknown: the all-reduce works everywhere


def test_reduce_scatter_and_all_reduce_backwards_match_dense_gradient(run_distributed):
    world_size = 3  # odd, so a mixed-up slice cannot cancel out
    results = run_distributed(_both_backwards, world_size)
    _check_against_reference(results, world_size, ("all_reduce", "default"))
    if "reduce_scatter" not in results[0]:
        pytest.skip("this torch build's gloo has no reduce_scatter; the NCCL test covers it on GPUs")
    _check_against_reference(results, world_size, ("reduce_scatter",))
    for result in results:  # the two collectives sum in different orders: equal up to rounding
        torch.testing.assert_close(result["reduce_scatter"]["grad"], result["all_reduce"]["grad"])


def _nccl_worker(rank, world_size, port, out_dir):
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    result = {
        "default_is_reduce_scatter": gather_backward_for(dist.get_backend()) is gather_backward_reduce_scatter,
        "all_reduce": _gather_grad(rank, world_size, gather_backward_all_reduce, device),
        "reduce_scatter": _gather_grad(rank, world_size, gather_backward_reduce_scatter, device),
    }
    cleanup()
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.cuda
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="the NCCL reduce-scatter path needs 2 CUDA GPUs",
)
def test_nccl_reduce_scatter_backward_matches_all_reduce(free_port):
    world_size = 2
    with tempfile.TemporaryDirectory(prefix="fr_nccl_") as out_dir:
        mp.spawn(_nccl_worker, args=(world_size, free_port, out_dir), nprocs=world_size, join=True)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]
    assert all(result["default_is_reduce_scatter"] for result in results)
    _check_against_reference(results, world_size, ("all_reduce", "reduce_scatter"))
