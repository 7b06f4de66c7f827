"""Row-sparse SGD for Partial FC's class centres: only the sampled rows and their momentum are touched."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn


class SparseRowSGD(torch.optim.SGD):
    """torch.optim.SGD that also updates heads in `update="sparse"` mode, row by row.

    A sparse head's `weight` gets no `.grad`; its forward records the sampled row indices and a [k, D] leaf
    whose gradient is that of the sampled rows. `step()` applies, to those rows only and with the lr,
    momentum and weight decay of the parameter group holding `weight`, exactly torch's SGD rule
    (d = g + wd*w; buf = momentum*buf + d; w -= lr*buf), then runs plain SGD for every other parameter.
    The momentum buffer is `state[weight]["momentum_buffer"]` (dense, zero for rows never sampled), so
    checkpoints look like a dense SGD's. Not supported: nesterov, dampening, maximize, fp16 GradScaler
    (the row gradients would not be unscaled).
    """

    def __init__(
        self,
        params: Iterable,
        heads: Sequence[nn.Module],
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.heads = list(heads)
        for head in self.heads:
            self._group_of(head.weight)

    def _group_of(self, weight: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(p is weight for p in group["params"]):
                return group
        raise ValueError("heads: a sparse head's weight must be in one of the optimizer's parameter groups")

    @torch.no_grad()
    def step(self, closure=None):
        for head in self.heads:
            pending = head.take_sparse_grads(with_rows=True)
            if pending is not None:
                self._update_rows(head.weight, *pending)
        return super().step(closure)

    def _update_rows(
        self, weight: torch.Tensor, index: torch.Tensor, grad: torch.Tensor, rows: Optional[torch.Tensor]
    ) -> None:
        group = self._group_of(weight)
        # In place: the row gradient and the forward's copy of the rows (equal to weight[index]) are ours to
        # consume, and each [k, D] buffer or pass is large at millions of classes.
        step = grad
        if group["weight_decay"]:
            rows = weight.index_select(0, index) if rows is None else rows
            step = grad.add_(rows, alpha=group["weight_decay"])
        if group["momentum"]:
            state = self.state[weight]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(weight)
            buf = state["momentum_buffer"]
            # The rows are spent, so their storage takes the momentum rows: one [k, D] buffer less at the peak.
            buf_rows = buf.index_select(0, index) if rows is None else torch.index_select(buf, 0, index, out=rows)
            # d + momentum*buf in one pass (torch's SGD takes two, momentum*buf then + d; same up to rounding).
            step = step.add_(buf_rows, alpha=group["momentum"])
            buf.index_copy_(0, index, step)
        # Moves weight[index] in one pass instead of a row update and a copy back.
        weight.index_add_(0, index, step, alpha=-group["lr"])


def build_sparse_optimizer(param_groups: Iterable, heads: Sequence[nn.Module], cfg) -> SparseRowSGD:
    """SparseRowSGD from an optimizer config (`name` must be sgd; uses lr, momentum, weight_decay)."""
    if cfg.name != "sgd":
        raise ValueError(f"optim.name must be sgd for partial_fc.update=sparse, got {cfg.name!r}")
    return SparseRowSGD(param_groups, heads, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
