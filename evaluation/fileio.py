"""Crash-safe file writes shared by fr and evaluation: a temporary file beside the target, fsync, rename."""

from __future__ import annotations

import errno
import json
import os
import secrets
from typing import Any, BinaryIO, Callable

# Temporaries are `<name>.<random>.tmp` beside the target, so a killed run's leftovers can be recognised
# (fr.fileio.remove_stale_temporaries); TMP_RANDOM is a regular expression for the random part.
TMP_SUFFIX = ".tmp"
TMP_RANDOM = r"[a-z0-9_]+"


def make_dirs(directory: str) -> None:
    """os.makedirs(exist_ok=True), except that a file in the way is reported as "Not a directory" naming it
    (makedirs says "File exists", which reads as if the directory were there)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError as exc:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), exc.filename or directory) from None


def create_temporary(path: str) -> str:
    """A new, empty `<path>.<random>.tmp`, created with the permissions the umask allows (as `open` would
    create `path` itself; tempfile.mkstemp's files are private, 0600)."""
    while True:
        tmp = f"{path}.{secrets.token_hex(6)}{TMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def sync_file(path: str) -> None:
    """Flush `path`'s contents to the disk (fsync), so that a rename published after it cannot outlive them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: str, path: str) -> None:
    """Publish the finished temporary file `tmp` as `path`: fsync its contents, then rename it over `path`."""
    sync_file(tmp)
    os.replace(tmp, path)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(fh)` on a temporary file in `path`'s directory (created if missing) and rename it to `path`.

    A crash at any moment leaves either the previous file or the complete new one, never a truncated one; a
    failure removes the temporary file. The new file gets the umask's permissions. An OSError without a file
    name (a full disk while writing) or naming the temporary file is raised again naming `path`, the file the
    caller asked for.
    """
    tmp = None
    try:
        make_dirs(os.path.dirname(os.path.abspath(path)))
        tmp = create_temporary(os.path.abspath(path))
        with open(tmp, "wb") as fh:
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


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
