"""A run directory as fr-train leaves it, for the evaluation tests: config.json and a slim iresnet18's model.pt."""

import torch

from fr.config import Config, save_config
from fr.models import build_backbone


class Saved:
    """A part for CheckpointManager.track whose state is fixed (the manager saves whatever state_dict returns)."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        self.state = state


def write_tiny_checkpoint(run_dir, embedding_size, data_root=None):
    """Write config.json and model.pt (weights seeded with 0) to the existing `run_dir`; returns the model in eval
    mode. `data_root` becomes the config's data.root (what fr-eval --data-dir targets resolve against)."""
    torch.manual_seed(0)
    cfg = Config()
    if data_root is not None:
        cfg.data.root = str(data_root)
    cfg.model.backbone, cfg.model.embedding_size = "iresnet18", embedding_size
    cfg.model.kwargs = {"width": 8, "stem_stride": 2}
    model = build_backbone("iresnet18", num_features=embedding_size, **cfg.model.kwargs).eval()
    save_config(cfg, str(run_dir / "config.json"))
    torch.save(model.state_dict(), run_dir / "model.pt")
    return model
