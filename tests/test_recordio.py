"""RecordIO: byte compatibility with files written by real MXNet 1.9.1, escaping, multi-label, errors."""

import os
import struct

import numpy as np
import pytest

from fr.data.headers import label_of, scan_headers
from fr.data.recordio import (
    MAGIC,
    IndexedRecordIO,
    IRHeader,
    MXRecordIO,
    RecordIOError,
    pack,
    pack_img,
    read_index,
    unpack,
    unpack_img,
)
from fr.data.writer import InsightfaceRecordWriter

# Files written by real MXNet 1.9.1, vendored in tests/fixtures/mxnet (its README says how they were made).
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "mxnet")
MAGIC_BYTES = struct.pack("<I", MAGIC)


@pytest.fixture(scope="module")
def truth():
    return np.load(os.path.join(FIXTURES, "truth.npz"))


def test_reads_insightface_layout_written_by_mxnet(truth):
    d = os.path.join(FIXTURES, "insightface")
    rec = IndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "r")
    n, c = len(truth["labels"]), int(truth["num_classes"])
    header, _ = unpack(rec.read_idx(0))
    assert header.flag == 2 and list(header.label) == [n + 1, n + 1 + c]
    for i in range(n):
        header, image = unpack_img(rec.read_idx(i + 1))
        assert header.label == truth["labels"][i]
        # Same libjpeg family as OpenCV: allow small decoder differences only.
        assert np.abs(image.astype(int) - truth["images"][i]).max() <= 2
    starts = [int(unpack(rec.read_idx(n + 1 + k))[0].label[0]) for k in range(c)]
    assert starts == [1 + int(np.searchsorted(truth["labels"], k)) for k in range(c)]


def test_reads_plain_im2rec_layout(truth):
    d = os.path.join(FIXTURES, "plain")
    rec = IndexedRecordIO(os.path.join(d, "data.idx"), os.path.join(d, "data.rec"), "r")
    assert sorted(rec.keys) == list(range(len(truth["labels"])))
    for k in sorted(rec.keys):
        header, image = unpack_img(rec.read_idx(k))
        assert header.flag == 0 and header.label == truth["labels"][k] and header.id == k
        # im2rec re-encoded the truth images as JPEG, so pixels carry that encoding's loss on top of
        # decoder differences: small on average, and nearest to their own truth image.
        errors = np.abs(image.astype(int)[None] - truth["images"]).mean(axis=(1, 2, 3))
        assert errors[k] < 2.5 and int(np.argmin(errors)) == k


def test_header_only_scan_matches_full_unpack(tmp_path):
    """The pre-training check reads headers through the .idx offsets; it must agree with a full read."""
    d = os.path.join(FIXTURES, "insightface")
    rec = IndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "r")
    for key, header, error in scan_headers(rec, sorted(rec.keys)):
        full = unpack(rec.read_idx(key))[0]
        assert error is None and header.flag == full.flag and header.id == full.id
        assert np.array_equal(np.asarray(header.label), np.asarray(full.label))
    # many labels, and a header split by an escaped magic word, fall back to reading the whole record
    path = tmp_path / "m"
    out = IndexedRecordIO(str(path) + ".idx", str(path) + ".rec", "w")
    out.write_idx(0, pack(IRHeader(0, list(range(40)), 1, 2), b"x"))
    out.write_idx(1, pack(IRHeader(0, [1.0, struct.unpack("<f", MAGIC_BYTES)[0]], 3, 4), b"y"))
    out.close()
    out = IndexedRecordIO(str(path) + ".idx", str(path) + ".rec", "r")
    got = {k: h for k, h, _ in scan_headers(out, [0, 1])}
    assert got[0].label.tolist() == list(range(40))
    assert got[1].label.tobytes()[4:] == MAGIC_BYTES and got[1].id == 3


def test_read_label_of_multi_label_and_plain_layout_without_idx(tmp_path, truth):
    d = os.path.join(FIXTURES, "plain")
    (tmp_path / "train.rec").write_bytes(open(os.path.join(d, "data.rec"), "rb").read())
    # no .idx: the dataset rebuilds the index by a scan; the plain layout takes classes from the labels
    from fr.data.datasets import RecordDataset

    dataset = RecordDataset(str(tmp_path), flip=False)
    assert not dataset.layout.insightface and dataset.num_classes == int(truth["num_classes"])
    assert [dataset[i][1] for i in range(len(dataset))] == truth["labels"].tolist()
    assert label_of(IRHeader(2, np.array([3.0, 9.0], np.float32), 0, 0)) == 3


def test_sequential_read_matches_index_and_rebuilds_missing_idx(tmp_path):
    d = os.path.join(FIXTURES, "insightface")
    with open(os.path.join(d, "train.rec"), "rb") as src:
        (tmp_path / "train.rec").write_bytes(src.read())
    indexed = IndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "r")
    scanned = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    assert scanned.idx == read_index(os.path.join(d, "train.idx"))
    assert [scanned.read_idx(k) for k in scanned.keys] == [indexed.read_idx(k) for k in indexed.keys]


