"""Crash-safe file writes: write a temporary file beside the target, fsync, then rename over it."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fh)` on a temporary file in `path`'s directory and rename it to `path`.

    A crash at any moment leaves either the previous file or the complete new one, never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
