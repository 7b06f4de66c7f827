"""fr-train's outputs and error boundary: an earlier run is never overwritten by surprise, every check runs
before anything is written, a failed evaluation keeps the trained model, and the user's mistakes are one line."""

import errno
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from evaluation.bin_format import encode_png
from evaluation.fileio import atomic_write
from fr.cli.common import run_cli
from fr.cli.train import main as train_main
from fr.config import ConfigError
from fr.heads import PartialFC
from fr.train.trainer import Trainer
from tests.helpers.tiny_run import RECIPE

OUTPUTS = ("model.pt", "results.json", "config.json", os.path.join("checkpoints", "latest.json"))


def quick(**extra):
    """Two steps, evaluated only at the end, a checkpoint after each step."""
    values = {"train.max_steps": 2, "eval.every": 0, "eval.at_start": "false", "output.checkpoint_every": 1}
    values.update(extra)
    return values


def train_cli(tiny_run, out_dir, **extra):
    return train_main(tiny_run.argv(out_dir, **quick(**extra)))


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("fr-train: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read() for name in OUTPUTS}


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("finished") / "run")
    assert train_cli(tiny_run, out_dir) == 0
    return out_dir


@pytest.fixture()
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run, with a file fr did not write."""
    out_dir = str(tmp_path / "run")
    shutil.copytree(finished_run, out_dir)
    with open(os.path.join(out_dir, "notes.txt"), "w") as fh:
        fh.write("mine")
    return out_dir


def test_fresh_run_into_a_finished_run_is_refused_and_changes_nothing(tiny_run, run_copy, capsys):
    before = snapshot(run_copy)
    listing = sorted(os.listdir(run_copy))
    assert train_cli(tiny_run, run_copy) == 2
    err = one_line_error(capsys)
    assert run_copy in err and "model.pt" in err and "train.resume=auto" in err and "output.overwrite=true" in err
    assert snapshot(run_copy) == before and sorted(os.listdir(run_copy)) == listing


def test_overwrite_replaces_the_earlier_run_and_keeps_foreign_files(tiny_run, run_copy, capsys):
    old_model = open(os.path.join(run_copy, "model.pt"), "rb").read()
    assert train_cli(tiny_run, run_copy, **{"train.max_steps": 1, "output.overwrite": "true"}) == 0
    assert "replaces the earlier run's model.pt" in capsys.readouterr().out  # the log says what is replaced
    assert json.load(open(os.path.join(run_copy, "results.json")))["steps"] == 1
    assert json.load(open(os.path.join(run_copy, "config.json")))["output"]["overwrite"] is False  # not inherited
    assert open(os.path.join(run_copy, "model.pt"), "rb").read() != old_model
    # The earlier run's step 2 checkpoint is gone: nothing can resume it on top of this run's config.
    assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == ["latest.json", "step_00000001"]
    assert len(os.listdir(os.path.join(run_copy, "tensorboard"))) == 1
    assert open(os.path.join(run_copy, "notes.txt")).read() == "mine"


def test_refused_resume_leaves_config_json_unchanged(tiny_run, run_copy, capsys):
    before = snapshot(run_copy)
    assert train_cli(tiny_run, run_copy, **{"train.resume": "auto", "model.embedding_size": 32}) == 2
    assert "model.embedding_size was 64" in one_line_error(capsys)
    assert snapshot(run_copy) == before


def write_pairs(path, pairs):
    """A well-formed .bin with `pairs` pairs, pickled as insightface does."""
    image = encode_png(np.zeros((112, 112, 3), dtype=np.uint8))
    with open(path, "wb") as fh:
        pickle.dump(([image] * (2 * pairs), [i % 2 == 0 for i in range(pairs)]), fh, protocol=4)


def count_steps(monkeypatch):
    calls = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, *a: calls.append(1) or original(self, *a))
    return calls


def test_a_bin_with_fewer_pairs_than_folds_fails_before_training_and_writing(tiny_run, tmp_path, capsys, monkeypatch):
    small = str(tmp_path / "two.bin")
    write_pairs(small, 2)
    out_dir = str(tmp_path / "run")
    steps = count_steps(monkeypatch)
    assert train_cli(tiny_run, out_dir, **{"eval.bins": small, "eval.at_start": "true"}) == 2
    assert "two.bin" in one_line_error(capsys)
    assert steps == [] and not os.path.exists(out_dir)


def _bad_bin_on_two_ranks(rank, world_size, tiny_run, out_dir, small):
    from fr.distributed import env_from_group
    from fr.train.run import train

    try:
        train(tiny_run.config(out_dir, **quick(**{"eval.bins": small})), env_from_group())
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_a_start_up_check_on_rank_0_stops_every_rank(tiny_run, tmp_path, run_distributed):
    small = str(tmp_path / "two.bin")
    write_pairs(small, 2)
    results = run_distributed(_bad_bin_on_two_ranks, 2, tiny_run, str(tmp_path / "run"), small, timeout_s=60)
    assert all(r is not None and "two.bin" in r for r in results), results


def test_a_failed_final_evaluation_still_writes_model_and_results(tiny_run, tmp_path, capsys, monkeypatch):
    import fr.train.verification_hook as hook

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(hook, "evaluate", broken)
    out_dir = str(tmp_path / "run")
    assert train_cli(tiny_run, out_dir) == 1
    err = one_line_error(capsys)
    assert "evaluation exploded" in err and "model.pt" in err
    results = json.load(open(os.path.join(out_dir, "results.json")))
    assert results["steps"] == 2 and "evaluation exploded" in results["verification_error"]
    assert os.path.getsize(os.path.join(out_dir, "model.pt")) > 0


def write_recipe(tmp_path, body):
    path = tmp_path / "recipe.py"
    path.write_text(f"from fr.config import inherit\nconfig = inherit({RECIPE!r}, {RECIPE!r})\n{body}")
    return str(path)


def test_recipe_with_a_syntax_error_is_one_line_with_file_and_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "config.optim.lr = (0.1\n")
    assert train_main([recipe]) == 2
    err = one_line_error(capsys)
    assert f"{recipe}:3:" in err


def test_recipe_raising_names_the_file_and_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "config.optim.lr = 0.1\nconfig.optim.lr = 1 / 0\n")
    assert train_main([recipe]) == 2
    assert f"{recipe}:4: ZeroDivisionError" in one_line_error(capsys)


def test_recipe_setting_a_wrong_type_names_the_key(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "config.train.max_steps = 'many'\n")
    assert train_main([recipe]) == 2
    err = one_line_error(capsys)
    assert recipe in err and "train.max_steps expects an int" in err and "'many'" in err


def test_output_dir_under_a_regular_file_is_one_line(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert train_cli(tiny_run, str(blocker / "run")) == 2
    err = one_line_error(capsys)
    assert str(blocker / "run") in err and "under a file" in err


def test_non_finite_loss_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    forward = PartialFC.forward
    monkeypatch.setattr(PartialFC, "forward", lambda self, *a: forward(self, *a) * float("nan"))
    assert train_cli(tiny_run, str(tmp_path / "run"), **{"train.max_nonfinite_steps": 1}) == 2
    err = one_line_error(capsys)
    assert "the loss became nan at step 1" in err and "optim.lr" in err


def test_stale_temporaries_of_fr_are_removed_and_foreign_files_stay(tiny_run, tmp_path):
    out_dir = tmp_path / "run"
    (out_dir / "checkpoints").mkdir(parents=True)
    stale = [out_dir / "checkpoints" / "latest.json.abc.tmp", out_dir / "config.json.x_1yz9q2.tmp"]
    foreign = [
        out_dir / "notes.tmp.txt",
        out_dir / "latest.json.tmp",
        out_dir / "mine.json.abc.tmp",
        out_dir / "checkpoints" / "latest.json.a.b.tmp",
    ]
    for path in stale + foreign:
        path.write_text("x")
    # A killed run is restarted with train.resume=auto; it had no complete checkpoint yet.
    assert train_cli(tiny_run, str(out_dir), **{"train.resume": "auto"}) == 0
    assert not any(path.exists() for path in stale)
    assert all(path.read_text() == "x" for path in foreign)


def test_a_real_bug_keeps_its_traceback(tiny_run, tmp_path, monkeypatch):
    """A plain ValueError/TypeError from fr's own code is a bug: it is not turned into a one-line message."""
    import fr.train.run as run

    for error in (ValueError("a bug, not a setting"), TypeError("another bug")):

        def buggy(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(run, "build_loader", buggy)
        with pytest.raises(type(error), match="bug"):
            train_cli(tiny_run, str(tmp_path / "run"))


def test_cli_boundary_prints_os_errors_with_a_path_and_raises_others(capsys, monkeypatch):
    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/a/model.pt")

    assert run_cli("fr-x", full_disk) == 2
    assert capsys.readouterr().err.strip() == f"fr-x: error: /runs/a/model.pt: {os.strerror(errno.ENOSPC)}"
    with pytest.raises(OSError):  # no path: not something the user can be pointed at
        run_cli("fr-x", lambda: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    monkeypatch.setenv("FR_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        run_cli("fr-x", lambda: (_ for _ in ()).throw(ConfigError("bad key")))


def test_atomic_write_names_the_target_when_the_disk_fills(tmp_path):
    target = tmp_path / "results.json"

    def fill(fh):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(str(target), fill)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert os.listdir(tmp_path) == []  # the temporary file is gone too
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info:  # not makedirs' "File exists"
        atomic_write(str(tmp_path / "file" / "results.json"), lambda fh: fh.write(b"{}"))
    assert info.value.filename == str(tmp_path / "file")
