"""Classification heads: margin losses on cosine logits, distributed objectives, and the sharded Partial FC."""
from fr.heads.margins import ArcFace, CosFace, MarginLoss, available_losses, build_loss, register_loss
from fr.heads.objectives import (DistributedSoftmaxCrossEntropy, dist_softmax_cross_entropy, get_objective,
                                 register_objective)
from fr.heads.partial_fc import PartialFC, shard_range

__all__ = [
    "ArcFace",
    "CosFace",
    "DistributedSoftmaxCrossEntropy",
    "MarginLoss",
    "PartialFC",
    "available_losses",
    "build_loss",
    "dist_softmax_cross_entropy",
    "get_objective",
    "register_loss",
    "register_objective",
    "shard_range",
]
