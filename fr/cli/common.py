"""Shared command-line plumbing: logging set-up and turning expected errors into one-line messages."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

# Errors whose message is already phrased for the user: print it, no traceback.
from fr.config import ConfigError
from fr.data.layout import DataError
from fr.data.recordio import RecordIOError
from fr.train.checkpoint import CheckpointError

USER_ERRORS = (ConfigError, DataError, RecordIOError, CheckpointError, FileNotFoundError, FileExistsError, ValueError)


def setup_logging(verbose: bool = False) -> None:
    """Console logging; ranks other than 0 (under torchrun) only report warnings."""
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run `body`, reporting a user error as `prog: error: message` with exit status 2."""
    try:
        return body()
    except USER_ERRORS as exc:
        if os.environ.get("FR_TRACEBACK"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
