"""fr's output files: the error for an output the user chose that cannot be written, and the temporaries a
killed run's atomic writes (evaluation.fileio) left behind."""

from __future__ import annotations

import os
import re
from typing import List

from evaluation.errors import UserInputError
from evaluation.fileio import TMP_RANDOM, TMP_SUFFIX


class OutputError(UserInputError):
    """A file or directory the user chose for output cannot be written; the message names it and the reason."""


def remove_stale_temporaries(directory: str, targets: str) -> List[str]:
    """Delete the `<name>.<random>.tmp` files that atomic writes left in `directory` when a run was killed,
    for names matching the regular expression `targets`.

    Only that exact pattern is touched, so foreign files survive. Returns the paths removed.
    """
    pattern = re.compile(rf"^(?:{targets})\.{TMP_RANDOM}{re.escape(TMP_SUFFIX)}$")
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in sorted(entries):
        path = os.path.join(directory, entry)
        if pattern.match(entry) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(path)
    return removed
