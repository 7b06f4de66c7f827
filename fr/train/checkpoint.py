"""CheckpointManager: every rank's training state, found from `train.resume`, read and checked before training,
saved at its cadence and pruned, written so that a crash never leaves a bad one.

Layout under `<output.dir>/checkpoints/`:

    step_00001200/rank00000.pt   one file per rank, a dict of the tracked parts' states: "strategy" (backbone,
                                 its optimizer, LR schedule and loss scaler), "head" (this rank's Partial FC
                                 shard, its own optimizer and LR schedule), "loader" (position), "trainer"
                                 (step, epoch, history, skip counts), and "rng" (every RNG's state)
    step_00001200/manifest.json  written by rank 0 once every rank's file is complete: step, world size,
                                 file sizes, and the settings a resumed run must share
    step_00001200/deepspeed/     train.strategy=deepspeed only: the engine's own checkpoint (DeepSpeed's save),
                                 its files and sizes listed in the manifest under "engine_files"
    latest.json                  the newest complete step directory, replaced atomically after its manifest

A crash while writing leaves `latest.json` naming the previous, whole checkpoint; older ones are pruned only
after that. Files live on a file system every rank can reach (as for insightface's per-rank checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Protocol, Tuple

import torch

from evaluation.fileio import atomic_write_json
from fr.config import Config, get_value
from fr.distributed import DistEnv, all_gather_object, all_reduce, barrier
from fr.fileio import remove_stale_temporaries
from fr.heads.partial_fc import shard_range
from fr.seeding import rng_state, set_rng_state
from fr.train.model_file import CheckpointError, atomic_save, load_error
from fr.train.strategy import ENGINE_DIR

log = logging.getLogger("fr.train")

FORMAT = 2  # 2: the backbone's optimizer (the strategy's) and the head's are saved apart
POINTER = "latest.json"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STEP_FILES = r"rank\d{5}\.pt|" + re.escape(MANIFEST)  # what a step directory holds (as a regex)

# Settings that fix tensor shapes or the optimizer state: a resumed run must share them. The world size and the
# per-rank batch may change: the head is resharded on load (`reshard_rank_state`) and the loaders continue at
# the saved global sample offset.
MUST_MATCH = (
    "model.backbone",
    "model.embedding_size",
    "model.kwargs",
    "loss.name",
    "partial_fc.update",
    "partial_fc.sample_rate",
    "optim.name",
    "train.strategy",  # a DeepSpeed checkpoint keeps the backbone's state in the engine's own files
)


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file that is missing, truncated, unreadable or disagrees with its manifest (not a setting
    of this run): `train.resume=auto` warns and falls back to the previous whole checkpoint."""


class Stateful(Protocol):
    """A tracked part. It may also define `save_files(step_dir)` (a collective call: write files of its own into
    the step directory, before the rank files) and `load_files(step_dir, saved_world_size)` (read them back,
    before `load_state_dict`): the DeepSpeed strategy's engine checkpoint."""

    def state_dict(self) -> Dict[str, Any]: ...

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.pt"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def run_settings(cfg: Config, num_classes: int) -> Dict[str, Any]:
    """The MUST_MATCH settings of `cfg` plus the class count, as recorded in a manifest."""
    settings = {key: get_value(cfg, key) for key in MUST_MATCH}
    settings["num_classes"] = num_classes
    return json.loads(json.dumps(settings))  # JSON-normalised (tuples -> lists), as read back from a manifest


