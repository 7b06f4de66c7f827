"""DALI loader (CPU pipeline) over files holding images DALI cannot decode: skipped, counted, never a crash."""

import logging
import os

import numpy as np
import pytest

from fr.data.dali import DaliLoader
from fr.data.verify import image_size
from fr.distributed import DistEnv
from tests.helpers.images import encode, flat, jpeg, noise
from tests.helpers.records import image_ids

pytest.importorskip("nvidia.dali")

IDENTITIES, PER_IDENTITY = 8, 8


def flat_jpeg(value):
    return jpeg(flat(value))


def noisy(fmt, seed=0):
    return encode(noise(seed), fmt)


def scan_start(jpeg):
    return jpeg.index(b"\xff\xda")


def bogus_huffman_table(jpeg):
    """Three 1-bit codes in the first Huffman table (more than the code space holds); the counts still add up,
    so the header parses and only decoding fails."""
    data = bytearray(jpeg)
    counts = data.index(b"\xff\xc4") + 5  # marker, segment length, table class/id
    longer = next(j for j in range(1, 16) if data[counts + j] >= 3)
    data[counts] += 3
    data[counts + longer] -= 3
    return bytes(data)


def broken_png(seed):
    data = bytearray(noisy("PNG", seed))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # inside the compressed data; the IEND chunk is intact
    return bytes(data)


def dali_decodes(payload):
    """DALI's CPU decoder on one payload, in a pipeline of its own (independent of fr.data.dali)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(source=lambda: [np.frombuffer(payload, np.uint8)], batch=True, dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    try:
        pipe.run()
    except RuntimeError:
        return False
    return True


def loaders(root, batch, world=2):
    return [
        DaliLoader(
            str(root),
            batch,
            DistEnv(rank=rank, world_size=world),
            seed=3,
            num_threads=1,
            cache_dir=str(root) + "_cache",
        )
        for rank in range(world)
    ]


def epoch(loader, number):
    loader.set_epoch(number)
    batches = [image_ids(images, labels, PER_IDENTITY) for images, labels in loader]
    assert len(batches) == len(loader)  # every rank steps the same number of times
    return [k for batch in batches for k in batch]


def test_payloads_dali_rejects_are_left_out_before_training(record_dir, caplog):
    jpeg = flat_jpeg(200)
    bad = {
        3: noisy("JPEG")[: scan_start(jpeg) + 600],  # cut inside the scan data
        9: jpeg[:-2],  # only the end-of-image marker missing
        17: b"",
        22: np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        35: b"\xff\xd8 not really a jpeg",
        41: jpeg[: scan_start(jpeg) + 20] + bytes(len(jpeg) - scan_start(jpeg) - 20),  # zero-filled tail
        50: noisy("GIF"),
        63: noisy("PNG")[:2000],
    }
    assert not any(dali_decodes(payload) for payload in bad.values())  # each one would stop DALI
    root = record_dir(IDENTITIES, PER_IDENTITY, bad=bad)
    before = {name: (root / name).read_bytes() for name in os.listdir(root)}
    with caplog.at_level(logging.WARNING):
        ranks = loaders(root, batch=4)
    assert [len(loader) for loader in ranks] == [7, 7]  # 56 images, 28 per rank
    seen = epoch(ranks[0], 0) + epoch(ranks[1], 0)
    assert sorted(seen) == [k for k in range(64) if k not in bad]  # every good image once over the shards
    assert [loader.stats for loader in ranks] == [{"skipped_records": len(bad)}] * 2
    assert all(not loader.skipped_keys for loader in ranks)  # found before training, not by the run-time fallback
    rec = str(root / "train.rec")
    for k in bad:
        assert any(f"{rec}: record {k + 1}:" in message for message in caplog.messages)
    assert {name: (root / name).read_bytes() for name in os.listdir(root)} == before


def torch_epochs(root, batch, world, epochs):
    """The torch loader's ids over the same index, per rank: [rank][epoch] -> ids (it replaces what fails to
    decode by the next record in the index's order, the rule the DALI loader follows)."""
    from fr.config import DataConfig
    from fr.data.loader import build_loader

    cfg = DataConfig(root=str(root), batch_size=batch, num_workers=0, cache_dir=str(root) + "_cache")
    return [
        [epoch(build_loader(cfg, DistEnv(rank=rank, world_size=world), seed=3), number) for number in range(epochs)]
        for rank in range(world)
    ]


