"""Moved to tests.helpers.tiny_run (the `tiny_run` fixture); this name stays until the last test modules
importing it are converted."""
from tests.helpers import ROOT  # noqa: F401
from tests.helpers.tiny_run import RECIPE, tiny_overrides  # noqa: F401
