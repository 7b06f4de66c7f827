"""Resumable training checkpoints: every rank's full state, written so that a crash never leaves a bad one.

Layout under `<output.dir>/checkpoints/`:

    step_00001200/rank00000.pt   one file per rank: backbone, its Partial FC shard, optimizer, schedule,
                                 loader position, RNG states (each written to a temporary file and renamed)
    step_00001200/manifest.json  written by rank 0 once every rank's file is complete: step, world size,
                                 file sizes, and the settings a resumed run must share
    latest.json                  the newest complete step directory, replaced atomically after its manifest

A crash while writing leaves `latest.json` naming the previous, whole checkpoint. Files live on a file system
every rank can reach (as for insightface's per-rank checkpoints).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional

import torch

from evaluation.fileio import atomic_write_json
from fr.config import Config, get_value
from fr.distributed import DistEnv, all_reduce, barrier
from fr.fileio import remove_stale_temporaries
from fr.train.checkpoint import CheckpointError, atomic_save, load_error

log = logging.getLogger("fr.train")

FORMAT = 1
POINTER = "latest.json"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STEP_FILES = r"rank\d{5}\.pt|" + re.escape(MANIFEST)  # what a step directory holds (as a regex)

# Settings that fix tensor shapes, the class sharding or the optimizer state: a resumed run must share them.
MUST_MATCH = ("model.backbone", "model.embedding_size", "model.kwargs", "data.batch_size", "loss.name",
              "partial_fc.update", "partial_fc.sample_rate", "optim.name")


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def run_settings(cfg: Config, num_classes: int) -> Dict[str, Any]:
    """The MUST_MATCH settings of `cfg` plus the class count, as recorded in a manifest."""
    settings = {key: get_value(cfg, key) for key in MUST_MATCH}
    settings["num_classes"] = num_classes
    return json.loads(json.dumps(settings))  # JSON-normalised (tuples -> lists), as read back from a manifest


class Checkpointer:
    """Writes the trainer's state (`trainer.state_dict()`) of every rank as one checkpoint; a collective call."""

    def __init__(self, directory: str, env: DistEnv, settings: Dict[str, Any], keep: int = 1):
        self.directory, self.env, self.settings, self.keep = directory, env, settings, keep

    def save(self, trainer) -> str:
        step = trainer.state.step
        step_dir = os.path.join(self.directory, step_dir_name(step))
        path = os.path.join(step_dir, rank_file(self.env.rank))
        manifest_path = os.path.join(step_dir, MANIFEST)
        if os.path.exists(manifest_path):
            # A directory of an abandoned run with this step: unmark it before its files are replaced one by
            # one, so that a crash meanwhile cannot leave a manifest over a mix of old and new files.
            if self.env.is_main:
                os.remove(manifest_path)
            barrier(self.env)
        atomic_save(trainer.state_dict(), path)
        # Every rank's file size reaches rank 0, which records them so that a truncated copy is detected.
        sizes = torch.zeros(self.env.world_size, dtype=torch.int64, device=self.env.device)
        sizes[self.env.rank] = os.path.getsize(path)
        sizes = all_reduce(sizes, self.env).tolist()
        if self.env.is_main:
            manifest = {"format": FORMAT, "step": step, "epoch": trainer.state.epoch,
                        "world_size": self.env.world_size,
                        "files": {rank_file(r): size for r, size in enumerate(sizes)},
                        "settings": self.settings}
            atomic_write_json(manifest_path, manifest)
            atomic_write_json(os.path.join(self.directory, POINTER), {"step": step, "dir": step_dir_name(step)})
            self._prune(step)
            log.info("saved a resumable checkpoint at step %d: %s", step, step_dir)
        barrier(self.env)
        return step_dir

    def _prune(self, current: int) -> None:
        """Delete the older step directories beyond `keep`; newer ones (from an abandoned run) are left alone."""
        older = sorted((int(m.group(1)), name) for name in os.listdir(self.directory)
                       if (m := _STEP_DIR.match(name)) and int(m.group(1)) < current)
        for _, name in older[:max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


def _step_dirs(directory: str) -> List[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(directory, name) for name in sorted(names)
            if _STEP_DIR.match(name) and os.path.isdir(os.path.join(directory, name))]


def remove_stale_checkpoint_temporaries(directory: str) -> List[str]:
    """Delete the temporaries a killed run left in `directory` (the pointer's) and its step directories."""
    removed = remove_stale_temporaries(directory, re.escape(POINTER))
    for step_dir in _step_dirs(directory):
        removed += remove_stale_temporaries(step_dir, _STEP_FILES)
    return removed


def discard_checkpoints(directory: str) -> List[str]:
    """Delete an earlier run's checkpoints in `directory`: the pointer first (so that nothing resumes from a
    half-deleted run), then each step directory's files. Files fr did not write stay, and so do the
    directories holding them. Returns the paths removed."""
    removed = remove_stale_checkpoint_temporaries(directory)
    pointer = os.path.join(directory, POINTER)
    if os.path.isfile(pointer):
        os.remove(pointer)
        removed.append(pointer)
    own = re.compile(rf"^(?:{_STEP_FILES})$")
    for step_dir in _step_dirs(directory):
        manifest = os.path.join(step_dir, MANIFEST)
        if os.path.isfile(manifest):  # unmark it before its rank files go, as Checkpointer.save does
            os.remove(manifest)
            removed.append(manifest)
        for name in sorted(os.listdir(step_dir)):
            path = os.path.join(step_dir, name)
            if own.match(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
        if not os.listdir(step_dir):
            os.rmdir(step_dir)
    return removed


def resolve_resume(resume: str, out_dir: str) -> Optional[str]:
    """The step directory to resume from, or None for a fresh run.

    `resume` is "" (fresh), "auto" (the newest complete checkpoint in `out_dir`, if any), or a path: a run
    directory, its `checkpoints` directory, or one `step_*` directory.
    """
    pointer = os.path.join(out_dir, "checkpoints", POINTER)
    if not resume:  # a fresh run; fr.train.run refuses one over an earlier run unless output.overwrite is set
        return None
    if resume == "auto":
        if not os.path.isfile(pointer):
            log.info("train.resume=auto: no checkpoint in %s, starting a fresh run", out_dir)
            return None
        return _follow_pointer(pointer)
    if not os.path.exists(resume):
        raise CheckpointError(f"train.resume={resume}: no such file or directory")
    for candidate in (os.path.join(resume, "checkpoints", POINTER), os.path.join(resume, POINTER)):
        if os.path.isfile(candidate):
            return _follow_pointer(candidate)
    if os.path.isfile(os.path.join(resume, MANIFEST)):
        return resume
    if _STEP_DIR.match(os.path.basename(os.path.normpath(resume))):
        raise CheckpointError(f"{resume} has no {MANIFEST}: that checkpoint was never completed (the run stopped "
                              f"while writing it); resume from an earlier one or from the run directory")
    raise CheckpointError(f"train.resume={resume}: expected a run directory, its checkpoints/ directory or a "
                          f"step_* directory (none of {POINTER} or {MANIFEST} found)")


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _follow_pointer(pointer: str) -> str:
    name = _read_json(pointer).get("dir")
    if not isinstance(name, str) or not _STEP_DIR.match(name):
        raise CheckpointError(f"{pointer}: field 'dir' must name a step_* directory, got {name!r}")
    step_dir = os.path.join(os.path.dirname(pointer), name)
    if not os.path.isfile(os.path.join(step_dir, MANIFEST)):
        raise CheckpointError(f"{pointer} names {step_dir}, which has no {MANIFEST}")
    return step_dir


def load_rank_state(step_dir: str, env: DistEnv, settings: Dict[str, Any]) -> Dict[str, Any]:
    """This rank's saved state from `step_dir`, after checking the manifest against this run."""
    manifest_path = os.path.join(step_dir, MANIFEST)
    manifest = _read_json(manifest_path)
    for key in ("format", "step", "world_size", "files", "settings"):
        if key not in manifest:
            raise CheckpointError(f"{manifest_path}: missing field {key!r}")
    if manifest["format"] != FORMAT:
        raise CheckpointError(f"{manifest_path}: format {manifest['format']}, this version of fr reads {FORMAT}")
    if manifest["world_size"] != env.world_size:
        raise CheckpointError(f"{step_dir} was written by {manifest['world_size']} ranks but this run has "
                              f"{env.world_size}: the Partial FC head is sharded by rank, so resume with the "
                              f"same number of processes")
    for key, saved in manifest["settings"].items():
        if key in settings and settings[key] != saved:
            raise CheckpointError(f"{step_dir}: {key} was {saved!r} in the checkpointed run but is "
                                  f"{settings[key]!r} now; resume with the same value")
    name = rank_file(env.rank)
    path = os.path.join(step_dir, name)
    expected = manifest["files"].get(name)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing (listed in {manifest_path})")
    if os.path.getsize(path) != expected:
        raise CheckpointError(f"{path} is {os.path.getsize(path)} bytes but {manifest_path} records {expected}: "
                              f"the file was truncated or replaced")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise load_error(path, exc) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an fr training-state file (format {FORMAT})")
    return state
