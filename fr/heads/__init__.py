"""Classification heads: margin losses on cosine logits, distributed objectives, and the sharded Partial FC."""

from fr.heads.losses_adaptive import AdaFace, CurricularFace, MagFace
from fr.heads.losses_elastic import ElasticArcFace, ElasticCosFace
from fr.heads.losses_sface import SFace
from fr.heads.margins import (
    ArcFace,
    CombinedMargin,
    CosFace,
    MarginContext,
    MarginLoss,
    arc_target,
    available_losses,
    build_loss,
    register_loss,
)
from fr.heads.objectives import (
    DistributedSoftmaxCrossEntropy,
    dist_sface_loss,
    dist_softmax_cross_entropy,
    get_objective,
    register_objective,
)
from fr.heads.partial_fc import PartialFC, shard_range
from fr.heads.sparse_update import SparseRowSGD, build_sparse_optimizer

__all__ = [
    "AdaFace",
    "ArcFace",
    "CombinedMargin",
    "CosFace",
    "CurricularFace",
    "DistributedSoftmaxCrossEntropy",
    "ElasticArcFace",
    "ElasticCosFace",
    "MagFace",
    "MarginContext",
    "MarginLoss",
    "PartialFC",
    "SFace",
    "SparseRowSGD",
    "arc_target",
    "available_losses",
    "build_loss",
    "build_sparse_optimizer",
    "dist_sface_loss",
    "dist_softmax_cross_entropy",
    "get_objective",
    "register_loss",
    "register_objective",
    "shard_range",
]
