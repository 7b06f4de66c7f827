"""Backbones and their registry: ``build_backbone(name, **kwargs)`` -> module mapping images to embeddings."""

from fr.models.registry import UnknownBackboneError, build_backbone, list_backbones, register_backbone

# Imported for their side effect: each module registers its backbones.
from fr.models import edgeface, iresnet, mobilefacenet, vit  # noqa: E402,F401  isort:skip

__all__ = ["UnknownBackboneError", "build_backbone", "list_backbones", "register_backbone"]
