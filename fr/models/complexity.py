"""Parameter and multiply-accumulate counts of a backbone, measured by torch's FlopCounterMode (no hand counts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Complexity:
    """Counts for one image of ``input_size`` x ``input_size`` in inference mode.

    ``macs`` is FlopCounterMode's FLOPs / 2: it counts 2 FLOPs per multiply-add of convolutions, linear layers
    and matmuls (attention included) and nothing for normalisation, activations, pooling or additions, which is
    how face-recognition papers count "FLOPs" (really MACs).
    """

    parameters: int
    trainable_parameters: int
    macs: int
    input_size: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "gmacs": round(self.gmacs, 4), "mparams": round(self.parameters / 1e6, 4)}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass on one image (the model is put in eval mode and left there)."""
    model.eval()
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size, device=device))
    return counter.get_total_flops() // 2


def measure(model: nn.Module, input_size: int) -> Complexity:
    return Complexity(
        parameters=count_parameters(model),
        trainable_parameters=count_parameters(model, trainable_only=True),
        macs=count_macs(model, input_size),
        input_size=input_size,
    )
