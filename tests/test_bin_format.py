"""Tests for evaluation.bin_format: insightface .bin verification sets (Python 2 and 3 pickles)."""

import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
from PIL import Image

from evaluation import bin_format, load_bin, write_bin
from evaluation.bin_format import BinFormatError, encode_jpeg, encode_png
from tests.helpers.images import png


def random_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def smooth_images(n, size):
    """Gradients with a per-image offset: JPEG reproduces them closely."""
    y, x = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i, ..., 0] = x * 2
        out[i, ..., 1] = y * 2
        out[i, ..., 2] = 100 + 10 * i
    return out


def py2_pickle(bins, issame):
    """The bytes Python 2's cPickle writes for `(bins, issame)` at protocol 2, with `bins` as py2 `str`.

    Opcodes: PROTO 2; EMPTY_LIST, BINPUT, MARK, one SHORT_BINSTRING (length < 256) or BINSTRING per image,
    each memoised with BINPUT, APPENDS; the same for the bools (NEWTRUE/NEWFALSE); TUPLE2; STOP.
    """
    memo = iter(range(256))
    out = bytearray(b"\x80\x02")
    out += b"]q" + bytes([next(memo)]) + b"("
    for data in bins:
        if len(data) < 256:
            out += b"U" + bytes([len(data)]) + data
        else:
            out += b"T" + struct.pack("<i", len(data)) + data
        out += b"q" + bytes([next(memo)])
    out += b"e"
    out += b"]q" + bytes([next(memo)]) + b"("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    out += b"e\x86q" + bytes([next(memo)]) + b"."
    return bytes(out)


def test_png_round_trip_is_exact(tmp_path):
    images = random_images(8, 112)
    issame = [True, False, False, True]
    path = tmp_path / "set.bin"
    write_bin(path, [encode_png(im) for im in images], issame)
    got_images, got_issame = load_bin(path)
    assert got_images.dtype == np.uint8 and got_images.shape == (8, 112, 112, 3)
    np.testing.assert_array_equal(got_images, images)
    assert got_issame.dtype == np.bool_ and got_issame.tolist() == issame
    # Written as a plain protocol-4 pickle of (list of bytes, list of bool).
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[:2] == b"\x80\x04"
    bins, flags = pickle.loads(raw)
    assert isinstance(bins, list) and all(isinstance(b, bytes) for b in bins) and flags == issame


def test_jpeg_round_trip_within_tolerance(tmp_path):
    images = smooth_images(6, 112)
    path = tmp_path / "set.bin"
    encoded = [encode_jpeg(im, quality=95) for im in images]
    assert all(b[:2] == b"\xff\xd8" for b in encoded)  # JPEG start-of-image marker
    write_bin(path, encoded, [True, False, True])
    got, issame = load_bin(path)
    diff = np.abs(got.astype(int) - images.astype(int))
    assert diff.mean() < 2.0 and diff.max() < 16
    assert issame.tolist() == [True, False, True]
    assert len(encode_jpeg(images[0], quality=30)) < len(encoded[0])


def test_python2_pickle_with_str_images_needs_bytes_encoding(tmp_path):
    flat = np.full((2, 16, 16, 3), 200, dtype=np.uint8)  # compresses below 256 bytes: SHORT_BINSTRING
    noisy = random_images(2, 16, seed=3)  # stays above 256 bytes: BINSTRING
    images = np.stack([flat[0], noisy[0], noisy[1], flat[1]])
    bins = [encode_png(im) for im in images]
    assert len(bins[0]) < 256 < len(bins[1])
    raw = py2_pickle(bins, [False, True])
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert {"SHORT_BINSTRING", "BINSTRING", "NEWTRUE", "NEWFALSE", "TUPLE2"} <= ops
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)  # what a plain Python 3 load does with py2 binary str
    path = tmp_path / "lfw.bin"
    path.write_bytes(raw)
    got, issame = load_bin(path, image_size=16)
    np.testing.assert_array_equal(got, images)
    assert issame.tolist() == [False, True]