def test_images_dali_fails_on_while_training_are_found_and_skipped(record_dir, caplog, monkeypatch):
    # 64 images, global batches of 2 x 5: 6 per epoch; the order decides which rank meets which bad image.
    bad = {
        10: bogus_huffman_table(flat_jpeg(30)),
        20: broken_png(2),
        40: broken_png(3),
        55: bogus_huffman_table(flat_jpeg(165)),
    }
    for payload in bad.values():
        image_size(payload)  # passes the structural check before training ...
        assert not dali_decodes(payload)  # ... but stops DALI's decoder
    root = record_dir(IDENTITIES, PER_IDENTITY, bad=bad)
    with caplog.at_level(logging.WARNING):
        ranks = loaders(root, batch=5)
        assert [len(loader) for loader in ranks] == [6, 6]
        first = [[epoch(loader, number) for number in range(2)] for loader in ranks]
    found = sorted({key for loader in ranks for key in loader.skipped_keys})
    assert found == [11, 21, 41, 56]  # keys are ids + 1; a rank finds those it meets in these two epochs
    assert [loader.stats for loader in ranks] == [{"skipped_records": len(loader.skipped_keys)} for loader in ranks]
    rec = str(root / "train.rec")
    assert any(f"record 11 of {rec}" in message for message in caplog.messages)
    # Each sample that failed came as the next image in the index's order, as on the torch loader (which
    # fails on these images too): the same ids in the same order on every rank, batches full.
    assert first == torch_epochs(root, 5, 2, 2)
    assert all(not set(ids) & set(bad) for per_rank in first for ids in per_rank)

    # A resumed rank keeps its skipped keys (no new search) and continues mid-epoch with the same batches.
    boundary = ranks[0].state_dict()  # before epoch 2
    reference = loaders(root, batch=5)[0]
    reference.load_state_dict(boundary)
    expected = [image_ids(x, y, PER_IDENTITY) for x, y in reference]
    partial = loaders(root, batch=5)[0]
    partial.load_state_dict(boundary)
    it = iter(partial)
    head = [image_ids(*next(it), PER_IDENTITY) for _ in range(2)]
    resumed = loaders(root, batch=5)[0]
    monkeypatch.setattr("fr.data.dali.undecodable_records", None)  # a new search would fail
    resumed.load_state_dict(partial.state_dict())
    assert resumed.skipped_keys == ranks[0].skipped_keys and resumed.stats == ranks[0].stats
    assert head + [image_ids(x, y, PER_IDENTITY) for x, y in resumed] == expected

    # A fresh run over the same cache skips them all from the start on every rank, with another world size
    # too, and gives the torch loader's samples.
    for world in (2, 1):
        fresh = loaders(root, batch=5, world=world)
        assert all(sorted(loader.skipped_keys) == [11, 21, 41, 56] for loader in fresh)
        assert [[epoch(loader, 0)] for loader in fresh] == torch_epochs(root, 5, world, 1)


def test_a_damaged_list_of_undecodable_records_costs_a_search_not_the_run(tmp_path, caplog):
    from fr.data.image_index import add_skipped, read_skipped, skipped_path

    index = str(tmp_path / "train.0123.images.idx")
    with open(skipped_path(index), "w") as fh:
        fh.write('{"12": "found')  # cut short
    with caplog.at_level(logging.WARNING):
        assert read_skipped(index) == {}
    assert any(skipped_path(index) in message for message in caplog.messages)
    add_skipped(index, {7: "a"})
    add_skipped(index, {3: "b"})
    assert read_skipped(index) == {3: "b", 7: "a"}


def test_dali_search_finds_exactly_the_records_it_cannot_decode(record_dir):
    from fr.data.dali import CHECK_BATCH, undecodable_records
    from fr.data.image_index import build_index, read_index_entries

    bad = {
        0: broken_png(4),
        CHECK_BATCH - 1: bogus_huffman_table(flat_jpeg(9)),
        CHECK_BATCH: broken_png(5),
        CHECK_BATCH + 7: bogus_huffman_table(flat_jpeg(10)),
    }
    root = record_dir(9, PER_IDENTITY, bad=bad)  # 72 images: two batches for the search, bad ones at their edges
    keys, offsets = read_index_entries(build_index(str(root), cache_dir=str(root) + "_cache").path)
    entries = list(zip(keys.tolist(), offsets.tolist()))
    assert len(entries) == 72
    found = undecodable_records(str(root / "train.rec"), entries, None, 1)
    assert found == [k + 1 for k in sorted(bad)]


def test_the_sample_dalis_error_names_is_skipped_when_a_second_try_decodes_it(record_dir, monkeypatch):
    # DALI's verdict on a few corrupt images differs between runs; then the search finds nothing.
    root = record_dir(IDENTITIES, PER_IDENTITY, bad={5: broken_png(1)})
    loader = loaders(root, batch=7, world=1)[0]
    monkeypatch.setattr("fr.data.dali.undecodable_records", lambda *args: [])
    ids = epoch(loader, 0)
    assert loader.skipped_keys == [6] and 5 not in ids and len(ids) == 63


def test_a_dali_failure_no_record_explains_is_an_error_not_a_loop(record_dir, monkeypatch):
    from fr.data.base import DataError

    root = record_dir(IDENTITIES, PER_IDENTITY)
    loader = loaders(root, batch=8, world=1)[0]

    def failing_run():
        raise RuntimeError("Critical error in pipeline:\nencountered:\n\nout of host memory\nCurrent pipeline ...")

    monkeypatch.setattr(loader.pipe, "run", failing_run)
    with pytest.raises(DataError, match=r"train.rec: the DALI pipeline of rank 0 failed \(out of host memory\)"):
        list(loader)
