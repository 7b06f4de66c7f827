"""The shared test fixtures do what the tests rely on: record sets hold what they promise, and the multi-process
runner reports a failing worker and never waits on a stuck collective for long."""

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fr.data.recordio import IndexedRecordIO, unpack, unpack_img
from tests.helpers.records import image_ids


def test_record_dir_writes_the_insightface_layout_with_bad_payloads_in_place(record_dir):
    root = record_dir(3, 2, bad={4: b"corrupt"})
    rec = IndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "r")
    assert unpack(rec.read_idx(0))[0].label.tolist() == [7.0, 10.0]  # 6 images, 3 identities
    assert [unpack(rec.read_idx(key))[0].label.tolist() for key in (7, 8, 9)] == [[1, 3], [3, 5], [5, 7]]
    for k in range(6):
        header, payload = unpack(rec.read_idx(k + 1))
        assert header.label == k // 2
        if k == 4:
            assert payload == b"corrupt"
        else:  # a JPEG of the flat grey 3k: decoded and normalised as the loaders do, image_ids gives k back
            pixels = torch.from_numpy(unpack_img(rec.read_idx(k + 1))[1].transpose(2, 0, 1).astype(np.float32))
            assert image_ids([(pixels / 255 - 0.5) / 0.5], [k // 2], per_identity=2) == [k]


def _rank_one_fails(rank, world_size):
    if rank == 1:
        raise ValueError("rank one gave up")
    return rank


def _rank_one_never_joins(rank, world_size):
    if rank == 1:
        time.sleep(60)
    dist.all_reduce(torch.zeros(1))


def test_runner_reports_a_failing_worker(run_distributed):
    with pytest.raises(mp.ProcessRaisedException, match="rank one gave up"):
        run_distributed(_rank_one_fails, 2)


def test_runner_stops_a_collective_that_never_completes(run_distributed):
    began = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException):
        run_distributed(_rank_one_never_joins, 2, timeout_s=2)
    assert time.monotonic() - began < 30
