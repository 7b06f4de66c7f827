"""Shared command-line plumbing: logging set-up and turning the user's mistakes into one-line messages."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

from evaluation.errors import UserInputError
from fr.distributed import process_rank


class UsageError(UserInputError):
    """Command-line arguments that do not fit together (argparse cannot express the rule)."""


def setup_logging(verbose: bool = False) -> None:
    """Console logging; ranks other than 0 (under torchrun) only report warnings."""
    rank = process_rank()
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )


def user_message(exc: BaseException) -> Optional[str]:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback).

    fr's and evaluation's own errors (UserInputError) are phrased for the user already. An OSError that names
    a file (missing, unwritable, a full or read-only file system) is about a path the user gave.
    """
    if isinstance(exc, UserInputError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or str(exc)
        target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{exc.filename}{target}: {reason}"
    return None


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run `body`, reporting a user error as `prog: error: message` with exit status 2 (FR_TRACEBACK=1 raises)."""
    try:
        return body()
    except (UserInputError, OSError) as exc:
        message = user_message(exc)
        if message is None or os.environ.get("FR_TRACEBACK"):
            raise
        print(f"{prog}: error: {' '.join(message.splitlines())}", file=sys.stderr)
        return 2
