"""Outputs fr owns: a manifest of the files fr wrote into a directory, checked before fr replaces any of them.

fr writes a data set into a staging directory inside the output directory, then moves its files over its own
earlier outputs. It replaces only files listed in `.fr-manifest.json` and unchanged since (same size and mtime);
any other entry in the directory is a `ForeignFileError` naming it, raised before anything changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from evaluation.fileio import atomic_write_json
from fr.data.base import DataError

OUTPUT_MANIFEST = ".fr-manifest.json"
CACHE_DIR = ".fr_cache"  # the loaders' default index cache (fr.data.image_index); present, never touched here
STAGING_PREFIX = ".fr-staging-"


class ForeignFileError(DataError, FileExistsError):
    """An output directory holds something fr cannot prove it wrote; fr leaves it as is."""


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", OUTPUT_MANIFEST)
        and "/" not in name
        and os.sep not in name
    )


def _stamp(path: str) -> Dict[str, int]:
    st = os.lstat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_manifest(out_dir: str) -> Tuple[Optional[Dict[str, dict]], Optional[str]]:
    """(files listed, None), or (None, why the manifest cannot be used); (None, None) when there is none."""
    path = os.path.join(out_dir, OUTPUT_MANIFEST)
    if not os.path.lexists(path):
        return None, None
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return None, "is not a regular file"
    try:
        with open(path, encoding="utf-8") as fh:
            files = json.load(fh)["files"]
        if not all(_plain_name(n) and set(s) == {"size", "mtime_ns"} for n, s in files.items()):
            raise ValueError("unexpected entries")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"is not a manifest fr can read ({exc})"
    return files, None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def staging_prefix(pid: int) -> str:
    """How the staging directories of process `pid` on this host are named (a random part follows)."""
    return f"{STAGING_PREFIX}{pid}-{_host()}-"


def _staging_state(path: str) -> str:
    """'live' (a running fr process stages here), 'stale' (a dead one's, only files) or 'foreign'.

    Another host's staging directory (a shared file system) counts as live: its process cannot be checked.
    """
    pid, _, rest = os.path.basename(path)[len(STAGING_PREFIX) :].partition("-")
    if not pid.isdigit() or "-" not in rest or not stat.S_ISDIR(os.lstat(path).st_mode):
        return "foreign"
    if rest.rsplit("-", 1)[0] != _host() or _pid_alive(int(pid)):
        return "live"
    with os.scandir(path) as entries:
        return "stale" if all(e.is_file(follow_symlinks=False) for e in entries) else "foreign"


def first_foreign(out_dir: str) -> Optional[Tuple[str, str]]:
    """(path, why) of the first entry of `out_dir` (sorted by name) that fr may not replace, or None.

    An absent or empty directory holds nothing foreign. fr's manifest, the loaders' `.fr_cache` and fr's
    staging directories are not outputs (`staged_output` removes those of dead processes, nothing else).
    """
    if not os.path.lexists(out_dir):
        return None
    if not os.path.isdir(out_dir):
        return out_dir, "is not a directory"
    files, bad_manifest = _read_manifest(out_dir)
    if bad_manifest:
        return os.path.join(out_dir, OUTPUT_MANIFEST), bad_manifest
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if name in (OUTPUT_MANIFEST, CACHE_DIR):
            continue
        if name.startswith(STAGING_PREFIX):
            if _staging_state(path) == "foreign":
                return path, "is not a staging directory fr left (it holds more than files, or has no fr process id)"
            continue
        if files is None:
            return path, f"was not written by fr (no {OUTPUT_MANIFEST} here)"
        if name not in files:
            return path, f"was not written by fr (not listed in {OUTPUT_MANIFEST})"
        if _stamp(path) != files[name] or not stat.S_ISREG(os.lstat(path).st_mode):
            return path, "has changed since fr wrote it"
    return None


def owned_files(out_dir: str) -> List[str]:
    """Names of the files fr wrote into `out_dir` and may replace; ForeignFileError if anything else is there."""
    foreign = first_foreign(out_dir)
    if foreign:
        path, why = foreign
        raise ForeignFileError(
            f"refusing to write into {out_dir}: {path} {why}; fr replaces only files it wrote, "
            f"so choose a new or empty directory (or clear this one yourself)"
        )
    files, _ = _read_manifest(out_dir)
    return sorted(name for name in files or {} if os.path.lexists(os.path.join(out_dir, name)))


def check_apart(out_dir: str, inputs: Iterable[str], input_dirs: Iterable[str] = ()) -> None:
    """DataError unless `out_dir`, symlinks resolved, is neither one of `inputs`, inside one, nor holding one.

    `input_dirs` are folders that hold input files: the output may sit beside those files, inside such a
    folder, but may not be the folder or hold it.
    """
    if not out_dir:
        raise DataError("the output directory is empty: name a directory to write to")
    out = os.path.realpath(out_dir)
    checks = [(given, True) for given in inputs] + [(given, False) for given in input_dirs]
    for given, may_not_hold_out in checks:
        real = os.path.realpath(given)
        common = os.path.commonpath([out, real])
        if out == real:
            relation = "is"
        elif common == real and may_not_hold_out:
            relation = "is inside"
        elif common == out:
            relation = "contains"
        else:
            continue
        raise DataError(
            f"output directory {out_dir} resolves to {out}, which {relation} the input {given} "
            f"({real}); write the output somewhere apart from its input"
        )


def _remove_stale_staging(out_dir: str) -> None:
    """Remove staging directories that dead fr processes left in `out_dir` (fr's naming, plain files only)."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name.startswith(STAGING_PREFIX) and _staging_state(path) == "stale":
            for entry in os.listdir(path):
                os.remove(os.path.join(path, entry))
            os.rmdir(path)


@contextmanager
def staged_output(out_dir: str, command: str, last: Sequence[str] = ()) -> Iterator[str]:
    """Yield an empty staging directory; on success its files replace fr's earlier outputs in `out_dir`.

    Checks ownership before creating anything and again before the swap (it may change while the caller
    works). The swap removes fr's previous files, writes the new manifest, then moves the new files in,
    the names in `last` at the end, so a crash mid-way leaves only files the manifest lists and no `last`
    file (the caller's mark of a complete set). On error the staging directory is removed, and so is
    `out_dir` if this call created it and it is still empty.
    """
    owned_files(out_dir)
    created = not os.path.lexists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    _remove_stale_staging(out_dir)
    stage = tempfile.mkdtemp(prefix=staging_prefix(os.getpid()), dir=out_dir)
    try:
        yield stage
        _swap(out_dir, stage, command, last)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)  # made by mkdtemp above: it holds only this call's files
        if created:
            try:
                os.rmdir(out_dir)
            except OSError:
                pass
        raise


def _swap(out_dir: str, stage: str, command: str, last: Sequence[str]) -> None:
    new = sorted(os.listdir(stage))
    reserved = [n for n in new if not _plain_name(n) or n == CACHE_DIR or n.startswith(STAGING_PREFIX)]
    if reserved:
        raise ValueError(f"{reserved[0]} is one of fr's reserved names and cannot be an output file")
    previous = owned_files(out_dir)  # again: something may have appeared while the caller worked
    entries = {name: _stamp(os.path.join(stage, name)) for name in new}  # a rename keeps size and mtime
    for name in previous:
        os.remove(os.path.join(out_dir, name))
    staged_manifest = os.path.join(stage, OUTPUT_MANIFEST)
    atomic_write_json(staged_manifest, {"written_by": "fr", "command": command, "files": entries})
    os.replace(staged_manifest, os.path.join(out_dir, OUTPUT_MANIFEST))
    for name in [n for n in new if n not in last] + [n for n in last if n in entries]:
        target = os.path.join(out_dir, name)
        if os.path.lexists(target):  # appeared since the check above: not fr's to replace
            raise ForeignFileError(
                f"refusing to replace {target}: it appeared while fr was writing into "
                f"{out_dir} (left as is); run again once it is gone"
            )
        os.replace(os.path.join(stage, name), target)
    os.rmdir(stage)
