"""Fixtures the test modules share; the code behind them is in tests/helpers (importable by spawned workers)."""

import pytest

from tests.helpers import checkpoint, distributed, onnx_export, records
from tests.helpers.tiny_run import TinyRun


@pytest.fixture(scope="session")
def record_dir(tmp_path_factory):
    """Factory: record_dir(identities, per_identity, image=grey_image, bad=None, root=None) writes an
    insightface-layout set (see tests.helpers.records.write_record_set) to `root`, by default a new directory,
    and returns that directory."""

    def make(identities, per_identity, image=records.grey_image, bad=None, root=None):
        root = root if root is not None else tmp_path_factory.mktemp("records")
        return records.write_record_set(root, identities, per_identity, image, bad)

    return make


@pytest.fixture(scope="session")
def run_distributed():
    """run_distributed(fn, world_size, *args, timeout_s=120): fn(rank, world_size, *args) on gloo ranks."""
    return distributed.run_distributed


@pytest.fixture()
def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return distributed.free_port()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny run (TinyRun: recipe, overrides, argv, config) over one data directory for the whole session."""
    return TinyRun(data=str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def export_onnx():
    """export_onnx(model, path): the backbone as ONNX with a dynamic batch axis."""
    return onnx_export.export_onnx


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """tiny_checkpoint(run_dir, embedding_size, data_root=None) -> model: config.json and model.pt of a slim
    iresnet18 written to `run_dir`, as fr-eval reads them."""
    return checkpoint.write_tiny_checkpoint
