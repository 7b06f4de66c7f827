"""DALI loader (CPU pipeline) over an unshuffled insightface-layout file: sharding, labels, resume, config."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fr.config import DataConfig
from fr.data.loader import build_loader, resolve_loader_name
from fr.data.writer import InsightfaceRecordWriter
from fr.distributed import DistEnv
from tests.helpers.images import flip_probe, jpeg
from tests.helpers.records import image_ids

pytest.importorskip("nvidia.dali")  # a guard only: the `test` extra installs DALI, so CI runs these

IDENTITIES, PER_IDENTITY = 8, 8


@pytest.fixture(scope="module")
def grey_records(record_dir):
    """Image k (key k+1) is a flat grey of value 3k, so pixels identify the image and its label k // 8."""
    return record_dir(IDENTITIES, PER_IDENTITY)


def loader_for(root, rank, world=2, batch=4, **kw):
    cfg = DataConfig(
        root=str(root), loader="dali", batch_size=batch, num_workers=1, cache_dir=str(root) + "_cache", **kw
    )
    return build_loader(cfg, DistEnv(rank=rank, world_size=world), seed=5)


def test_two_shards_yield_every_image_once_per_epoch_with_its_label(grey_records):
    before = {name: (grey_records / name).read_bytes() for name in os.listdir(grey_records)}
    loaders = [loader_for(grey_records, rank) for rank in range(2)]
    assert [len(loader) for loader in loaders] == [8, 8]
    assert loaders[0].dataset.num_classes == IDENTITIES and len(loaders[0].dataset) == 64
    orders = []
    for epoch in range(2):
        seen = []
        for loader in loaders:
            loader.set_epoch(epoch)
            for images, labels in loader:
                assert images.dtype == torch.float32 and images.shape == (4, 3, 112, 112)
                assert labels.dtype == torch.int64
                assert float(images.min()) >= -1.0 and float(images.max()) <= 1.0
                ids = image_ids(images)
                assert labels.tolist() == [k // PER_IDENTITY for k in ids]  # header/identity records never appear
                seen.extend(ids)
        assert sorted(seen) == list(range(64))  # every image exactly once over both shards
        orders.append(seen)
    assert orders[0] != orders[1]  # epochs reshuffle
    # the user's files are untouched; the image-only index lives in the cache directory
    assert {name: (grey_records / name).read_bytes() for name in os.listdir(grey_records)} == before


def test_mid_epoch_resume_continues_where_it_stopped(grey_records):
    reference = loader_for(grey_records, 0)
    epochs = []
    for epoch in range(2):
        reference.set_epoch(epoch)
        epochs.append([image_ids(x) for x, _ in reference])
    first = loader_for(grey_records, 0)
    first.set_epoch(0)
    list(first)
    first.set_epoch(1)
    it = iter(first)
    head = [image_ids(next(it)[0]) for _ in range(3)]
    state = first.state_dict()
    resumed = loader_for(grey_records, 0)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)
    assert head + [image_ids(x) for x, _ in resumed] == epochs[1]


def test_uneven_shards_give_equal_batch_counts(grey_records):
    loaders = [loader_for(grey_records, rank, world=3, batch=5) for rank in range(3)]
    counts = [sum(1 for _ in loader) for loader in loaders]
    assert counts == [len(loaders[0])] * 3 == [4] * 3  # 64 // 3 = 21 images per rank -> 4 batches of 5


def test_augmentations_and_auto_choice(grey_records):
    assert resolve_loader_name("auto") == "dali"
    loader = loader_for(grey_records, 0, augment=["resize", "blur", "hsv", "gray"])
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 112, 112) and labels.shape == (4,)


def test_fr_train_runs_on_the_dali_loader(tmp_path, capsys, tiny_run):
    import json

    from fr.cli.train import main as train_main

    recipe = tiny_run.recipe
    overrides = {
        "data.root": str(tmp_path / "data"),
        "data.loader": "dali",
        "data.synth.identities": 8,
        "data.synth.per_identity": 8,
        "data.synth.holdout_identities": 12,
        "data.synth.pairs": 40,
        "data.synth.workers": 1,
        "data.batch_size": 16,
        "data.num_workers": 1,
        "model.kwargs": '{"width": 16, "stem_stride": 2}',
        "model.embedding_size": 32,
        "train.max_steps": 5,
        "train.log_every": 1,
        "eval.every": 100,
        "output.dir": str(tmp_path / "run"),
    }
    assert train_main([recipe] + [f"{k}={v}" for k, v in overrides.items()]) == 0
    results = json.load(open(tmp_path / "run" / "results.json"))
    assert results["steps"] == 5 and results["num_images"] == 64 and results["num_classes"] == 8


