"""Data-set writers touch only what fr wrote: foreign files survive byte for byte, inputs are never outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fr.cli.data import main as data_main
from fr.config import SynthConfig
from fr.data.base import DataError
from fr.data.ownership import OUTPUT_MANIFEST, staging_prefix
from fr.data.pack import pack_images
from fr.data.writer import InsightfaceRecordWriter
from fr.synth.dataset import ensure_synthetic, generate

TINY = ["--identities", "2", "--per-identity", "2", "--holdout-identities", "2", "--pairs", "20", "--workers", "1"]
TINY_CFG = dict(identities=2, per_identity=2, holdout_identities=2, pairs=20, workers=1)


def snapshot(root):
    """{relative path: bytes, or '<dir>' / '<link> target'} for everything under root (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "<link> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "<dir>"
            else:
                with open(path, "rb") as fh:
                    found[rel] = fh.read()
    return found


def users_folder(root):
    """A directory of the user's own work: a note, a thesis in a sub-folder, and a record file."""
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("my notes\n")
    (root / "sub" / "thesis.tex").write_text("\\documentclass{article}\n")
    (root / "data.rec").write_bytes(bytes(range(256)) * 4)
    return root


def error_line(capsys):
    """The CLI's one error line (logging from an earlier test's CLI may write to stderr too)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fr-data: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_synth_refuses_a_directory_of_foreign_files_and_leaves_it_intact(tmp_path, capsys):
    root = users_folder(tmp_path / "work")
    before = snapshot(root)
    assert data_main(["synth", "--out", str(root), *TINY]) == 2
    err = error_line(capsys)
    first = os.path.join(str(root), sorted(os.listdir(root))[0])  # data.rec, by name
    assert first in err
    assert snapshot(root) == before


def test_synth_out_dot_refused_in_a_folder_of_foreign_files(tmp_path, capsys, monkeypatch):
    root = users_folder(tmp_path / "work")
    before = snapshot(tmp_path)
    monkeypatch.chdir(root)
    assert data_main(["synth", "--out", ".", *TINY]) == 2
    assert os.path.join(".", "data.rec") in error_line(capsys)
    assert snapshot(tmp_path) == before


def test_synth_replaces_its_own_earlier_output(tmp_path, capsys):
    out = tmp_path / "set"
    assert data_main(["synth", "--out", str(out), *TINY, "--seed", "1"]) == 0
    assert data_main(["synth", "--out", str(out), *TINY, "--seed", "2"]) == 0
    fresh = tmp_path / "fresh"
    generate(str(fresh), SynthConfig(seed=2, **TINY_CFG))
    data = {name: body for name, body in snapshot(out).items() if name != OUTPUT_MANIFEST}  # its stamps differ
    # nothing of seed 1
    assert data == {name: body for name, body in snapshot(fresh).items() if name != OUTPUT_MANIFEST}
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 2
    listed = json.loads((out / OUTPUT_MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(set(os.listdir(out)) - {OUTPUT_MANIFEST})
    assert {"train.rec", "train.idx", "synthetic_val.bin", "synthetic.json"} == set(listed)


def test_a_file_fr_wrote_but_the_user_changed_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "set"
    generate(str(out), SynthConfig(seed=1, **TINY_CFG))
    (out / "train.rec").write_bytes(b"the user's own records now")
    before = snapshot(out)
    assert data_main(["synth", "--out", str(out), *TINY, "--seed", "2"]) == 2
    assert "train.rec has changed since fr wrote it" in error_line(capsys)
    assert snapshot(out) == before


def test_a_manifest_cannot_point_outside_its_directory(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "set"
    out.mkdir()
    (out / OUTPUT_MANIFEST).write_text(json.dumps({"files": {"../victim.txt": {"size": 7, "mtime_ns": 0}}}))
    assert data_main(["synth", "--out", str(out), *TINY]) == 2
    assert OUTPUT_MANIFEST in error_line(capsys)
    assert victim.read_text() == "keep me"


def test_changed_synth_settings_refused_when_data_root_holds_foreign_files(tmp_path):
    root = tmp_path / "data"
    ensure_synthetic(str(root), SynthConfig(seed=4, **TINY_CFG))
    (root / "extra.bin").write_bytes(b"a verification set of the user's")
    (root / "run1").mkdir()
    (root / "run1" / "model.pt").write_bytes(b"weights")
    before = snapshot(root)
    with pytest.raises(DataError) as raised:
        ensure_synthetic(str(root), SynthConfig(seed=5, **TINY_CFG))
    message = str(raised.value)
    assert str(root / "extra.bin") in message and "seed" in message and "another data.root" in message
    assert "\n" not in message
    assert snapshot(root) == before
    ensure_synthetic(str(root), SynthConfig(seed=4, **TINY_CFG))  # the cached set is still used as is
    assert snapshot(root) == before


def test_changed_synth_settings_regenerate_beside_the_loader_cache(tmp_path):
    root = tmp_path / "data"
    ensure_synthetic(str(root), SynthConfig(seed=4, **TINY_CFG))
    (root / ".fr_cache").mkdir()
    (root / ".fr_cache" / "index.json").write_text("{}")
    ensure_synthetic(str(root), SynthConfig(seed=5, **TINY_CFG))
    assert json.loads((root / "synthetic.json").read_text())["seed"] == 5
    assert (root / ".fr_cache" / "index.json").read_text() == "{}"


def test_a_failed_run_leaves_the_earlier_output_and_no_staging(tmp_path, monkeypatch):
    out = tmp_path / "set"
    generate(str(out), SynthConfig(seed=1, **TINY_CFG))
    before = snapshot(out)

    def broken(*args, **kwargs):
        raise RuntimeError("disk trouble")

    monkeypatch.setattr("fr.synth.dataset.write_bin", broken)
    with pytest.raises(RuntimeError):
        generate(str(out), SynthConfig(seed=2, **TINY_CFG))
    assert snapshot(out) == before
    with pytest.raises(RuntimeError):
        generate(str(tmp_path / "new"), SynthConfig(seed=2, **TINY_CFG))
    assert not (tmp_path / "new").exists()


def test_stale_staging_of_a_dead_fr_process_is_cleaned_other_lookalikes_refused(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    out = tmp_path / "set"
    generate(str(out), SynthConfig(seed=1, **TINY_CFG))
    stale = out / f"{staging_prefix(pid)}abc"
    stale.mkdir()
    (stale / "train.rec").write_bytes(b"half")
    live = out / f"{staging_prefix(os.getpid())}def"  # a running process's: left alone
    live.mkdir()
    (live / "train.rec").write_bytes(b"in progress")
    generate(str(out), SynthConfig(seed=2, **TINY_CFG))
    assert not stale.exists() and (live / "train.rec").read_bytes() == b"in progress"
    lookalike = out / f"{staging_prefix(pid)}xyz"
    (lookalike / "photos").mkdir(parents=True)
    with pytest.raises(DataError, match=lookalike.name):
        generate(str(out), SynthConfig(seed=3, **TINY_CFG))
    assert (lookalike / "photos").is_dir()


@pytest.mark.parametrize("where", ["link", "inside", "holds"])
def test_shuffle_refuses_an_output_that_resolves_into_its_source(record_dir, tmp_path, capsys, where):
    source = record_dir(2, 3, image=lambda k: bytes([k // 3, k % 3]) * 50, root=tmp_path / "records")
    link = tmp_path / "link"
    link.symlink_to(source, target_is_directory=True)
    out = {"link": link, "inside": link / "shuffled", "holds": tmp_path}[where]
    before = snapshot(tmp_path)
    assert data_main(["shuffle", str(source), "--out", str(out), "--quiet"]) == 2
    assert os.path.realpath(source) in error_line(capsys)
    assert snapshot(tmp_path) == before


def image_folder(root):
    rng = np.random.default_rng(0)
    for name in ("ann", "bo"):
        (root / name).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{j}.png")
    return root


def test_pack_refuses_an_output_that_is_its_source_through_a_symlink(tmp_path, capsys):
    faces = image_folder(tmp_path / "faces")
    link = tmp_path / "link"
    link.symlink_to(faces, target_is_directory=True)
    before = snapshot(tmp_path)
    for out in (link, link / "ann"):
        assert data_main(["pack", "--folder", str(faces), "--out", str(out), "--workers", "1", "--quiet"]) == 2
        assert "apart from its input" in error_line(capsys)
    assert snapshot(tmp_path) == before


def test_pack_lst_refuses_an_output_holding_the_images(tmp_path, capsys):
    faces = image_folder(tmp_path / "faces")
    lst = tmp_path / "train.lst"
    lst.write_text("0\t0\tfaces/ann/0.png\n1\t1\tfaces/bo/0.png\n")
    link = tmp_path / "link"
    link.symlink_to(faces / "ann", target_is_directory=True)
    before = snapshot(tmp_path)
    assert data_main(["pack", "--lst", str(lst), "--out", str(link), "--workers", "1", "--quiet"]) == 2
    assert os.path.realpath(faces / "ann") in error_line(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--identities", "--per-identity", "--pairs"])
def test_synth_with_nothing_to_render_is_an_error(tmp_path, capsys, flag):
    args = dict(zip(TINY[::2], TINY[1::2]))
    args[flag] = "0"
    out = tmp_path / "set"
    assert data_main(["synth", "--out", str(out), *[x for kv in args.items() for x in kv]]) == 2
    assert flag in error_line(capsys)
    assert not out.exists()


def test_pack_with_no_images_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        pack_images([], str(tmp_path / "out"), workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_shuffle_of_a_set_without_images_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    InsightfaceRecordWriter(str(empty)).close()  # a header and no identities
    assert data_main(["shuffle", str(empty), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "holds no readable image records" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_record_writer_never_overwrites_nor_truncates_the_users_files(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"precious")
    with pytest.raises(DataError, match="already exists"):
        InsightfaceRecordWriter(str(tmp_path))
    assert (tmp_path / "train.rec").read_bytes() == b"precious"
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.rec.partial").write_bytes(b"also precious")
    with InsightfaceRecordWriter(str(other)) as writer:
        writer.add_identity([b"x"])
    assert (other / "train.rec.partial").read_bytes() == b"also precious"
