"""DALI loader (CPU pipeline) over files holding images DALI cannot decode: skipped, counted, never a crash."""
import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from fr.data.dali import DaliLoader
from fr.data.verify import image_size
from fr.data.writer import InsightfaceRecordWriter
from fr.distributed import DistEnv

pytest.importorskip("nvidia.dali")

IDENTITIES, PER_IDENTITY = 8, 8


def flat_jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def noise(fmt, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


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
    data = bytearray(noise("PNG", seed))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # inside the compressed data; the IEND chunk is intact
    return bytes(data)


def dali_decodes(payload):
    """DALI's CPU decoder on one payload, in a pipeline of its own (independent of fr.data.dali)."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(source=lambda: [np.frombuffer(payload, np.uint8)], batch=True,
                                     dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    try:
        pipe.run()
    except RuntimeError:
        return False
    return True


def write_set(root, bad, identities=IDENTITIES):
    """Image k (key k+1, label k // 8) is a flat grey of value 3k, or the payload bad[k]."""
    with InsightfaceRecordWriter(str(root)) as writer:
        for c in range(identities):
            ids = range(c * PER_IDENTITY, (c + 1) * PER_IDENTITY)
            writer.add_identity([bad[k] if k in bad else flat_jpeg(3 * k) for k in ids])


def image_ids(images, labels):
    """Ids of a batch's images, checking that each image is flat and that its label is its identity."""
    ids = []
    for image, label in zip(images, labels):
        value = float(image[0, 0, 0])
        assert torch.equal(image, torch.full_like(image, value))
        k = round((value + 1) * 127.5 / 3)
        assert value == np.float32(3 * k) / np.float32(127.5) - np.float32(1)  # exact [-1, 1] conversion
        assert int(label) == k // PER_IDENTITY  # never a wrong label
        ids.append(k)
    return ids


def loaders(root, batch, world=2):
    return [DaliLoader(str(root), batch, DistEnv(rank=rank, world_size=world), seed=3, num_threads=1,
                       cache_dir=str(root) + "_cache") for rank in range(world)]


def epoch(loader, number):
    loader.set_epoch(number)
    batches = [image_ids(images, labels) for images, labels in loader]
    assert len(batches) == len(loader)  # every rank steps the same number of times
    return [k for batch in batches for k in batch]


def test_payloads_dali_rejects_are_left_out_before_training(tmp_path, caplog):
    jpeg = flat_jpeg(200)
    bad = {3: noise("JPEG")[:scan_start(jpeg) + 600],  # cut inside the scan data
           9: jpeg[:-2],  # only the end-of-image marker missing
           17: b"",
           22: np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
           35: b"\xff\xd8 not really a jpeg",
           41: jpeg[:scan_start(jpeg) + 20] + bytes(len(jpeg) - scan_start(jpeg) - 20),  # zero-filled tail
           50: noise("GIF"),
           63: noise("PNG")[:2000]}
    assert not any(dali_decodes(payload) for payload in bad.values())  # each one would stop DALI
    write_set(tmp_path, bad)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    with caplog.at_level(logging.WARNING):
        ranks = loaders(tmp_path, batch=4)
    assert [len(loader) for loader in ranks] == [7, 7]  # 56 images, 28 per rank
    seen = epoch(ranks[0], 0) + epoch(ranks[1], 0)
    assert sorted(seen) == [k for k in range(64) if k not in bad]  # every good image once over the shards
    assert [loader.stats for loader in ranks] == [{"skipped_records": len(bad)}] * 2
    assert all(not loader.excluded for loader in ranks)  # found before training, not by the run-time fallback
    rec = str(tmp_path / "train.rec")
    for k in bad:
        assert any(f"{rec}: record {k + 1}:" in message for message in caplog.messages)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_images_dali_fails_on_while_training_are_found_and_skipped(tmp_path, caplog, monkeypatch):
    # Two in each rank's shard of 32: 30 good images, 6 batches of 5, each.
    bad = {10: bogus_huffman_table(flat_jpeg(30)), 20: broken_png(2), 40: broken_png(3),
           55: bogus_huffman_table(flat_jpeg(165))}
    for payload in bad.values():
        image_size(payload)  # passes the structural check before training ...
        assert not dali_decodes(payload)  # ... but stops DALI's decoder
    write_set(tmp_path, bad)
    with caplog.at_level(logging.WARNING):
        ranks = loaders(tmp_path, batch=5)
        assert [len(loader) for loader in ranks] == [6, 6]
        first = [epoch(loader, 0) for loader in ranks]  # each rank meets its bad image in this epoch
    assert [sorted(loader.excluded) for loader in ranks] == [[11, 21], [41, 56]]  # keys are ids + 1
    assert all(not set(ids) & set(bad) for ids in first)
    assert [loader.stats for loader in ranks] == [{"skipped_records": 2}] * 2  # each rank counts its own
    rec = str(tmp_path / "train.rec")
    assert any(f"record 11 of {rec}" in message for message in caplog.messages)
    # Next epoch: each rank reads its 30 remaining images, so every good image comes exactly once.
    second = epoch(ranks[0], 1) + epoch(ranks[1], 1)
    assert sorted(second) == [k for k in range(64) if k not in bad]

    # A resumed rank keeps its exclusions (no new search) and continues mid-epoch with the same batches.
    boundary = ranks[0].state_dict()  # before epoch 2
    reference = loaders(tmp_path, batch=5)[0]
    reference.load_state_dict(boundary)
    expected = [image_ids(x, y) for x, y in reference]
    partial = loaders(tmp_path, batch=5)[0]
    partial.load_state_dict(boundary)
    it = iter(partial)
    head = [image_ids(*next(it)) for _ in range(2)]
    resumed = loaders(tmp_path, batch=5)[0]
    monkeypatch.setattr("fr.data.dali.undecodable_records", None)  # a new search would fail
    resumed.load_state_dict(partial.state_dict())
    assert sorted(resumed.excluded) == [11, 21] and resumed.stats == {"skipped_records": 2}
    assert head + [image_ids(x, y) for x, y in resumed] == expected

    # A fresh run over the same cache leaves them out from the start, with another world size too.
    for world in (2, 1):
        fresh = loaders(tmp_path, batch=5, world=world)
        assert sorted(key for loader in fresh for key in loader.excluded) == [11, 21, 41, 56]
        assert sorted(k for loader in fresh for k in epoch(loader, 0)) == \
            [k for k in range(64) if k not in bad]


def test_a_damaged_list_of_undecodable_records_costs_a_search_not_the_run(tmp_path, caplog):
    from fr.data.image_index import read_undecodable, record_undecodable, undecodable_path

    index = str(tmp_path / "train.0123.images.idx")
    with open(undecodable_path(index), "w") as fh:
        fh.write('{"12": "found')  # cut short
    with caplog.at_level(logging.WARNING):
        assert read_undecodable(index) == {}
    assert any(undecodable_path(index) in message for message in caplog.messages)
    record_undecodable(index, {7: "a"})
    record_undecodable(index, {3: "b"})
    assert read_undecodable(index) == {3: "b", 7: "a"}


def test_dali_search_finds_exactly_the_records_it_cannot_decode(tmp_path):
    from fr.data.dali import CHECK_BATCH, undecodable_records
    from fr.data.image_index import build_index, shard_entries

    bad = {0: broken_png(4), CHECK_BATCH - 1: bogus_huffman_table(flat_jpeg(9)), CHECK_BATCH: broken_png(5),
           CHECK_BATCH + 7: bogus_huffman_table(flat_jpeg(10))}
    write_set(tmp_path, bad, identities=9)  # 72 images: two batches for the search, bad ones at their edges
    entries = shard_entries(build_index(str(tmp_path), cache_dir=str(tmp_path) + "_cache").path, 0, 1)
    assert len(entries) == 72
    found = undecodable_records(str(tmp_path / "train.rec"), entries, None, 1)
    assert found == [k + 1 for k in sorted(bad)]


def test_the_sample_dalis_error_names_is_excluded_when_a_second_try_decodes_it(tmp_path, monkeypatch):
    # DALI's verdict on a few corrupt images differs between runs; then the search finds nothing.
    write_set(tmp_path, {5: broken_png(1)})
    loader = loaders(tmp_path, batch=7, world=1)[0]
    monkeypatch.setattr("fr.data.dali.undecodable_records", lambda *args: [])
    ids = epoch(loader, 0)
    assert loader.excluded == [6] and 5 not in ids and len(ids) == 63


def test_a_dali_failure_no_record_explains_is_an_error_not_a_loop(tmp_path, monkeypatch):
    from fr.data.base import DataError

    write_set(tmp_path, {})
    loader = loaders(tmp_path, batch=8, world=1)[0]

    def failing_run():
        raise RuntimeError("Critical error in pipeline:\nencountered:\n\nout of host memory\nCurrent pipeline ...")

    monkeypatch.setattr(loader.pipe, "run", failing_run)
    with pytest.raises(DataError, match=r"train.rec: the DALI pipeline of rank 0 failed \(out of host memory\)"):
        list(loader)
