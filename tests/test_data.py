"""Torch data path: record dataset labels/pixels, flip, normalisation, rank sharding, clear errors."""

import random

import numpy as np
import pytest
import torch

from fr.config import DataConfig
from fr.data.base import DataError
from fr.data.datasets import RecordDataset
from fr.data.loader import build_loader
from fr.data.recordio import IndexedRecordIO, IRHeader, pack
from fr.distributed import DistEnv
from tests.helpers.images import png


@pytest.fixture()
def noise_records(record_dir, tmp_path):
    """4 identities x 5 images of seeded noise (PNG, so pixels are exact); returns (root, images by label)."""
    rng = np.random.default_rng(0)
    flat_images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(20)]
    root = record_dir(4, 5, image=lambda k: png(flat_images[k]), root=tmp_path)
    return root, {identity: flat_images[identity * 5 : (identity + 1) * 5] for identity in range(4)}


def test_dataset_yields_exact_pixels_and_labels(noise_records):
    root, images = noise_records
    dataset = RecordDataset(str(root), flip=False)
    assert len(dataset) == 20 and dataset.num_classes == 4 and dataset.layout.insightface
    for index in range(20):
        chw, label = dataset[index]
        assert label == index // 5
        assert torch.equal(chw, torch.from_numpy(images[label][index % 5].transpose(2, 0, 1).copy()))


def test_flip_is_a_horizontal_mirror(noise_records):
    root, images = noise_records
    dataset = RecordDataset(str(root), flip=True)
    original = torch.from_numpy(images[0][0].transpose(2, 0, 1).copy())
    seen = {"plain": 0, "flipped": 0}
    random.seed(0)  # the flip draws from Python's random (seeded per DataLoader worker)
    for _ in range(40):
        chw, _ = dataset[0]
        if torch.equal(chw, original):
            seen["plain"] += 1
        else:
            assert torch.equal(chw, original.flip(-1))
            seen["flipped"] += 1
    assert seen["plain"] > 5 and seen["flipped"] > 5


def test_loader_normalises_and_shards_across_ranks(noise_records):
    root, images = noise_records
    cfg = DataConfig(root=str(root), batch_size=4, num_workers=0)
    seen = []
    for rank in range(2):
        loader = build_loader(cfg, DistEnv(rank=rank, world_size=2), seed=1)
        loader.dataset.flip = False
        assert len(loader) == 2  # 10 images per rank, batches of 4, last partial batch dropped
        for batch, labels in loader:
            assert batch.dtype == torch.float32 and batch.shape == (4, 3, 112, 112)
            for x, y in zip(batch, labels):
                match = [
                    i
                    for i, img in enumerate(images[int(y)])
                    if np.allclose(x.numpy(), (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
                ]
                assert len(match) == 1
                seen.append((int(y), match[0]))
    assert len(seen) == len(set(seen)) == 16  # no image twice across ranks


def test_close_stops_the_workers_of_a_loader_caught_in_a_reference_cycle(noise_records):
    cfg = DataConfig(root=str(noise_records[0]), batch_size=4, num_workers=2)
    loader = build_loader(cfg, DistEnv(), seed=1)
    loader.cycle = loader  # as a trainer's listeners and closures make one: only the collector would free it
    next(iter(loader))  # the persistent workers start and prefetch
    workers = list(loader.loader._iterator._workers)
    loader.close()
    # Heard the stop and left (exit code 0) rather than being terminated after a join timeout (-SIGTERM).
    assert [worker.exitcode for worker in workers] == [0, 0]
    loader.close()  # twice is harmless


def test_training_leaves_no_loader_worker_behind(tiny_run, tmp_path):
    import multiprocessing

    from fr.train.run import train

    before = set(multiprocessing.active_children())
    train(tiny_run.config(str(tmp_path / "run"), **{"data.num_workers": 2, "train.max_steps": 2, "eval.every": 0}))
    assert set(multiprocessing.active_children()) <= before


def test_missing_directory_and_bad_labels(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        RecordDataset(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train.rec not found"):
        RecordDataset(str(tmp_path / "empty"))
    rec = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    rec.write_idx(0, pack(IRHeader(2, [4.0, 6.0], 0, 0), b""))
    rec.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), png(np.zeros((112, 112, 3), np.uint8))))
    rec.write_idx(2, pack(IRHeader(0, 5.0, 2, 0), png(np.zeros((112, 112, 3), np.uint8))))
    rec.write_idx(3, pack(IRHeader(0, 1.0, 3, 0), b"not an image"))
    rec.write_idx(4, pack(IRHeader(2, [1.0, 2.0], 0, 0), b""))
    rec.write_idx(5, pack(IRHeader(2, [2.0, 4.0], 0, 0), b""))
    rec.close()
    # Label 5 is outside [0, 2): the record is skipped when the dataset is built, before any training.
    dataset = RecordDataset(str(tmp_path))
    assert dataset.keys == [1, 3] and dataset.skipped == 1
    with pytest.raises(DataError, match="data.num_classes=1 but .* holds 2 classes"):
        RecordDataset(str(tmp_path), num_classes=1)
