"""One input normalisation: a JPEG gives the same float tensor through the torch training loader, the DALI CPU
loader and the evaluation path, and the lookup table holds IEEE float32 `(x / 255 - 0.5) / 0.5`."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.bin_format import load_bin, write_bin
from evaluation.embed import to_model_input
from evaluation.preprocess import normalize, normalize_table
from fr.data.datasets import RecordDataset
from fr.data.loader import DeviceLoader
from fr.data.writer import InsightfaceRecordWriter
from fr.distributed import DistEnv
from tests.helpers.images import jpeg

IMAGES = 4


def reference(values: np.ndarray) -> np.ndarray:
    """The formula in numpy float32, each operation rounded once (IEEE), independent of torch."""
    x = values.astype(np.float32)
    return (x / np.float32(255) - np.float32(0.5)) / np.float32(0.5)


def test_the_table_and_normalize_are_the_formula_for_every_pixel_value():
    values = np.arange(256, dtype=np.uint8)
    expected = reference(values)
    table = normalize_table()
    assert table.dtype == np.float32 and table.shape == (256,)
    assert np.array_equal(table, expected)
    out = normalize(torch.from_numpy(values))
    assert out.dtype == torch.float32 and np.array_equal(out.numpy(), expected)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 5, 7), dtype=np.uint8))
    got = normalize(images)
    assert got.shape == images.shape and np.array_equal(got.numpy(), reference(images.numpy()))


def test_normalize_refuses_pixels_that_are_not_uint8():
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(4, dtype=torch.float32))


@pytest.fixture(scope="module")
def one_jpeg(tmp_path_factory):
    """A textured 112x112 JPEG (4:2:0), stored IMAGES times in a record file and twice in a .bin set."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:112, 0:112]
    pixels = np.stack([128 + 100 * np.sin(xx / 7 + c) * np.cos(yy / 11 - c) for c in range(3)], -1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    payload = jpeg(pixels, quality=90)
    root = tmp_path_factory.mktemp("normalize")
    with InsightfaceRecordWriter(str(root / "rec")) as writer:
        writer.add_identity([payload] * (IMAGES // 2))
        writer.add_identity([payload] * (IMAGES // 2))
    write_bin(root / "pairs.bin", [payload, payload], [True])
    return root, payload


def evaluation_input(root) -> torch.Tensor:
    images, _ = load_bin(root / "pairs.bin")
    return to_model_input(torch.from_numpy(images))[0]


def test_evaluation_input_is_the_decoded_image_normalised(one_jpeg):
    root, payload = one_jpeg
    decoded = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    assert np.array_equal(evaluation_input(root).permute(1, 2, 0).numpy(), reference(decoded))


def test_the_torch_training_loader_gives_the_evaluation_input(one_jpeg):
    root, _ = one_jpeg
    dataset = RecordDataset(str(root / "rec"), flip=False)
    loader = DeviceLoader(dataset, IMAGES, DistEnv(), num_workers=0, seed=0)
    ((images, _),) = list(loader)
    expected = evaluation_input(root)
    assert images.shape == (IMAGES, 3, 112, 112)
    assert all(torch.equal(image, expected) for image in images)


@pytest.mark.parametrize("converter", ["opencv", "numpy"])
def test_the_dali_cpu_loader_gives_the_evaluation_input(one_jpeg, converter, monkeypatch, tmp_path):
    pytest.importorskip("nvidia.dali")  # a guard only: the `test` extra installs DALI
    from fr.data.dali import DaliLoader

    if converter == "opencv":
        pytest.importorskip("cv2")  # a guard only: the `test` extra installs OpenCV
    else:
        monkeypatch.setattr("fr.data.dali._opencv", lambda: None)
    root, _ = one_jpeg
    loader = DaliLoader(str(root / "rec"), IMAGES, DistEnv(), num_threads=1, cache_dir=str(tmp_path), flip=False)
    ((images, _),) = list(loader)
    expected = evaluation_input(root)
    assert images.shape == (IMAGES, 3, 112, 112)
    assert all(torch.equal(image, expected) for image in images)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_on_a_gpu_gives_the_cpu_bits():
    """CUDA divides by a scalar through its reciprocal; the lookup keeps every device on the IEEE values."""
    values = torch.arange(256, dtype=torch.uint8)
    assert np.array_equal(normalize(values.cuda()).cpu().numpy(), reference(values.numpy()))