class CheckpointManager:
    """Owns the run's resumable checkpoints; every method that reads or writes one is a collective call.

    Built before training with `train.resume` ("" fresh, "auto", or a path; see `resume_candidates`), which is
    resolved at once. `prepare(settings)` then reads this rank's state and checks it against the run, before
    anything is written. The trainer registers the stateful parts (`track`), calls `load()` once and
    `maybe_save(step)` after every step; the manager keeps the cadence: every `every` steps, or at each
    epoch's end when `every` is 0 (`maybe_save(step, epoch_end=True)`), plus `save(step)` at the end of the
    run or on a stop signal; at most once per step. `keep` newest step directories are kept.

    With `resume=auto`, a damaged checkpoint (a missing, truncated or unreadable rank file on any rank, or a
    manifest that disagrees with the files) is skipped with a warning naming the file, for the previous whole
    one; a named step directory, or a checkpoint of other settings (class count, model, loss, ...), is a
    one-line error instead. A checkpoint of another world size is resharded (`reshard_rank_state`).
    With `enabled=False` (output.save_state=false) nothing is written.
    """

    def __init__(
        self, out_dir: str, env: DistEnv, resume: str = "", every: int = 0, keep: int = 1, enabled: bool = True
    ):
        self.directory = os.path.join(out_dir, "checkpoints")
        self.env, self.every, self.keep, self.enabled = env, every, keep, enabled
        self.resume, self.candidates = resume, resume_candidates(resume, out_dir)
        self.settings: Dict[str, Any] = {}
        self.parts: Dict[str, Stateful] = {}
        self.resume_dir: Optional[str] = None
        self._state: Optional[Dict[str, Any]] = None  # read by prepare(), applied by load()
        self._saved: Tuple[int, Optional[str]] = (-1, None)

    # ------------------------------------------------------------------------------------------ reading
    def prepare(self, settings: Dict[str, Any]) -> Optional[int]:
        """Record this run's settings and read the checkpoint to resume from, if any; returns its step.

        Every rank tries the same candidates in the same order and they agree, with one gather of their
        problems, on the first one that every rank could read."""
        self.settings = settings
        problems: List[str] = []
        for step_dir in self.candidates:
            try:
                state, problem = load_rank_state(step_dir, self.env, settings), None
            except CheckpointError as exc:
                state, problem = None, (str(exc), isinstance(exc, DamagedCheckpoint))
            reports = [report for report in all_gather_object(problem, self.env) if report is not None]
            if not reports:
                self._state, self.resume_dir = state, step_dir
                return self.resumed_step
            fatal = [message for message, damaged in reports if not damaged]
            if fatal or self.resume != "auto":
                raise CheckpointError((fatal or [reports[0][0]])[0])
            problems.extend(message for message, _ in reports)
            if self.env.is_main:
                log.warning(
                    "train.resume=auto: %s; falling back to the previous checkpoint",
                    "; ".join(message for message, _ in reports),
                )
        if problems:
            raise CheckpointError(
                f"train.resume=auto: no whole checkpoint left in {self.directory} (the newest "
                f"problem: {problems[0]}); continue with output.overwrite=true to start afresh"
            )
        return None

    @property
    def resumed_step(self) -> Optional[int]:
        """The step of the checkpoint `prepare` read (None for a fresh run)."""
        return int(self._state["trainer"]["step"]) if self._state is not None else None

    def track(self, **parts: Stateful) -> None:
        """Add stateful parts (state_dict/load_state_dict), saved and restored under their names."""
        self.parts.update(parts)

    def load(self) -> bool:
        """Restore every tracked part (then the RNGs) from the prepared checkpoint; False for a fresh run."""
        state, self._state = self._state, None  # the head shard can be gigabytes: keep no second copy
        if state is None:
            return False
        missing = [name for name in self.parts if name not in state]
        if missing:
            raise CheckpointError(f"{self.resume_dir}: has no {missing[0]!r} state")
        for name, part in self.parts.items():
            load_files = getattr(part, "load_files", None)
            if load_files is not None:
                load_files(self.resume_dir, int(read_manifest(self.resume_dir)["world_size"]))
            part.load_state_dict(state[name])
        set_rng_state(state["rng"], self.env.device)
        self._saved = (int(state["trainer"]["step"]), self.resume_dir)
        return True

    # ------------------------------------------------------------------------------------------ writing
    def maybe_save(self, step: int, epoch_end: bool = False) -> Optional[str]:
        """Save if the cadence says so: every `every` steps, or at an epoch's end when `every` is 0."""
        due = not self.every if epoch_end else bool(self.every) and step % self.every == 0
        return self.save(step) if due else None

    def save(self, step: int) -> Optional[str]:
        """Write every rank's state at `step` (once per step); the step directory, or None when disabled."""
        if not self.enabled:
            return None
        if self._saved[0] != step:
            self._saved = (step, self._write(step))
        return self._saved[1]

    def _write(self, step: int) -> str:
        step_dir = os.path.join(self.directory, step_dir_name(step))
        path = os.path.join(step_dir, rank_file(self.env.rank))
        manifest_path = os.path.join(step_dir, MANIFEST)
        if self.env.is_main and os.path.exists(manifest_path):
            # A directory of an abandoned run with this step: unmark it before its files are replaced one by
            # one, so that a crash meanwhile cannot leave a manifest over a mix of old and new files.
            os.remove(manifest_path)
        barrier(self.env)  # every rank, always: a rank that looked after the removal would skip it and deadlock
        for part in self.parts.values():
            save_files = getattr(part, "save_files", None)
            if save_files is not None:
                save_files(step_dir)
        state: Dict[str, Any] = {"format": FORMAT}
        for name, part in self.parts.items():
            state[name] = part.state_dict()
        state["rng"] = rng_state(self.env.device)
        atomic_save(state, path)
        # Every rank's file size reaches rank 0, which records them so that a truncated copy is detected.
        sizes = torch.zeros(self.env.world_size, dtype=torch.int64, device=self.env.device)
        sizes[self.env.rank] = os.path.getsize(path)
        sizes = all_reduce(sizes, self.env).tolist()
        if self.env.is_main:
            manifest = {
                "format": FORMAT,
                "step": step,
                "epoch": state.get("trainer", {}).get("epoch"),
                "world_size": self.env.world_size,
                "files": {rank_file(r): size for r, size in enumerate(sizes)},
                "head_rows": {
                    rank_file(r): list(self._rows(r))
                    for r in range(self.env.world_size)
                    if "num_classes" in self.settings
                },
                "settings": self.settings,
            }
            extra = engine_files(step_dir)  # every rank's are complete: the sizes' all-reduce followed them
            if extra:
                manifest["engine_files"] = extra
            atomic_write_json(manifest_path, manifest)
            atomic_write_json(os.path.join(self.directory, POINTER), {"step": step, "dir": step_dir_name(step)})
            self._prune(step)
            log.info("saved a resumable checkpoint at step %d: %s", step, step_dir)
        barrier(self.env)
        return step_dir

    def _rows(self, rank: int) -> Tuple[int, int]:
        """[start, end) of the classes `rank`'s head shard holds."""
        start, count = shard_range(self.settings["num_classes"], self.env.world_size, rank)
        return start, start + count

    def _prune(self, current: int) -> None:
        """Delete the older step directories beyond `keep`; newer ones (from an abandoned run) are left alone."""
        older = sorted(
            (int(m.group(1)), name)
            for name in os.listdir(self.directory)
            if (m := _STEP_DIR.match(name)) and int(m.group(1)) < current
        )
        for _, name in older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)


