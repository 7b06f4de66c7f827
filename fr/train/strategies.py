"""Every training strategy, registered: the one place that imports them all (fr.train.strategy defines the seam
and DDP; fr.train.deepspeed_strategy, which builds on that seam, adds "deepspeed"). Look names up here."""

from fr.train import deepspeed_strategy  # noqa: F401  (registers "deepspeed"; DeepSpeed itself loads when built)
from fr.train.strategy import STRATEGIES, build_strategy, check_strategy

__all__ = ["STRATEGIES", "build_strategy", "check_strategy"]
