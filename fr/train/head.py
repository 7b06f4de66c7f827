"""The classifier head as the trainer drives it: the module with its own optimizer and LR schedule.

The head (Partial FC) is model-parallel: each rank holds its own class shard, so it stays outside every
backbone strategy and nothing of it is ever averaged across ranks. Its schedule is the backbone's, stepped in
lockstep: only on steps whose backbone update was applied.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn


class Head:
    """`module` (e.g. PartialFC), `optimizer` over its parameters (dense SGD/AdamW or SparseRowSGD) and
    `scheduler` (a per-step LR scheduler of that optimizer). A `frozen` head (train.freeze=head) is never updated:
    its gradients are dropped at each step; its schedule still advances, in lockstep with the backbone's.

    Gradient accumulation needs nothing here: dense gradients add up over a step's micro-batches, and a sparse
    head's sampled rows of every micro-batch are merged (`take_sparse_grads` sums the rows drawn more than once)
    into the one row-wise update of the step."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, frozen: bool = False):
        self.module, self.optimizer, self.scheduler, self.frozen = module, optimizer, scheduler, frozen
        if frozen:
            module.requires_grad_(False)  # dense: no weight gradient to compute (sparse rows are dropped in step)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def grad_norm(self) -> torch.Tensor:
        """The total norm of the head's dense gradients, on the device (0 when it has none: sparse mode)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=next(self.module.parameters()).device)
        return torch.nn.utils.get_total_norm(grads)

    def step(self) -> None:
        if self.frozen:
            self.skip()  # no gradient left: the optimizer's step below changes nothing
        self.optimizer.step()
        self.scheduler.step()

    def skip(self) -> None:
        """Drop this step's gradients without an update: the dense ones, and the sampled rows a sparse head
        keeps for its row-wise optimizer (`take_sparse_grads`)."""
        self.zero_grad()
        take = getattr(self.module, "take_sparse_grads", None)
        if take is not None:
            take()

    def check(self) -> None:
        """Settle the module's deferred batch check (PartialFC.check_last_batch), if it has one."""
        check = getattr(self.module, "check_last_batch", None)
        if check is not None:
            check()

    def state_dict(self) -> Dict[str, Any]:
        """The module (this rank's shard), its optimizer and schedule, once the last batch has passed its
        check: no checkpoint holds an update from a batch that broke the head's rules."""
        self.check()
        return {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