def engine_files(step_dir: str) -> Dict[str, int]:
    """The files under `step_dir`/ENGINE_DIR (paths relative to `step_dir`) with their sizes, for the manifest."""
    found: Dict[str, int] = {}
    for directory, _, names in os.walk(os.path.join(step_dir, ENGINE_DIR)):
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, step_dir)] = os.path.getsize(path)
    return dict(sorted(found.items()))


def _step_dirs(directory: str) -> List[str]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        os.path.join(directory, name)
        for name in sorted(names)
        if _STEP_DIR.match(name) and os.path.isdir(os.path.join(directory, name))
    ]


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
        if os.path.isfile(manifest):  # unmark it before its rank files go, as CheckpointManager does
            os.remove(manifest)
            removed.append(manifest)
        for name in sorted(os.listdir(step_dir)):
            path = os.path.join(step_dir, name)
            if own.match(name) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
            elif name == ENGINE_DIR and os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(path)
        if not os.listdir(step_dir):
            os.rmdir(step_dir)
    return removed


def resume_candidates(resume: str, out_dir: str) -> List[str]:
    """The step directories to try, in order, for `train.resume`; [] for a fresh run.

    `resume` is "" (fresh), "auto" (the newest complete checkpoint in `out_dir`, then the older complete ones
    newest first, as fallbacks; [] when there is none yet), or a path: a run directory, its `checkpoints`
    directory, or one `step_*` directory (that checkpoint only).
    """
    pointer = os.path.join(out_dir, "checkpoints", POINTER)
    if not resume:  # a fresh run; fr.train.run refuses one over an earlier run unless output.overwrite is set
        return []
    if resume == "auto":
        if not os.path.isfile(pointer):
            log.info("train.resume=auto: no checkpoint in %s, starting a fresh run", out_dir)
            return []
        return _newest_first(pointer)
    return [find_checkpoint(resume, f"train.resume={resume}")]


