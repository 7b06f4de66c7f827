"""Crash-safe writes: a failing writer leaves the previous file intact and no temporary behind."""
import json

import pytest

from fr.fileio import atomic_write, atomic_write_json


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
