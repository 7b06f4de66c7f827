"""fr-data info / verify / pack / shuffle, checked against the images and labels that went in."""

import json

import numpy as np
import pytest
from PIL import Image

from fr.cli.data import main as data_main
from fr.data.datasets import RecordDataset
from fr.data.pack import random_image
from fr.data.recordio import IndexedRecordIO, IRHeader, pack, read_index, unpack, unpack_img
from fr.data.writer import InsightfaceRecordWriter
from tests.helpers.images import flat, jpeg


@pytest.fixture()
def good_dir(tmp_path):
    root = tmp_path / "good"
    with InsightfaceRecordWriter(str(root)) as writer:
        for c in range(3):
            writer.add_identity([jpeg(flat(40 * c + 10 * j)) for j in range(c + 2)])  # 2, 3, 4 images
    return root


def run_json(argv, capsys):
    status = data_main(argv)
    return status, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_info_reports_layout_counts_and_label_range(good_dir, capsys):
    status, info = run_json(["info", str(good_dir), "--json"], capsys)
    assert status == 0
    assert info["layout"] == "insightface" and info["images"] == 9 and info["identities"] == 3
    assert info["label_range"] == [0, 2] and info["image_size"] == [112, 112]


def test_verify_passes_a_good_file(good_dir, capsys):
    status, report = run_json(["verify", str(good_dir), "--json"], capsys)
    assert status == 0 and report["ok"] and report["records"] == 1 + 9 + 3


def test_verify_reports_every_kind_of_damage(tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    rec = IndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "w")
    rec.write_idx(0, pack(IRHeader(2, [6.0, 8.0], 0, 0), b""))
    black = jpeg(flat(0))
    rec.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), black))
    rec.write_idx(2, pack(IRHeader(0, 7.0, 2, 0), black))  # label outside [0, 2)
    rec.write_idx(3, pack(IRHeader(0, 1.0, 3, 0), b"\xff\xd8junk"))  # undecodable
    rec.write_idx(4, pack(IRHeader(0, 1.0, 4, 0), black))  # magic overwritten below
    rec.write_idx(5, pack(IRHeader(0, 1.0, 5, 0), black))
    rec.write_idx(6, pack(IRHeader(2, [1.0, 3.0], 0, 0), b""))
    rec.write_idx(7, pack(IRHeader(2, [4.0, 6.0], 0, 0), b""))  # should start at 3
    rec.close()
    offsets = read_index(str(root / "train.idx"))
    data = bytearray((root / "train.rec").read_bytes())
    data[offsets[4] : offsets[4] + 4] = b"\0\0\0\0"
    (root / "train.rec").write_bytes(bytes(data))
    status, report = run_json(["verify", str(root), "--json"], capsys)
    assert status == 1 and not report["ok"]
    # Records training would skip, one message each, apart from the errors of the file itself.
    skipped, errors = report["messages"]["skipped_records"], report["messages"]["errors"]
    assert (report["skipped_records"], report["errors"]) == (len(skipped), len(errors)) == (3, 1)
    assert sorted(m.split(": ", 1)[1][:8] for m in skipped) == ["record 2", "record 3", "record 4"]
    text = "\n".join(skipped)
    assert "record 4: bad magic" in text
    assert "record 2 has label 7, outside [0, 2)" in text
    assert "record 3: cannot decode image" in text
    assert "identity record 7 (class 1) holds [4, 6), expected a non-empty range starting at 3" in errors[0]
    assert data_main(["verify", str(root)]) == 1  # the text report says which is which
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["error", "skipped", "skipped", "skipped"]


def test_verify_reports_a_truncated_file(good_dir, capsys):
    rec = good_dir / "train.rec"
    offsets = sorted(read_index(str(good_dir / "train.idx")).items(), key=lambda kv: kv[1])
    rec.write_bytes(rec.read_bytes()[: offsets[5][1] + 30])  # cut inside image record 5
    status, report = run_json(["verify", str(good_dir), "--json"], capsys)
    assert status == 1
    assert any("record 5" in m and ("announces" in m or "shorter" in m) for m in report["messages"]["skipped_records"])


