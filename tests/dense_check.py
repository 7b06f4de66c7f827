"""Moved to tests.helpers.partial_fc; this name stays until the last test modules importing it are converted."""
from tests.helpers.partial_fc import B_PER_RANK, EXACT_SETUPS, SAMPLED_CLASSES, SAMPLED_LABELS, D, check_against_dense  # noqa: F401
