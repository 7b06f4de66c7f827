"""Moved to tests.helpers.distributed (the `run_distributed` and `free_port` fixtures); this name stays until
the last test modules importing it are converted."""
from tests.helpers.distributed import free_port, run_distributed  # noqa: F401