def make_folder(root):
    rng = np.random.default_rng(0)
    truth = {}
    for name, count in [("bob", 2), ("alice", 3), ("carol", 1)]:
        (root / name).mkdir(parents=True)
        for j in range(count):
            image = random_image(rng, 64)  # smooth: JPEG's chroma subsampling would ruin pure noise
            Image.fromarray(image).save(root / name / f"{j}.png")
            truth[f"{name}/{j}.png"] = image
    (root / "alice" / "notes.txt").write_text("not an image")
    return truth


def test_pack_image_folder_writes_insightface_layout(tmp_path, capsys):
    truth = make_folder(tmp_path / "faces")
    out = tmp_path / "rec"
    status, result = run_json(
        [
            "pack",
            "--folder",
            str(tmp_path / "faces"),
            "--out",
            str(out),
            "--size",
            "0",
            "--quality",
            "100",
            "--workers",
            "2",
            "--quiet",
        ],
        capsys,
    )
    assert status == 0 and result["images"] == 6 and result["identities"] == 3
    rec = IndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "r")
    assert unpack(rec.read_idx(0))[0].label.tolist() == [7.0, 10.0]
    expected = [("alice", 0), ("alice", 1), ("alice", 2), ("bob", 0), ("bob", 1), ("carol", 0)]  # sorted names
    for key, (name, j) in enumerate(expected, 1):
        header, image = unpack_img(rec.read_idx(key))
        assert header.label == {"alice": 0, "bob": 1, "carol": 2}[name]
        assert (
            np.abs(image.astype(int) - truth[f"{name}/{j}.png"]).mean() < 3
        )  # JPEG q100: small errors only, mismatched images differ by ~50
    assert [unpack(rec.read_idx(k))[0].label.tolist() for k in (7, 8, 9)] == [[1, 4], [4, 6], [6, 7]]


def test_pack_from_im2rec_lst(tmp_path, capsys):
    make_folder(tmp_path / "faces")
    lst = tmp_path / "faces" / "train.lst"
    lst.write_text("0\t1\tbob/0.png\n1\t0\talice/0.png\n2\t1\tbob/1.png\n")
    out = tmp_path / "rec"
    status, result = run_json(["pack", "--lst", str(lst), "--out", str(out), "--workers", "1", "--quiet"], capsys)
    assert status == 0 and result["images"] == 3 and result["identities"] == 2
    dataset = RecordDataset(str(out), flip=False)
    assert [dataset[i][1] for i in range(3)] == [0, 1, 1]
    assert dataset[0][0].shape == (3, 112, 112)


def test_shuffle_copies_every_record_once_in_a_new_order(good_dir, tmp_path, capsys):
    out = tmp_path / "shuffled"
    status, result = run_json(["shuffle", str(good_dir), "--out", str(out), "--seed", "1", "--quiet"], capsys)
    assert status == 0 and result["images"] == 9 and result["skipped_records"] == 0
    src = IndexedRecordIO(str(good_dir / "train.idx"), str(good_dir / "train.rec"), "r")
    dst = IndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "r")
    originals = [src.read_idx(k) for k in range(1, 10)]
    copies = [dst.read_idx(k) for k in range(9)]
    assert sorted(copies) == sorted(originals) and copies != originals
    dataset = RecordDataset(str(out))
    assert not dataset.layout.insightface and dataset.num_classes == 3 and len(dataset) == 9


def test_torch_loader_reads_an_image_folder(tmp_path):
    from fr.config import DataConfig
    from fr.data.loader import build_loader
    from fr.distributed import DistEnv

    truth = make_folder(tmp_path / "faces")
    Image.new("RGB", (10, 10)).save(tmp_path / "faces" / "bob" / "9.png")
    (tmp_path / "faces" / "bob" / "9.png").write_bytes(b"broken")  # unreadable: skipped and counted
    loader = build_loader(
        DataConfig(root=str(tmp_path / "faces"), batch_size=7, num_workers=0, image_size=64), DistEnv(), seed=0
    )
    assert loader.dataset.num_classes == 3 and len(loader.dataset) == 7
    loader.dataset.flip = False
    images, labels = next(iter(loader))
    names = {0: "alice", 1: "bob", 2: "carol"}
    for x, y in zip(images, labels):
        pixels = np.round((x.numpy().transpose(1, 2, 0) + 1) * 127.5)
        assert any(np.array_equal(pixels, v) for k, v in truth.items() if k.startswith(names[int(y)]))
    assert loader.skipped == 1
