"""Skipped steps: what a forward pass changes besides the weights, restored when its update is skipped, and the
error that ends a run after too many non-finite steps in a row."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from evaluation.errors import UserInputError


class NonFiniteLossError(UserInputError):
    """The loss or a gradient norm stayed NaN/inf for `train.max_nonfinite_steps` steps in a row: stopping beats
    training on. Usually the settings' doing (learning rate, margin, data), so it is one line like other user
    errors."""


def _overrides_extra_state(module: nn.Module) -> bool:
    return type(module).get_extra_state is not nn.Module.get_extra_state


class ForwardState:
    """A copy of what a training forward changes in `modules` besides parameters: buffers (BatchNorm running
    statistics, AdaFace's and CurricularFace's running means), extra state (Partial FC's and ElasticFace's
    draw counters) and torch's RNG (dropout). `take()` before the forward, `restore()` when the step is
    skipped, so that a skipped batch leaves no trace: the run continues as if it had never been drawn.

    The copies are made once and refreshed in place, one fused copy per (device, dtype)."""

    def __init__(self, modules: Sequence[nn.Module], device: torch.device):
        self.modules, self.device = list(modules), device
        self._buffers: List[torch.Tensor] = []
        self._groups: Dict[Tuple[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
        self._extra: List[Tuple[nn.Module, Any]] = []
        self._rng: Dict[str, torch.Tensor] = {}

    def _current_buffers(self) -> List[torch.Tensor]:
        return [buf for module in self.modules for buf in module.buffers()]

    @torch.no_grad()
    def take(self) -> None:
        buffers = self._current_buffers()
        if len(buffers) != len(self._buffers) or any(a is not b for a, b in zip(buffers, self._buffers)):
            self._buffers, self._groups = buffers, {}
            for buf in buffers:
                live, copies = self._groups.setdefault((buf.device, buf.dtype), ([], []))
                live.append(buf)
                copies.append(buf.detach().clone())
        else:
            for live, copies in self._groups.values():
                torch._foreach_copy_(copies, live)
        self._extra = [
            (m, m.get_extra_state()) for module in self.modules for m in module.modules() if _overrides_extra_state(m)
        ]
        self._rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            self._rng["cuda"] = torch.cuda.get_rng_state(self.device)

    @torch.no_grad()
    def restore(self) -> None:
        for live, copies in self._groups.values():
            torch._foreach_copy_(live, copies)
        for module, state in self._extra:
            module.set_extra_state(state)
        torch.set_rng_state(self._rng["cpu"])
        if "cuda" in self._rng:
            torch.cuda.set_rng_state(self._rng["cuda"], self.device)
