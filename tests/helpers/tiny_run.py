"""The tiny run: configs/synthetic.py shrunk to 16 identities x 8 images and a slim iResNet-18, 6 steps."""

import os
from dataclasses import dataclass
from typing import List, Optional

from tests.helpers import ROOT

RECIPE = os.path.join(ROOT, "configs", "synthetic.py")


def tiny_overrides(data_dir, out_dir, **extra) -> List[str]:
    """`key=value` strings: the tiny data set and model, 6 steps with evaluation; `extra` adds or replaces."""
    values = {
        "data.root": data_dir,
        "data.synth.identities": 16,
        "data.synth.per_identity": 8,
        "data.synth.holdout_identities": 12,
        "data.synth.pairs": 40,
        "data.synth.workers": 2,
        "data.batch_size": 16,
        "data.num_workers": 0,
        "model.kwargs": '{"width": 16, "stem_stride": 2}',
        "model.embedding_size": 64,
        "train.max_steps": 6,
        "train.log_every": 2,
        "eval.every": 3,
        "eval.at_start": "true",
        "output.dir": out_dir,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@dataclass(frozen=True)
class TinyRun:
    """The tiny run over a shared data directory (rendered by the first run that needs it, then reused).

    Picklable, so a test can hand it to spawned workers."""

    data: str
    recipe: str = RECIPE

    def overrides(self, out_dir, data: Optional[str] = None, **extra) -> List[str]:
        return tiny_overrides(data or self.data, out_dir, **extra)

    def argv(self, out_dir, data: Optional[str] = None, **extra) -> List[str]:
        """fr-train's arguments: the recipe, then the overrides."""
        return [self.recipe] + self.overrides(out_dir, data, **extra)

    def config(self, out_dir, data: Optional[str] = None, **extra):
        from fr.config import load_config

        return load_config(self.recipe, self.overrides(out_dir, data, **extra))