def test_writer_reproduces_mxnet_bytes_exactly(tmp_path, truth):
    """Re-pack the fixture's record bodies: the .rec must equal MXNet's byte for byte."""
    d = os.path.join(FIXTURES, "insightface")
    src = IndexedRecordIO(os.path.join(d, "train.idx"), os.path.join(d, "train.rec"), "r")
    out = IndexedRecordIO(str(tmp_path / "o.idx"), str(tmp_path / "o.rec"), "w")
    for k in src.keys:
        header, payload = unpack(src.read_idx(k))
        out.write_idx(k, pack(header, payload))
    out.close()
    assert (tmp_path / "o.rec").read_bytes() == open(os.path.join(d, "train.rec"), "rb").read()
    assert read_index(str(tmp_path / "o.idx")) == read_index(os.path.join(d, "train.idx"))


def test_magic_in_payload_is_escaped_like_dmlc(tmp_path):
    # aligned magic words at payload offsets 4 and 12 (within the body), plus an unaligned one at 21
    body = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ijklm" + MAGIC_BYTES + b"xyz"
    path = str(tmp_path / "m.rec")
    writer = MXRecordIO(path, "w")
    writer.write(body)
    writer.close()
    raw = open(path, "rb").read()

    def part(cflag, data):
        pad = b"\0" * ((4 - len(data) % 4) % 4)
        return MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(data)) + data + pad

    expected = part(1, b"abcd") + part(2, b"efgh") + part(3, b"ijklm" + MAGIC_BYTES + b"xyz")
    assert raw == expected
    reader = MXRecordIO(path, "r")
    assert reader.read() == body and reader.read() is None


@pytest.mark.parametrize("payload", [b"", MAGIC_BYTES, MAGIC_BYTES * 3, b"x" * 5, b"ab" + MAGIC_BYTES + b"cd"])
def test_round_trip_edge_payloads(tmp_path, payload):
    rec = IndexedRecordIO(str(tmp_path / "e.idx"), str(tmp_path / "e.rec"), "w")
    rec.write_idx(5, payload)
    rec.write_idx(9, b"tail")
    rec.close()
    rec = IndexedRecordIO(str(tmp_path / "e.idx"), str(tmp_path / "e.rec"), "r")
    assert rec.read_idx(5) == payload and rec.read_idx(9) == b"tail"


def test_multi_label_header_and_64bit_ids():
    header = IRHeader(0, [1.5, -2.0, 3.25], 2**40 + 7, 2**63 + 1)
    got, payload = unpack(pack(header, b"img"))
    assert got.flag == 3 and got.label.tolist() == [1.5, -2.0, 3.25]
    assert got.id == 2**40 + 7 and got.id2 == 2**63 + 1 and payload == b"img"
    scalar, _ = unpack(pack(IRHeader(0, 4.0, 1, 0), b""))
    assert scalar.flag == 0 and scalar.label == 4.0


def test_pack_img_round_trip_png_exact():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    header, decoded = unpack_img(pack_img(IRHeader(0, 2.0, 0, 0), img, img_fmt=".png"))
    assert header.label == 2.0 and np.array_equal(decoded, img)


def test_truncated_and_corrupt_files_name_the_offset(tmp_path):
    path = tmp_path / "t.rec"
    writer = MXRecordIO(str(path), "w")
    writer.write(b"0123456789")
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[:-6])
    with pytest.raises(RecordIOError, match="offset 0"):
        MXRecordIO(str(path), "r").read()
    path.write_bytes(b"\x00" * 8 + data)
    with pytest.raises(RecordIOError, match="bad magic"):
        MXRecordIO(str(path), "r").read()
    bad_idx = tmp_path / "t.idx"
    bad_idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match="t.idx:2"):
        read_index(str(bad_idx))


def test_insightface_writer_matches_the_layout(tmp_path):
    with InsightfaceRecordWriter(str(tmp_path)) as writer:
        for identity in range(3):
            writer.add_identity([bytes([identity, j]) for j in range(identity + 1)])
    rec = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    header, _ = unpack(rec.read_idx(0))
    assert header.label.tolist() == [7.0, 10.0]  # 6 images, 3 identities
    labels = [unpack(rec.read_idx(k))[0].label for k in range(1, 7)]
    assert labels == [0, 1, 1, 2, 2, 2]
    ranges = [unpack(rec.read_idx(k))[0].label.tolist() for k in range(7, 10)]
    assert ranges == [[1, 2], [2, 4], [4, 7]]
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_insightface_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with InsightfaceRecordWriter(str(tmp_path)) as writer:
            writer.add_identity([b"a"])
            raise RuntimeError("render failed")
    assert list(tmp_path.iterdir()) == []
