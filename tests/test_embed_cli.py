"""fr-embed: embeddings of crops and of photos with landmarks equal the model run directly; --compare; errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from fr.cli.embed import main as embed_main

# insightface's 112x112 ArcFace template (eyes, nose, mouth corners), written out here as published.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


@pytest.fixture()
def setup(tmp_path, tiny_checkpoint):
    """A run directory (slim iresnet18, 32-d) and three aligned 112x112 crops saved as PNG."""
    model = tiny_checkpoint(tmp_path, 32)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    paths = []
    for i, crop in enumerate(crops):
        paths.append(str(tmp_path / f"crop{i}.png"))
        Image.fromarray(crop).save(paths[-1])
    return tmp_path, model, crops, paths


def reference(model, crops, flip=False):
    """The model on RGB uint8 crops normalised by hand as in training, (x / 255 - 0.5) / 0.5, NCHW."""
    x = torch.from_numpy((crops.astype(np.float32) / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(x)
        if flip:
            out = out + model(x.flip(3))
    return out.numpy()


@pytest.mark.parametrize("flip", [False, True])
def test_crops_embed_as_the_model_does(setup, flip):
    path, model, crops, paths = setup
    out = path / "features.npy"
    argv = ["--checkpoint", str(path), *paths, "--out", str(out), "--batch-size", "2"] + (["--flip"] if flip else [])
    assert embed_main(argv) == 0
    np.testing.assert_allclose(np.load(out), reference(model, crops, flip), rtol=1e-5, atol=1e-5)


def place(canvas, crop, offset, rotate):
    """Put `crop` (rotated 90 degrees counter-clockwise when `rotate`) into `canvas` at `offset` (x, y); returns
    where the template points of the crop land in the canvas (exact: the map takes pixel centres to pixel centres)."""
    ox, oy = offset
    x, y = TEMPLATE[:, 0], TEMPLATE[:, 1]
    if rotate:  # np.rot90: the crop's pixel (x, y) moves to (y, 111 - x)
        crop, (x, y) = np.rot90(crop), (y, 111 - x)
    canvas[oy : oy + 112, ox : ox + 112] = crop
    return np.stack([x + ox, y + oy], axis=1)


def cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_photos_with_landmarks_are_aligned_first(setup):
    path, model, crops, _ = setup
    rng = np.random.default_rng(1)
    lines = ["# photo x1 y1 ... x5 y5"]
    (path / "photos").mkdir()
    for i, (offset, rotate) in enumerate([((30, 50), True), ((7, 90), False)]):
        canvas = rng.integers(0, 256, (240, 200, 3), dtype=np.uint8)
        points = place(canvas, crops[i], offset, rotate)
        Image.fromarray(canvas).save(path / "photos" / f"photo {i}.png")
        lines.append(f"photo {i}.png " + " ".join(f"{v:.6f}" for v in points.ravel()))
    landmarks = str(path / "photos" / "landmarks.txt")
    (path / "photos" / "landmarks.txt").write_text("\n".join(lines) + "\n\n")
    out = path / "photos.npy"
    # No IMAGES: every photo the file lists, in its order (paths relative to the file, with a space).
    assert embed_main(["--checkpoint", str(path), "--landmarks", landmarks, "--out", str(out)]) == 0
    expected = reference(model, crops)
    # The aligned photo is the crop up to the warp's rounding of pixel values (at most 1 level), so compare
    # directions: each row is its own crop's embedding, far from the other crops'.
    got = np.load(out)
    assert (cosines(got, expected[:2]) > 0.999).all()
    assert (cosines(got, expected[[1, 2]]) < 0.95).all()
    # Named IMAGES pick rows from the file.
    argv = ["--checkpoint", str(path), "--landmarks", landmarks, "--out", str(out)]
    assert embed_main(argv + [str(path / "photos" / "photo 1.png")]) == 0
    np.testing.assert_allclose(np.load(out), got[1:], rtol=1e-5, atol=1e-5)


def test_compare_prints_the_cosine_similarity(setup, capsys):
    path, model, crops, paths = setup
    assert embed_main(["--checkpoint", str(path), "--compare", paths[0], paths[2]]) == 0
    a, b = reference(model, crops[[0, 2]]).astype(np.float64)
    expected = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert float(capsys.readouterr().out.strip()) == pytest.approx(expected, abs=2e-6)


def test_onnx_file_embeds_as_the_checkpoint(setup):
    pytest.importorskip("onnxruntime")
    from fr.export.onnx import export_onnx

    path, model, crops, paths = setup
    export_onnx(model, str(path / "model.onnx"))
    out = path / "onnx.npy"
    assert embed_main(["--checkpoint", str(path / "model.onnx"), *paths, "--flip", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), reference(model, crops, flip=True), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "nope.png: no such image"),
        ("short_row", "lm.txt:2: expected 'IMAGE x1 y1 ... x5 y5'"),
        ("not_a_number", "lm.txt:1: 'x' is not a number"),
        ("not_listed", "crop1.png: no row for it in"),
        ("not_a_crop", "is not an aligned 112x112 face crop"),
        ("not_an_image", "bad.png: not a readable image"),
    ],
)
def test_bad_inputs_are_one_line_errors(setup, capsys, case, message):
    path, _, _, paths = setup
    numbers = " ".join(["50"] * 10)
    argv = ["--checkpoint", str(path), "--out", str(path / "f.npy")]
    if case == "missing":
        argv += [paths[0], str(path / "nope.png")]
    elif case in ("short_row", "not_a_number", "not_listed"):
        rows = {
            "short_row": f"crop0.png {numbers}\ncrop1.png {' '.join(['50'] * 9)}\n",
            "not_a_number": f"crop0.png x {' '.join(['50'] * 9)}\n",
            "not_listed": f"crop0.png {numbers}\n",
        }[case]
        (path / "lm.txt").write_text(rows)
        argv += ["--landmarks", str(path / "lm.txt"), paths[1]]
    elif case == "not_a_crop":
        Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path / "photo.png")
        argv += [str(path / "photo.png")]
    else:
        (path / "bad.png").write_bytes(b"not an image")
        argv += [str(path / "bad.png")]
    assert embed_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (path / "f.npy").exists()