def test_corrupt_records_are_skipped_by_the_dali_index_and_counted(grey_records, tmp_path):
    from fr.data.recordio import read_index

    root = tmp_path / "corrupt"
    root.mkdir()
    for name in ("train.rec", "train.idx"):
        (root / name).write_bytes((grey_records / name).read_bytes())
    offset = read_index(str(root / "train.idx"))[10]  # image 9
    with open(root / "train.rec", "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0\0\0\0")
    for _attempt in range(2):  # the second build reads the cached index and its counts
        loader = loader_for(root, 0, world=1, batch=9)
        assert len(loader.dataset) == 63 and loader.skipped == 1 and len(loader) == 7
    seen = [k for images, _ in loader for k in image_ids(images)]
    assert sorted(seen) == [k for k in range(64) if k != 9]


def test_kept_batches_stay_intact_while_the_pipeline_runs_on(grey_records):
    loaders = [loader_for(grey_records, rank) for rank in range(2)]
    kept = [batch for loader in loaders for batch in list(loader)]  # nothing read until both epochs are done
    seen = []
    for images, labels in kept:
        ids = image_ids(images)
        assert labels.tolist() == [k // PER_IDENTITY for k in ids]
        seen.extend(ids)
    assert sorted(seen) == list(range(64))  # a reused output buffer would have overwritten earlier batches


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory):
    """64 images, 8 per identity: the top half a flat grey naming the image (3k), the bottom half black on the
    left and white on the right, so a horizontal flip shows. Returns (root, {image: decoded pixels})."""
    root = tmp_path_factory.mktemp("dali_mirror")
    decoded = {}
    with InsightfaceRecordWriter(str(root)) as writer:
        for c in range(IDENTITIES):
            payloads = []
            for j in range(PER_IDENTITY):
                k = c * PER_IDENTITY + j
                payload = jpeg(flip_probe(k))
                payloads.append(payload)
                decoded[k] = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
            writer.add_identity(payloads)
    return root, decoded