def find_checkpoint(path: str, label: Optional[str] = None) -> str:
    """The step directory `path` names: a run directory or its `checkpoints` directory (their newest complete
    checkpoint), or one `step_*` directory. `label` names `path` in the errors (default: the path itself)."""
    label = label or path
    if not os.path.exists(path):
        raise CheckpointError(f"{label}: no such file or directory")
    for candidate in (os.path.join(path, "checkpoints", POINTER), os.path.join(path, POINTER)):
        if os.path.isfile(candidate):
            return _follow_pointer(candidate)
    if os.path.isfile(os.path.join(path, MANIFEST)):
        return path
    if _STEP_DIR.match(os.path.basename(os.path.normpath(path))):
        raise CheckpointError(
            f"{path} has no {MANIFEST}: that checkpoint was never completed (the run stopped "
            f"while writing it); use an earlier one or the run directory"
        )
    raise CheckpointError(
        f"{label}: expected a run directory, its checkpoints/ directory or a "
        f"step_* directory (none of {POINTER} or {MANIFEST} found)"
    )


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _pointed_dir(pointer: str) -> str:
    name = _read_json(pointer).get("dir")
    if not isinstance(name, str) or not _STEP_DIR.match(name):
        raise CheckpointError(f"{pointer}: field 'dir' must name a step_* directory, got {name!r}")
    return os.path.join(os.path.dirname(pointer), name)


def _follow_pointer(pointer: str) -> str:
    step_dir = _pointed_dir(pointer)
    if not os.path.isfile(os.path.join(step_dir, MANIFEST)):
        raise CheckpointError(f"{pointer} names {step_dir}, which has no {MANIFEST}")
    return step_dir


def _newest_first(pointer: str) -> List[str]:
    """The pointer's step directory, then the complete (manifested) older ones, newest first. Newer ones are
    left out: they belong to a run that was abandoned when an older checkpoint was resumed."""

    def step_of(step_dir: str) -> int:
        return int(_STEP_DIR.match(os.path.basename(step_dir)).group(1))

    latest = _pointed_dir(pointer)
    older = [
        d
        for d in _step_dirs(os.path.dirname(pointer))
        if step_of(d) < step_of(latest) and os.path.isfile(os.path.join(d, MANIFEST))
    ]
    return [latest] + sorted(older, key=step_of, reverse=True)


