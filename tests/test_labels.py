"""Record labels that name no class (fractional, negative, NaN, infinite, out of range) are reported by
`fr-data verify` and skipped and counted by training; each skipped record is counted once."""

import json
import logging
import os

import numpy as np
import pytest

from fr.cli.data import main as data_main
from fr.data.base import DataError
from fr.data.datasets import RecordDataset
from fr.data.loader import DeviceLoader
from fr.data.recordio import IndexedRecordIO, IRHeader, pack
from fr.distributed import DistEnv
from tests.helpers.images import flat, png

C, PER_CLASS = 3, 3
# key -> (stored label, what fr-data verify must say); identity c holds keys 3c+1 .. 3c+3 with label c.
BAD = {
    2: (-0.5, "has label -0.5, not a whole number"),
    4: (float("nan"), "has label nan, not a finite number"),
    6: (float("inf"), "has label inf, not a finite number"),
    7: (2.5, "has label 2.5, not a whole number"),
    8: (-1.0, "has label -1, outside [0, 3)"),
    9: (3.0, "has label 3, outside [0, 3)"),
}
GOOD = [1, 3, 5]


def grey(value):
    return png(flat(value, side=16))


def write_insightface(root, label_of_key, payload_of_key=lambda key: grey(40 * ((key - 1) // PER_CLASS))):
    """Header [N+1, N+1+C], images 1..N (class c's pixels are 40c), identity records [start, end)."""
    os.makedirs(root, exist_ok=True)
    n = C * PER_CLASS
    rec = IndexedRecordIO(os.path.join(root, "train.idx"), os.path.join(root, "train.rec"), "w")
    rec.write_idx(0, pack(IRHeader(2, [n + 1.0, n + 1.0 + C], 0, 0), b""))
    for key in range(1, n + 1):
        rec.write_idx(key, pack(IRHeader(0, label_of_key(key), key, 0), payload_of_key(key)))
    for c in range(C):
        rec.write_idx(n + 1 + c, pack(IRHeader(2, [1.0 + PER_CLASS * c, 1.0 + PER_CLASS * (c + 1)], 0, 0), b""))
    rec.close()


def bad_label_set(root):
    write_insightface(root, lambda key: BAD[key][0] if key in BAD else float((key - 1) // PER_CLASS))


def check_labels(loader, epochs=1):
    """Every label a class in [0, C) and the one of its pixels; returns how many samples came."""
    seen = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            for x, y in zip(images, labels):
                assert 0 <= int(y) < C and round((float(x[0, 0, 0]) + 1) * 127.5) == 40 * int(y)
                seen += 1
    return seen


def test_verify_reports_each_bad_label_by_record(tmp_path, capsys):
    bad_label_set(tmp_path)
    status = data_main(["verify", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 1 and report["skipped_records"] == len(BAD) and report["errors"] == 0
    rec = str(tmp_path / "train.rec")
    expected = sorted(f"{rec}: record {key} {why}" for key, (_, why) in BAD.items())
    assert sorted(report["messages"]["skipped_records"]) == expected


def test_training_skips_bad_labels_with_one_log_line(tmp_path, caplog):
    bad_label_set(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = RecordDataset(str(tmp_path), flip=False)  # header check, no index cache
    assert dataset.keys == GOOD and dataset.skipped == len(BAD) and dataset.num_classes == C
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and f"{len(BAD)} records skipped" in lines[0]
    assert "record 2 has label -0.5" in lines[0] and "record 4 has label nan" in lines[0]
    loader = DeviceLoader(dataset, 3, DistEnv(), num_workers=0, seed=0)
    assert check_labels(loader, epochs=2) == 6 and loader.skipped == len(BAD)


def test_the_shared_index_leaves_bad_labels_out_and_lists_why(tmp_path, caplog):
    root, cache = tmp_path / "data", tmp_path / "cache"
    bad_label_set(root)
    for _ in range(2):  # written, then read from the cache: same answer
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            dataset = RecordDataset(str(root), flip=False, cache_dir=str(cache))
        assert dataset.keys == GOOD and dataset.skipped == len(BAD)
        assert len([r for r in caplog.records if "records skipped" in r.getMessage()]) == 1
    (meta_path,) = [p for p in os.listdir(cache) if p.endswith(".images.idx.json")]
    with open(cache / meta_path) as fh:
        meta = json.load(fh)
    rec = str(root / "train.rec")
    assert meta["skipped"] == {str(key): f"{rec}: record {key} {why}" for key, (_, why) in BAD.items()}


def test_bad_labels_met_while_training_are_skipped_and_counted_once(tmp_path):
    bad_label_set(tmp_path)
    dataset = RecordDataset(str(tmp_path), flip=False, validate=False)  # nothing checked before training
    assert len(dataset) == C * PER_CLASS
    loader = DeviceLoader(dataset, 3, DistEnv(), num_workers=0, seed=0)
    assert check_labels(loader, epochs=2) == 18
    assert loader.skipped == len(BAD)  # six records, each once over two epochs


def test_a_bad_record_replaced_by_another_bad_one_counts_once(tmp_path):
    # Keys 3 and 4 cannot be decoded: the sample of key 3 is replaced by key 4 (bad too), then key 5.
    write_insightface(
        tmp_path,
        lambda key: float((key - 1) // PER_CLASS),
        lambda key: b"not an image" if key in (3, 4) else grey(40 * ((key - 1) // PER_CLASS)),
    )
    dataset = RecordDataset(str(tmp_path), flip=False)
    assert dataset.skipped == 0 and len(dataset) == 9
    _, label, skipped = dataset.load(dataset.keys.index(3))
    assert label == 1 and [k for k in skipped.tolist() if k >= 0] == [3, 4]
    loader = DeviceLoader(dataset, 3, DistEnv(), num_workers=2, seed=0)
    assert check_labels(loader) == 9
    assert loader.stats == {"skipped_records": 2}  # the old counter said 3: key 4 once for each sample
    assert check_labels(loader) == 9 and loader.skipped == 2  # a second epoch adds nothing
    resumed = DeviceLoader(dataset, 3, DistEnv(), num_workers=0, seed=0)
    resumed.load_state_dict(loader.state_dict())
    assert resumed.skipped == 2 and check_labels(resumed) == 9 and resumed.skipped == 2


def write_plain(root, labels):
    rec = IndexedRecordIO(os.path.join(root, "train.idx"), os.path.join(root, "train.rec"), "w")
    for key, label in enumerate(labels):
        rec.write_idx(key, pack(IRHeader(0, label, key, 0), grey(40 * int(label) if label in (0, 1, 2) else 0)))
    rec.close()


def test_plain_layout_takes_the_class_count_from_usable_labels_only(tmp_path):
    # 2^24 is a whole number but past what float32 labels hold exactly: no class count from it.
    write_plain(tmp_path, [0.0, float("nan"), 1.0, -0.5, float(2**24), 2.0, float("-inf")])
    dataset = RecordDataset(str(tmp_path), flip=False)
    assert not dataset.layout.insightface and dataset.num_classes == 3
    assert dataset.keys == [0, 2, 5] and dataset.skipped == 4
    (tmp_path / "nan").mkdir()
    write_plain(tmp_path / "nan", [float("nan"), -1.0])
    with pytest.raises(DataError, match="no record has a usable label"):
        RecordDataset(str(tmp_path / "nan"))


@pytest.mark.parametrize(
    "header,match",
    [
        ([float("nan"), 13.0], r"header record 0 label \[nan, 13.0\] is not \[N\+1, N\+1\+C\]"),
        ([10.0, float("inf")], r"header record 0 label \[10.0, inf\] is not"),
        ([10.0, 1e9], r"header announces records 0..999999999 but .*train.idx lists 13 keys"),
    ],
)
def test_a_damaged_header_record_is_a_data_error(tmp_path, capsys, header, match):
    write_insightface(tmp_path, lambda key: float((key - 1) // PER_CLASS))
    rec = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    offset = rec.idx[0]
    rec.close()
    with open(tmp_path / "train.rec", "r+b") as fh:  # header record 0: flag 2, then its two labels
        fh.seek(offset + 8 + 24)
        fh.write(np.asarray(header, np.float32).tobytes())
    with pytest.raises(DataError, match=match):
        RecordDataset(str(tmp_path))
    assert data_main(["verify", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["errors"] == 1


def test_an_identity_record_with_a_nan_label_is_a_data_error(tmp_path, capsys):
    write_insightface(tmp_path, lambda key: float((key - 1) // PER_CLASS))
    rec = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    offset = rec.idx[11]  # identity 1
    rec.close()
    with open(tmp_path / "train.rec", "r+b") as fh:
        fh.seek(offset + 8 + 24)
        fh.write(np.float32("nan").tobytes())
    with pytest.raises(DataError, match=r"identity record 11 \(class 1\) has label \[nan, 7.0\], expected whole"):
        RecordDataset(str(tmp_path))
    assert data_main(["verify", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "identity record 11" in report["messages"]["errors"][0]
