"""Crash-safe writes (evaluation.fileio): a failing writer leaves the previous file intact and no temporary
behind, contents reach the disk before the rename, and new files get the umask's permissions."""

import json
import os
import stat
import sys
import types

import numpy as np
import pytest
import torch

from evaluation.bin_format import write_bin
from evaluation.fileio import atomic_write, atomic_write_json, create_temporary
from evaluation.metrics import Roc
from evaluation.plot import plot_roc
from fr.data.writer import InsightfaceRecordWriter
from fr.fileio import remove_stale_temporaries
from fr.train.model_file import atomic_save


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old checkpoint")

    def crash(fh):
        fh.write(b"half of a new chec")
        raise KeyboardInterrupt  # e.g. the job is killed mid-save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), crash)
    assert target.read_bytes() == b"old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_json_round_trip_and_directory_creation(tmp_path):
    path = tmp_path / "new" / "results.json"
    atomic_write_json(str(path), {"accuracy": 0.975})
    assert json.loads(path.read_text()) == {"accuracy": 0.975}


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_outputs_get_the_permissions_the_umask_allows(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask  # what open(path, "w") gives; tempfile.mkstemp's files are 0600 whatever the umask
    outputs = {
        "results.json": lambda p: atomic_write_json(p, {}),
        "model.pt": lambda p: atomic_save({"w": torch.zeros(2)}, p),
        "lfw.bin": lambda p: write_bin(p, [b"a", b"b"], [True]),
    }
    for name, write in outputs.items():
        write(str(tmp_path / name))
        assert mode(tmp_path / name) == expected, name
    with InsightfaceRecordWriter(str(tmp_path / "rec")) as writer:
        writer.add_identity([b"jpeg"])
    assert mode(tmp_path / "rec" / "train.rec") == mode(tmp_path / "rec" / "train.idx") == expected


def test_contents_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The record writer's renames (and atomic_write's) come after an fsync of the file they publish."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with InsightfaceRecordWriter(str(tmp_path)) as writer:
        writer.add_identity([b"jpeg"])
    atomic_write_json(str(tmp_path / "results.json"), {})
    renamed = [name for kind, name in events if kind == "replace"]
    assert len(renamed) == 3
    for name in renamed:
        assert events.index(("fsync", name)) < events.index(("replace", name)), events


def test_a_killed_writes_temporary_is_recognised_as_stale(tmp_path):
    tmp = create_temporary(str(tmp_path / "results.json"))  # what a run killed inside atomic_write leaves
    (tmp_path / "notes.txt").write_text("mine")
    assert remove_stale_temporaries(str(tmp_path), r"results\.json") == [tmp]
    assert os.listdir(tmp_path) == ["notes.txt"]


class _FakeFigure:
    """Stands in for a matplotlib figure: savefig writes some bytes, then fails when told to."""

    def __init__(self, fail: bool):
        self.fail, self.closed = fail, False

    def savefig(self, fh, **kwargs):
        assert kwargs["format"] == "png"
        fh.write(b"\x89PNG new")
        if self.fail:
            raise OSError(28, "No space left on device")


def _fake_matplotlib(figure: _FakeFigure) -> dict:
    axes = types.SimpleNamespace(
        **{
            name: lambda *a, **k: None
            for name in ("plot", "set_xscale", "set_xlim", "set_ylim", "set_xlabel", "set_ylabel", "grid", "legend")
        }
    )
    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda **kwargs: (figure, axes)
    pyplot.close = lambda fig: setattr(fig, "closed", True)
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = lambda backend: None
    matplotlib.pyplot = pyplot
    return {"matplotlib": matplotlib, "matplotlib.pyplot": pyplot}


@pytest.mark.parametrize("fail", [False, True])
def test_the_roc_plot_is_written_atomically(tmp_path, monkeypatch, fail):
    figure = _FakeFigure(fail)
    for name, module in _fake_matplotlib(figure).items():
        monkeypatch.setitem(sys.modules, name, module)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "roc.png"
    path.write_bytes(b"\x89PNG old")
    roc = Roc(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    if fail:
        with pytest.raises(OSError):
            plot_roc(roc, str(path))
        assert path.read_bytes() == b"\x89PNG old"
    else:
        plot_roc(roc, str(path))
        assert path.read_bytes() == b"\x89PNG new" and synced
    assert os.listdir(tmp_path) == ["roc.png"] and figure.closed