def read_manifest(step_dir: str) -> Dict[str, Any]:
    """The manifest of `step_dir`, checked for its fields, its step and its list of rank files.

    A missing or inconsistent manifest raises DamagedCheckpoint; another format, a plain CheckpointError."""
    manifest_path = os.path.join(step_dir, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise DamagedCheckpoint(f"{step_dir} has no {MANIFEST}")
    try:
        manifest = _read_json(manifest_path)
    except CheckpointError as exc:
        raise DamagedCheckpoint(str(exc)) from None
    for key in ("format", "step", "world_size", "files", "settings"):
        if key not in manifest:
            raise DamagedCheckpoint(f"{manifest_path}: missing field {key!r}")
    if manifest["format"] != FORMAT:
        raise CheckpointError(f"{manifest_path}: format {manifest['format']}, this version of fr reads {FORMAT}")
    named = _STEP_DIR.match(os.path.basename(os.path.normpath(step_dir)))
    if named and int(named.group(1)) != manifest["step"]:
        raise DamagedCheckpoint(f"{manifest_path} records step {manifest['step']}, not that of its directory")
    world = manifest["world_size"]
    if not isinstance(world, int) or sorted(manifest["files"]) != [rank_file(r) for r in range(world)]:
        raise DamagedCheckpoint(
            f"{manifest_path}: its files {sorted(manifest['files'])} do not match its world size {world!r}"
        )
    for name, size in manifest.get("engine_files", {}).items():
        path = os.path.join(step_dir, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            what = "is missing" if not os.path.isfile(path) else f"is {os.path.getsize(path)} bytes, not {size}"
            raise DamagedCheckpoint(f"{path} {what} (listed in {manifest_path})")
    return manifest


def read_rank_file(step_dir: str, manifest: Dict[str, Any], rank: int, mmap: bool = False) -> Dict[str, Any]:
    """Rank `rank`'s saved state from `step_dir`, checked against `manifest` (read_manifest's); DamagedCheckpoint
    when it is missing, truncated, unreadable or of another step. `mmap` maps the file instead of reading it:
    tensors are paged in only where they are used."""
    manifest_path = os.path.join(step_dir, MANIFEST)
    name = rank_file(rank)
    path = os.path.join(step_dir, name)
    expected = manifest["files"][name]
    if not os.path.isfile(path):
        raise DamagedCheckpoint(f"{path} is missing (listed in {manifest_path})")
    if os.path.getsize(path) != expected:
        raise DamagedCheckpoint(
            f"{path} is {os.path.getsize(path)} bytes but {manifest_path} records {expected}: "
            f"the file was truncated or replaced"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # a corrupt zip, pickle garbage, a refused global, ...
        raise DamagedCheckpoint(str(load_error(path, exc))) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DamagedCheckpoint(f"{path}: not an fr training-state file (format {FORMAT})")
    if not isinstance(state.get("trainer"), dict) or state["trainer"].get("step") != manifest["step"]:
        raise DamagedCheckpoint(f"{path}: its step does not match {manifest_path} ({manifest['step']})")
    return state


def load_rank_state(step_dir: str, env: DistEnv, settings: Dict[str, Any]) -> Dict[str, Any]:
    """This rank's saved state from `step_dir`, after checking the manifest against the files and this run.

    A problem with the files raises DamagedCheckpoint; one with this run's settings, world size or fr
    version, a plain CheckpointError."""
    manifest = read_manifest(step_dir)
    for key, saved in manifest["settings"].items():
        if key in settings and settings[key] != saved:
            raise CheckpointError(
                f"{step_dir}: {key} was {saved!r} in the checkpointed run but is "
                f"{settings[key]!r} now; resume with the same value"
            )
    if manifest["world_size"] == env.world_size:
        return read_rank_file(step_dir, manifest, env.rank)
    return reshard_rank_state(step_dir, manifest, env)


def saved_rows(manifest: Dict[str, Any], rank: int) -> Tuple[int, int]:
    """[start, end) of the classes saved rank `rank`'s head shard holds (as its manifest records them)."""
    rows = manifest.get("head_rows", {}).get(rank_file(rank))
    if rows is None:  # a manifest from before the ranges were recorded: the same contiguous split
        start, count = shard_range(manifest["settings"]["num_classes"], manifest["world_size"], rank)
        return start, start + count
    return int(rows[0]), int(rows[1])


def _row_param(head_state: Dict[str, Any]) -> Optional[Any]:
    """The head optimizer's state key of the class-centre weight (the entry with weight-shaped tensors)."""
    shape = head_state["module"]["weight"].shape
    for key, param_state in head_state["optimizer"]["state"].items():
        if any(isinstance(v, torch.Tensor) and v.shape == shape for v in param_state.values()):
            return key
    return None


def reshard_rank_state(step_dir: str, manifest: Dict[str, Any], env: DistEnv) -> Dict[str, Any]:
    """This rank's state under this run's world size from a checkpoint written by another one.

    The head shard and its optimizer's per-row state are assembled from the rows of the saved files that
    overlap this rank's classes (`shard_range`); files are memory-mapped, so only those rows are read and the
    new shard is the one head-sized allocation. Everything else is the same on every rank and is rank 0's: the
    backbone and its optimizer, the LR schedules, the head optimizer's other state (AdamW's step count), the
    Partial FC sampling counter, the loader's global position and the trainer's counters. The RNG states are
    saved rank (this rank mod the saved world size)'s."""
    world, num_classes = manifest["world_size"], manifest["settings"]["num_classes"]
    base = read_rank_file(step_dir, manifest, 0, mmap=True)
    start, count = shard_range(num_classes, env.world_size, env.rank)
    end = start + count
    head = base["head"]
    param = _row_param(head)
    rows: Dict[str, torch.Tensor] = {}
    for rank in range(world):
        saved_start, saved_end = saved_rows(manifest, rank)
        low, high = max(start, saved_start), min(end, saved_end)
        if low >= high:
            continue
        path = os.path.join(step_dir, rank_file(rank))
        saved = base if rank == 0 else read_rank_file(step_dir, manifest, rank, mmap=True)
        pieces = head_rows(saved["head"], path)
        if pieces["weight"].shape[0] != saved_end - saved_start:
            raise DamagedCheckpoint(
                f"{path}: holds {pieces['weight'].shape[0]} class centres, its manifest "
                f"records classes [{saved_start}, {saved_end})"
            )
        if rows and sorted(pieces) != sorted(rows):  # every row of the new shard must come from some file
            raise DamagedCheckpoint(
                f"{path}: its head optimizer state {sorted(pieces)} differs from the other rank files' {sorted(rows)}"
            )
        for name, tensor in pieces.items():
            if name not in rows:
                rows[name] = torch.empty((count,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
            rows[name][low - start : high - start] = tensor[low - saved_start : high - saved_start]
    module = {**head["module"], "weight": rows.pop("weight")}
    optimizer = {**head["optimizer"], "state": dict(head["optimizer"]["state"])}
    if param is not None:
        optimizer["state"][param] = {**optimizer["state"][param], **rows}
    rng = (
        base["rng"] if env.rank % world == 0 else read_rank_file(step_dir, manifest, env.rank % world, mmap=True)["rng"]
    )
    return {**base, "head": {**head, "module": module, "optimizer": optimizer}, "rng": rng}


# The merged file's names for the head optimizer's per-row state (others are saved as "head_<name>").
ROW_STATE_NAMES = {"momentum_buffer": "head_momentum", "exp_avg": "head_exp_avg", "exp_avg_sq": "head_exp_avg_sq"}


def head_rows(head_state: Dict[str, Any], path: str) -> Dict[str, torch.Tensor]:
    """A rank file's head shard and the head optimizer's per-row state: {"weight": [n, D], "momentum_buffer":
    [n, D], ...} (the optimizer's state tensors shaped like the weight; none before its first step)."""
    try:
        weight = head_state["module"]["weight"]
        per_param = head_state["optimizer"]["state"].values()
    except (KeyError, TypeError, AttributeError):
        raise DamagedCheckpoint(f"{path}: has no Partial FC head shard and optimizer state") from None
    rows = {"weight": weight}
    for param_state in per_param:
        shaped = {
            name: value
            for name, value in param_state.items()
            if isinstance(value, torch.Tensor) and value.shape == weight.shape
        }
        rows.update(shaped)
    return rows


def _run_config(step_dir: str) -> Dict[str, Any]:
    """The resolved config (config.json) of the run that wrote `step_dir` (<run>/checkpoints/step_*)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(step_dir))), "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the run directory of {step_dir} must hold its config.json")
    return _read_json(path)


def export_backbone(step_dir: str) -> Dict[str, torch.Tensor]:
    """The backbone's state_dict saved in `step_dir`, from rank 0's file as fr-train's `model.pt` (the weights
    are the same on every rank; BatchNorm's running statistics are rank 0's); from a DeepSpeed checkpoint, the
    fp32 backbone consolidated from the engine's files."""
    state = read_rank_file(step_dir, read_manifest(step_dir), 0, mmap=True)
    if isinstance(state.get("strategy"), dict) and state["strategy"].get("engine") == "deepspeed":
        from fr.train.deepspeed_strategy import consolidated_backbone

        return consolidated_backbone(step_dir)
    try:
        model = state["strategy"]["model"]
    except (KeyError, TypeError):
        raise DamagedCheckpoint(f"{os.path.join(step_dir, rank_file(0))}: has no backbone state") from None
    return {name: tensor.clone() for name, tensor in model.items()}


def merge_checkpoint(step_dir: str) -> Dict[str, Any]:
    """One file's worth of the checkpoint in `step_dir`: `backbone` (model.pt's state_dict), `head_weight` [C, D]
    in class order, the head optimizer's per-row state as [C, D] tensors (`head_momentum` for SGD with momentum;
    `head_exp_avg`, `head_exp_avg_sq` for AdamW), `step`, `epoch` and the run's resolved `config`.

    Rank files are mapped, not read, so the merged [C, D] tensors are the only full-size allocations."""
    manifest = read_manifest(step_dir)
    world, num_classes = manifest["world_size"], manifest["settings"].get("num_classes")
    if not isinstance(num_classes, int):
        raise DamagedCheckpoint(f"{os.path.join(step_dir, MANIFEST)}: settings has no class count")
    merged: Dict[str, Any] = {"backbone": export_backbone(step_dir)}
    first_names: List[str] = []
    for rank in range(world):
        path = os.path.join(step_dir, rank_file(rank))
        rows = head_rows(read_rank_file(step_dir, manifest, rank, mmap=True)["head"], path)
        start, count = shard_range(num_classes, world, rank)
        if rows["weight"].shape[0] != count:
            raise DamagedCheckpoint(
                f"{path}: holds {rows['weight'].shape[0]} class centres, expected {count} "
                f"(classes [{start}, {start + count}) of {num_classes} over {world} ranks)"
            )
        if rank == 0:
            first_names = sorted(rows)
        elif sorted(rows) != first_names:  # every row of every merged tensor must come from some rank
            raise DamagedCheckpoint(
                f"{path}: its head optimizer state {sorted(rows)} differs from rank 0's {first_names}"
            )
        for name, tensor in rows.items():
            key = "head_weight" if name == "weight" else ROW_STATE_NAMES.get(name, f"head_{name}")
            if key not in merged:
                merged[key] = torch.empty((num_classes,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
            merged[key][start : start + count] = tensor
    merged.update(step=int(manifest["step"]), epoch=manifest.get("epoch"), config=_run_config(step_dir))
    return merged