@pytest.mark.parametrize("flipper", ["opencv on the host", "fn.flip in the pipeline"])
def test_each_image_is_flipped_or_not_by_its_own_coin(mirror_dir, flipper, monkeypatch):
    root, decoded = mirror_dir
    if flipper == "opencv on the host":
        pytest.importorskip("cv2")  # a guard only: the `test` extra installs OpenCV
    else:
        monkeypatch.setattr("fr.data.dali._opencv", lambda: None)  # as without OpenCV
    probe = loader_for(root, 0, world=1, batch=8)
    assert (len(probe.pipe.run()) == 3) == (flipper == "opencv on the host")  # the coins leave the pipeline
    loader = loader_for(root, 0, world=1, batch=8)  # (a run outside the loader moves its pipeline on)
    flipped = 0
    for images, labels in loader:
        for image, label in zip(images, labels.tolist()):
            k = round((float(image[0, 0, 0]) + 1) * 127.5 / 3)  # the grey top half names the image
            assert label == k // PER_IDENTITY
            reference = torch.from_numpy(decoded[k].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
            is_flipped = float(image[:, 100, 10].mean()) > 0  # white on the bottom left
            expected = reference.flip(2) if is_flipped else reference
            assert float((image - expected).abs().max()) <= 3 / 127.5  # decoder differences only
            flipped += is_flipped
    assert 16 <= flipped <= 48  # 64 fair coins (outside: p < 1e-4)


def test_a_resumed_run_replays_the_same_flips(mirror_dir):
    """The coins are pipeline state (checkpointed by DALI) even when OpenCV flips on the host."""
    reference = loader_for(mirror_dir[0], 0, world=1, batch=8)
    expected = [images for images, _ in reference]
    first = loader_for(mirror_dir[0], 0, world=1, batch=8)
    it = iter(first)
    head = [next(it)[0] for _ in range(3)]
    resumed = loader_for(mirror_dir[0], 0, world=1, batch=8)
    resumed.load_state_dict(first.state_dict())
    got = head + [images for images, _ in resumed]
    assert len(got) == len(expected) == 8
    assert all(torch.equal(a, b) for a, b in zip(got, expected))  # pixels, order and flips


def test_the_device_conversion_gives_what_the_host_conversion_gives(mirror_dir, monkeypatch):
    """_device_batch is what a GPU pipeline's outputs go through (flipped by fn.flip); run here on CPU outputs."""
    from fr.data.dali import _cpu_batch, _device_batch

    monkeypatch.setattr("fr.data.dali._opencv", lambda: None)  # the pipeline flips, as on a GPU
    loader = loader_for(mirror_dir[0], 0, world=1, batch=8)
    images, labels = loader.pipe.run()
    host = _cpu_batch(torch.device("cpu"), images, labels)
    device = _device_batch(torch.device("cpu"), images, labels)
    for got, expected in zip(device, host):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert host[0].shape == (8, 3, 112, 112) and host[1].dtype == torch.int64


class _HostOutput:
    """Stands in for a DALI CPU TensorList: `as_tensor()` gives the batch as an array."""

    def __init__(self, array):
        self.array = array

    def as_tensor(self):
        return self.array


@pytest.mark.parametrize("converter", ["opencv", "numpy"])
def test_the_host_conversion_is_normalize_bit_for_bit_and_flips_by_the_coins(converter):
    from evaluation.preprocess import normalize
    from fr.data.dali import _cpu_batch

    # a guard only: the `test` extra installs OpenCV
    opencv = pytest.importorskip("cv2") if converter == "opencv" else None
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (6, 20, 14, 3), dtype=np.uint8)
    pixels[0].flat[:256] = np.arange(256)  # every value once
    coins = np.array([1, 0, 0, 1, 1, 0], np.int32)
    labels = np.array([[5, 1], [4, 1], [3, 1], [2, 1], [1, 1], [0, 1]], np.float32)  # multi-label: the first counts
    flips = _HostOutput(coins) if converter == "opencv" else None  # without OpenCV the pipeline flips
    images, classes = _cpu_batch(torch.device("cpu"), _HostOutput(pixels), _HostOutput(labels), flips, opencv=opencv)
    expected = normalize(torch.from_numpy(pixels)).permute(0, 3, 1, 2)
    if flips is not None:
        expected[torch.from_numpy(coins).bool()] = expected[torch.from_numpy(coins).bool()].flip(3)
    assert images.dtype == torch.float32 and torch.equal(images, expected)
    assert classes.tolist() == [5, 4, 3, 2, 1, 0] and classes.dtype == torch.int64
    assert images.permute(0, 2, 3, 1).is_contiguous()  # channels_last memory, as before


def test_a_failure_while_training_keeps_the_augmentation_draws_of_a_run_without_it(tmp_path):
    """A PNG with broken compressed data passes the structural check but stops DALI: the loader skips it and
    runs up to the failed batch again from the epoch start's checkpoint, so its random draws stay in step."""
    rng = np.random.default_rng(4)
    payloads = []
    for k in range(32):
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG" if k == 20 else "JPEG")
        payloads.append(buf.getvalue())
    broken = bytearray(payloads[20])
    broken[len(broken) // 2 : len(broken) // 2 + 64] = bytes(64)
    payloads[20] = bytes(broken)
    with InsightfaceRecordWriter(str(tmp_path)) as writer:
        for c in range(4):
            writer.add_identity(payloads[8 * c : 8 * (c + 1)])
    augment = ["resize", "blur"]
    failing = loader_for(tmp_path, 0, world=1, batch=8, augment=augment)
    got = [images for images, _ in failing]
    assert failing.skipped_keys == [21]  # image 20 is key 21: met and skipped in this epoch
    known = loader_for(tmp_path, 0, world=1, batch=8, augment=augment)  # skips it from the start (listed)
    assert known.skipped_keys == [21]
    expected = [images for images, _ in known]
    assert len(got) == len(expected) == 4 and all(torch.equal(a, b) for a, b in zip(got, expected))
