"""Crash-safe file writes (a temporary file beside the target, fsync, rename) and their leftovers."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable, List

from evaluation.errors import UserInputError


class OutputError(UserInputError):
    """A file or directory the user chose for output cannot be written; the message names it and the reason."""


# Temporaries are `<name>.<random>.tmp` beside the target (tempfile.mkstemp's random part: [a-z0-9_]).
TMP_SUFFIX = ".tmp"
_TMP_RANDOM = r"[a-z0-9_]+"


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fh)` on a temporary file in `path`'s directory and rename it to `path`.

    A crash at any moment leaves either the previous file or the complete new one, never a truncated one.
    An OSError without a file name (a full disk while writing) or naming the temporary file is raised
    again naming `path`, the file the caller asked for.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        make_dirs(directory)
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=directory)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and (exc.filename is None or str(exc.filename).endswith(TMP_SUFFIX)):
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc  # errno picks the subclass
        raise


def make_dirs(directory: str) -> None:
    """os.makedirs(exist_ok=True), except that a file in the way is reported as "Not a directory" naming it
    (makedirs says "File exists", which reads as if the directory were there)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError as exc:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename or directory) from None


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def remove_stale_temporaries(directory: str, targets: str) -> List[str]:
    """Delete the `<name>.<random>.tmp` files that atomic writes left in `directory` when a run was killed,
    for names matching the regular expression `targets`.

    Only that exact pattern is touched, so foreign files survive. Returns the paths removed.
    """
    pattern = re.compile(rf"^(?:{targets})\.{_TMP_RANDOM}{re.escape(TMP_SUFFIX)}$")
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
