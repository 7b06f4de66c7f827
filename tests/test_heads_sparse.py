"""Sparse update mode of Partial FC: only sampled rows and their momentum move, exactly as dense SGD on them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fr.heads import PartialFC, SparseRowSGD, build_loss, build_sparse_optimizer

D, CLASSES, LR, MOMENTUM, WD = 8, 40, 0.1, 0.9, 5e-4


def _batch(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(6, D, generator=gen, requires_grad=True), torch.randint(0, CLASSES, (6,), generator=gen)


def _sparse_head():
    head = PartialFC(build_loss("arcface"), D, CLASSES, sample_rate=0.25, update="sparse", seed=3)
    return head, SparseRowSGD([{"params": head.parameters()}], [head], lr=LR, momentum=MOMENTUM, weight_decay=WD)


def test_sparse_step_touches_only_sampled_rows_and_matches_dense_sgd():
    head, optimizer = _sparse_head()
    for step in range(3):
        emb, labels = _batch(step)
        # Independent gradient: a dense-mode twin with the same weights and sampling state.
        twin = PartialFC(build_loss("arcface"), D, CLASSES, sample_rate=0.25, update="dense", seed=3)
        twin.load_state_dict(head.state_dict())
        twin(emb, labels).backward()
        before = head.weight.detach().clone()
        buf = optimizer.state[head.weight].get("momentum_buffer")
        buf_before = buf.clone() if buf is not None else torch.zeros_like(before)

        optimizer.zero_grad(set_to_none=True)
        head(emb, labels).backward()
        assert head.weight.grad is None
        optimizer.step()

        sampled = head.last_sampled
        assert torch.equal(sampled, twin.last_sampled)
        unsampled = torch.ones(CLASSES, dtype=torch.bool)
        unsampled[sampled] = False
        after, buf_after = head.weight.detach(), optimizer.state[head.weight]["momentum_buffer"]
        assert torch.equal(after[unsampled], before[unsampled]), f"step {step}: unsampled rows moved"
        assert torch.equal(buf_after[unsampled], buf_before[unsampled]), f"step {step}: unsampled momentum moved"
        # Reference: torch's SGD on a tensor holding just the sampled rows and their momentum.
        rows = before[sampled].clone().requires_grad_(True)
        reference = torch.optim.SGD([rows], lr=LR, momentum=MOMENTUM, weight_decay=WD)
        rows.grad = twin.weight.grad[sampled].clone()
        if step:
            reference.state[rows]["momentum_buffer"] = buf_before[sampled].clone()
        reference.step()
        torch.testing.assert_close(after[sampled], rows.detach(), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(buf_after[sampled], reference.state[rows]["momentum_buffer"], rtol=1e-6, atol=1e-8)


def test_sparse_mode_never_builds_a_dense_gradient_and_accumulates_forwards():
    head, optimizer = _sparse_head()
    (emb1, labels1), (emb2, labels2) = _batch(0), _batch(1)
    head(emb1, labels1).backward()
    first = head.last_sampled
    head(emb2, labels2).backward()
    second = head.last_sampled
    assert head.weight.grad is None
    index, grad = head.take_sparse_grads()
    assert grad.shape == (len(index), D) and len(index) < CLASSES
    assert torch.equal(index, torch.unique(torch.cat([first, second])))
    assert head.take_sparse_grads() is None
    head.eval()
    with torch.no_grad():
        head(emb1, labels1)
    assert head.take_sparse_grads() is None


def test_sparse_optimizer_configuration_errors():
    head, _ = _sparse_head()
    cfg = SimpleNamespace(name="adamw", lr=0.1, momentum=0.9, weight_decay=5e-4)
    with pytest.raises(ValueError, match="optim.name must be sgd"):
        build_sparse_optimizer([{"params": head.parameters()}], [head], cfg)
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="heads:"):
        SparseRowSGD(other.parameters(), [head], lr=0.1)


def test_training_run_with_sparse_update_and_a_new_loss(tmp_path, tiny_run):
    """fr-train end to end with partial_fc.update=sparse and a loss chosen by name from the config."""
    import json
    import os

    from fr.cli.train import main as train_main

    out_dir = str(tmp_path / "run")
    settings = {
        "model.embedding_size": 32,
        "train.max_steps": 3,
        "train.log_every": 1,
        "eval.every": 0,
        "eval.at_start": "false",
        "output.tensorboard": "false",
        "loss.name": "elastic_arc",
        "loss.params": '{"plus": true}',
        "partial_fc.sample_rate": 0.5,
        "partial_fc.update": "sparse",
    }
    assert train_main(tiny_run.argv(out_dir, **settings)) == 0
    results = json.load(open(os.path.join(out_dir, "results.json")))
    assert results["steps"] == 3
