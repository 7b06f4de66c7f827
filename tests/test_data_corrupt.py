"""Corrupt data: records with a corrupt header or an undecodable image are skipped and counted; bad
labels/headers fail early; the structural image check that keeps what DALI cannot decode out of its index."""

import os
import struct
import zlib

import pytest

from fr.config import DataConfig
from fr.data.base import DataError
from fr.data.datasets import RecordDataset
from fr.data.loader import DeviceLoader, build_loader
from fr.data.recordio import IndexedRecordIO, IRHeader, pack, read_index
from fr.data.verify import check_record_images, image_size
from fr.distributed import DistEnv
from tests.helpers.images import encode, flat, noise, png

PHOTO = noise(0, width=112, height=96)  # a 112x96 image with detail, for the format checks


def garble(root, key):
    """Overwrite the magic word of record `key` in place, as a bit flip on disk would."""
    offset = read_index(os.path.join(root, "train.idx"))[key]
    with open(os.path.join(root, "train.rec"), "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xde\xad\xbe\xef")


@pytest.fixture()
def corrupt_dir(record_dir):
    """4 identities x 4 images filled with value 10*c + j (a wrong label shows in the pixels); image 12 (key 7)
    is not a JPEG although it starts like one, and record 12 (identity 2, image 3) has a corrupt header."""
    root = record_dir(4, 4, image=lambda k: png(flat(10 * (k // 4) + k % 4)), bad={6: b"\xff\xd8 not really a jpeg"})
    garble(str(root), 12)
    return root


def check_batches(loader, epochs=2):
    """Every batch full, every label belonging to its pixels, the undecodable image never seen."""
    seen = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            assert images.shape[0] == 2  # replacements keep every batch full
            for x, y in zip(images, labels):
                value = int(round((float(x[0, 0, 0]) + 1) * 127.5))
                assert value // 10 == int(y)  # the label always belongs to the pixels it comes with
                assert value != 12  # the undecodable image never appears
                seen += 1
    return seen


def test_training_loader_skips_corrupt_and_undecodable_records_and_counts_them(corrupt_dir, monkeypatch):
    loader = build_loader(DataConfig(root=str(corrupt_dir), batch_size=2, num_workers=2), DistEnv(), seed=0)
    # both are found by the cached check of fr.data.image_index before training
    assert len(loader.dataset) == 14 and loader.skipped == 2
    assert check_batches(loader) == 28
    assert loader.stats == {"skipped_records": 2}

    def no_rescan(*args):
        raise AssertionError("the record file was scanned again")

    monkeypatch.setattr("fr.data.image_index.checked_keys", no_rescan)
    again = build_loader(DataConfig(root=str(corrupt_dir), batch_size=2, num_workers=0), DistEnv(), seed=0)
    assert len(again.dataset) == 14 and again.skipped == 2  # from the cache, same answer


def test_images_undecodable_at_run_time_are_replaced_and_counted(corrupt_dir):
    dataset = RecordDataset(str(corrupt_dir))  # no index cache: headers checked, images only when loaded
    assert len(dataset) == 15 and dataset.skipped == 1
    loader = DeviceLoader(dataset, 2, DistEnv(), num_workers=2, seed=0)
    assert check_batches(loader) == 28
    assert loader.skipped == 1 + 1  # the corrupt header and the undecodable image, each once in 2 epochs
    assert loader.stats == {"skipped_records": 2}


def test_identity_records_disagreeing_with_header_fail_before_training(tmp_path):
    rec = IndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "w")
    rec.write_idx(0, pack(IRHeader(2, [4.0, 6.0], 0, 0), b""))
    for key, label in [(1, 0.0), (2, 0.0), (3, 1.0)]:
        rec.write_idx(key, pack(IRHeader(0, label, key, 0), png(flat(0))))
    rec.write_idx(4, pack(IRHeader(2, [1.0, 3.0], 0, 0), b""))
    rec.write_idx(5, pack(IRHeader(2, [2.0, 4.0], 0, 0), b""))  # overlaps identity 0
    rec.close()
    with pytest.raises(DataError, match="identity record 5 .class 1. holds .2, 4., expected .* starting at 3"):
        RecordDataset(str(tmp_path))


def test_every_record_unreadable_is_an_error_not_a_hang(record_dir):
    dataset = RecordDataset(str(record_dir(1, 2, image=lambda k: b"junk")))
    with pytest.raises(DataError, match="consecutive records .* unreadable"):
        dataset.load(0)


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("JPEG", "CMYK"),
        ("PNG", "RGB"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("PPM", "RGB"),
    ],
)
def test_image_check_reads_sizes_of_formats_dali_decodes(fmt, mode):
    assert image_size(encode(PHOTO, fmt, mode=mode)) == (112, 96)


def png_claiming(width, height):
    """A PNG whose header announces another size (its header checksum recomputed, so only the size is off)."""
    data = bytearray(encode(PHOTO, "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_image_check_rejects_what_stops_dalis_decoder():
    jpeg = encode(PHOTO, "JPEG")
    scan = jpeg.index(b"\xff\xda")
    frame = jpeg.index(b"\xff\xc0") + 5  # height and width in the frame header
    cases = [
        (b"", "empty"),
        (bytes(300), "not an image format"),
        (encode(PHOTO, "GIF"), "not an image format"),
        (jpeg[: scan + (len(jpeg) - scan) // 2], "no end-of-image marker"),  # cut in the scan data
        (jpeg[:-2], "no end-of-image marker"),
        (jpeg[: scan + 40] + bytes(len(jpeg) - scan - 40), "no end-of-image marker"),  # zero-filled tail
        (jpeg[: scan - 100], "jpeg: "),  # cut in the header
        (jpeg[:frame] + b"\xea\x60\xea\x60" + jpeg[frame + 4 :], "header gives a 60000x60000 image"),
        (encode(PHOTO, "PNG")[:3000], "no IEND chunk"),
        (png_claiming(60000, 60000), "png: "),
    ]
    for payload, expected in cases:
        with pytest.raises(ValueError, match=expected):
            image_size(payload)


def with_thumbnail(jpeg):
    """`jpeg` with an APP1 segment holding a whole small JPEG, as EXIF thumbnails do (SOS and EOI included)."""
    thumbnail = encode(noise(0, 16), "JPEG")
    body = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_image_check_is_not_fooled_by_an_embedded_thumbnail():
    photo = with_thumbnail(encode(PHOTO, "JPEG"))
    assert image_size(photo) == (112, 96)
    thumbnail_end = photo.index(b"\xff\xd9") + 2  # the thumbnail's end-of-image marker comes first
    main_scan = photo.index(b"\xff\xda", thumbnail_end)
    for cut in (main_scan + 50, len(photo) - 2):  # cut in the photo's scan data; only its EOI missing
        with pytest.raises(ValueError, match="no end-of-image marker"):
            image_size(photo[:cut])


def test_image_check_leaves_out_a_record_whose_length_runs_into_the_next(record_dir):
    root = record_dir(1, 3, image=lambda k: encode(PHOTO, "JPEG"))
    offset = read_index(os.path.join(root, "train.idx"))[2]
    with open(root / "train.rec", "r+b") as fh:  # record 2 announces 16 more bytes than it holds
        fh.seek(offset + 4)
        length = struct.unpack("<I", fh.read(4))[0]
        fh.seek(offset + 4)
        fh.write(struct.pack("<I", length + 16))
    with IndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "r") as record:
        result = check_record_images(record, [1, 2, 3])
    assert result.keys == [1, 3] and dict(result.sizes) == {(112, 96): 2}
    assert "record 2: record announces" in result.skipped[2]