def test_protocol2_pickle_with_bytes_entries(tmp_path):
    images = random_images(4, 16, seed=4)
    path = tmp_path / "p2.bin"
    with open(path, "wb") as f:
        pickle.dump(([encode_png(im) for im in images], [True, False]), f, protocol=2)
    got, issame = load_bin(path, image_size=16)
    np.testing.assert_array_equal(got, images)
    assert issame.tolist() == [True, False]


def test_images_are_resized_to_image_size(tmp_path):
    images = random_images(4, 96, seed=5)
    images[1] = [10, 20, 30]  # a constant image must stay constant
    path = tmp_path / "96.bin"
    write_bin(path, [encode_png(im) for im in images], [True, False])
    got, _ = load_bin(path, image_size=112)
    assert got.shape == (4, 112, 112, 3)
    assert (got[1] == np.array([10, 20, 30], dtype=np.uint8)).all()
    expected = np.asarray(Image.fromarray(images[0]).resize((112, 112), Image.BILINEAR))
    np.testing.assert_array_equal(got[0], expected)


def test_grayscale_images_are_converted_to_rgb(tmp_path):
    gray = np.random.default_rng(6).integers(0, 256, size=(16, 16), dtype=np.uint8)
    path = tmp_path / "gray.bin"
    write_bin(path, [png(gray)] * 2, [True])  # PIL's encoder, independent of encode_png
    got, _ = load_bin(path, image_size=16)
    np.testing.assert_array_equal(got[0], np.repeat(gray[:, :, None], 3, axis=2))


# ---------------------------------------------------------------- errors


def assert_one_line_naming(info, path):
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError) as info:
        load_bin(path)
    assert_one_line_naming(info, path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.bin"
    write_bin(path, [encode_png(im) for im in random_images(4, 16)], [True, False])
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BinFormatError, match="not a readable pickle") as info:
        load_bin(path, image_size=16)
    assert_one_line_naming(info, path)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(BinFormatError, match="not a readable pickle") as info:
        load_bin(path)
    assert_one_line_naming(info, path)


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"bins": []}, "2-tuple"),
        (([b"x"], [True], [1]), "2-tuple"),
        ((b"xx", [True]), "list of image bytes"),
        (([b"a", b"b", b"c"], [True]), "even number of images"),
        (([b"a", b"b", b"c", b"d"], [True]), "1 issame entries need 2 images, got 4"),
    ],
)
def test_wrong_structure(tmp_path, payload, match):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(BinFormatError, match=match) as info:
        load_bin(path)
    assert_one_line_naming(info, path)


def test_undecodable_image_names_its_index(tmp_path):
    bins = [encode_png(im) for im in random_images(4, 16)]
    bins[3] = b"\x89PNG broken"
    path = tmp_path / "img.bin"
    write_bin(path, bins, [True, False])
    with pytest.raises(BinFormatError, match="image 3 cannot be decoded") as info:
        load_bin(path, image_size=16)
    assert_one_line_naming(info, path)


def test_write_bin_validates_counts(tmp_path):
    with pytest.raises(ValueError, match="even number of images"):
        write_bin(tmp_path / "a.bin", [b"a", b"b", b"c"], [True])
    with pytest.raises(ValueError, match="2 issame entries need 4 images, got 2"):
        write_bin(tmp_path / "a.bin", [b"a", b"b"], [True, False])
    assert os.listdir(tmp_path) == []


def test_write_bin_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "set.bin"
    write_bin(path, [b"old0", b"old1"], [True])
    before = path.read_bytes()

    def failing_dump(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bin_format.pickle, "dump", failing_dump)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bin(path, [b"new0", b"new1"], [False])
    assert path.read_bytes() == before  # the old file survives a failed write
    assert os.listdir(tmp_path) == ["set.bin"]  # and no temporary file is left behind


def test_encode_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_jpeg(np.zeros((4, 4), dtype=np.uint8))
