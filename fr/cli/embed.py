"""fr-embed: face embeddings of images with a checkpoint or an ONNX file, or the cosine similarity of two images.

fr-embed --checkpoint CKPT_OR_ONNX IMAGES... --out features.npy              aligned S x S crops (S = 112)
fr-embed --checkpoint CKPT_OR_ONNX --landmarks FILE [IMAGES...] --out f.npy  photos, aligned by their 5 points
fr-embed --checkpoint CKPT_OR_ONNX [--landmarks FILE] --compare A B          prints cos(A, B)

The landmarks file has one line per photo, `PATH x1 y1 x2 y2 x3 y3 x4 y4 x5 y5`: the left eye, right eye, nose
tip, left and right mouth corners in the photo's pixel coordinates (as a 5-point detector such as RetinaFace or
SCRFD gives them; the subject's left eye is on the image's left). PATH may hold spaces; a relative PATH is
relative to the landmarks file's directory; blank lines and lines starting with '#' are skipped. Without IMAGES,
every photo the file lists is embedded, in its order.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from evaluation.errors import UserInputError
from fr.cli.common import UsageError, run_cli, setup_logging

POINTS = 5


class ImageInputError(UserInputError):
    """An image or landmarks row that cannot be used; the message names the file (and line)."""


# normalised absolute image path -> (line number, landmarks [5, 2], the path as the file resolves it)
Landmarks = Dict[str, Tuple[int, np.ndarray, str]]


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def read_landmarks_list(path: str) -> Landmarks:
    """Parse a landmarks file (see the module docstring); a bad row is an ImageInputError naming `path:line`."""
    if not os.path.isfile(path):
        raise ImageInputError(f"{path}: landmarks file not found")
    base = os.path.dirname(os.path.abspath(path))
    rows: Landmarks = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.rsplit(maxsplit=2 * POINTS)
            where = f"{path}:{number}"
            if len(fields) != 2 * POINTS + 1:
                raise ImageInputError(
                    f"{where}: expected 'IMAGE x1 y1 ... x5 y5' (a path and {2 * POINTS} numbers), "
                    f"got {len(text.split())} fields"
                )
            try:
                values = np.array([float(v) for v in fields[1:]], np.float64)
            except ValueError:
                bad = next(v for v in fields[1:] if not _is_number(v))
                raise ImageInputError(f"{where}: {bad!r} is not a number (expected x1 y1 ... x5 y5)") from None
            if not np.isfinite(values).all():
                raise ImageInputError(f"{where}: landmarks must be finite numbers")
            image = os.path.join(base, fields[0])
            key = _key(image)
            if key in rows:
                raise ImageInputError(f"{where}: {fields[0]} already has landmarks on line {rows[key][0]}")
            rows[key] = (number, values.reshape(POINTS, 2), image)
    if not rows:
        raise ImageInputError(f"{path}: no landmark rows")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_image(path: str) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (pixels as stored: no EXIF rotation)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ImageInputError(f"{path}: no such image")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(f"{path}: not a readable image ({' '.join(str(exc).split())})") from None


def load_face(path: str, size: int, landmarks: Optional[Landmarks], landmarks_path: Optional[str]) -> np.ndarray:
    """The size x size face crop of `path`: aligned by its landmarks row when there is a landmarks file, else the
    image itself, which must then be an aligned crop of that size."""
    from evaluation.align import align_face

    if landmarks is not None:
        row = landmarks.get(_key(path))
        if row is None:
            raise ImageInputError(f"{path}: no row for it in {landmarks_path}")
        image = read_image(path)
        try:
            return align_face(image, row[1], size)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ImageInputError(f"{landmarks_path}:{row[0]}: unusable landmarks for {path} ({exc})") from None
    image = read_image(path)
    if image.shape[:2] != (size, size):
        raise ImageInputError(
            f"{path}: {image.shape[1]}x{image.shape[0]} is not an aligned {size}x{size} face crop "
            "(give --landmarks FILE to align photos)"
        )
    return image


def _load_model(args: argparse.Namespace):
    """(model, device, input size): an .onnx file through onnxruntime, else an fr checkpoint."""
    import torch

    if args.checkpoint.endswith(".onnx"):
        from evaluation.onnx_model import OnnxBackbone

        model = OnnxBackbone(args.checkpoint)
        side = model.session.get_inputs()[0].shape[-1]
        return model, torch.device("cpu"), side if isinstance(side, int) else 112
    from fr.distributed import choose_device
    from fr.train.pretrained import load_backbone

    device = choose_device(args.device, 0)
    model = load_backbone(args.checkpoint, backbone=args.backbone, embedding_size=args.embedding_size, device=device)
    return model, device, int(getattr(model, "input_size", 112))


def embed_files(args: argparse.Namespace, paths: Sequence[str], landmarks: Optional[Landmarks]) -> np.ndarray:
    """float32 [len(paths), D] raw embeddings (image + flipped image when --flip), read batch by batch."""
    import torch

    from evaluation.embed import embed_images

    model, device, size = _load_model(args)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), args.batch_size):
            names = paths[start : start + args.batch_size]
            crops = np.stack([load_face(p, size, landmarks, args.landmarks) for p in names])
            chunks.append(embed_images(model, crops, batch_size=args.batch_size, device=device, flip=args.flip))
    return np.concatenate(chunks, axis=0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _images(args: argparse.Namespace, landmarks: Optional[Landmarks]) -> List[str]:
    """The image paths to embed, checked against the mode (--compare or --out)."""
    if args.compare:
        if args.images:
            raise UsageError("give either IMAGES or --compare A B, not both")
        return list(args.compare)
    if not args.out:
        raise UsageError("give --out FILE.npy (or --compare A B)")
    if args.images:
        return list(args.images)
    if landmarks is None:
        raise UsageError("give the IMAGES to embed (or --landmarks FILE to embed every photo it lists)")
    return [row[2] for row in landmarks.values()]


def _run(args: argparse.Namespace) -> int:
    from evaluation.fileio import atomic_write

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    landmarks = read_landmarks_list(args.landmarks) if args.landmarks else None
    paths = _images(args, landmarks)
    for path in paths:  # a missing file is reported before the (slow) model load
        if not os.path.isfile(path):
            raise ImageInputError(f"{path}: no such image")
    features = embed_files(args, paths, landmarks)
    if args.out:
        atomic_write(args.out, lambda fh: np.save(fh, features))
    if args.compare:
        print(f"{cosine(features[0], features[1]):.6f}")
    else:
        print(f"fr-embed: wrote {args.out}: {features.shape[0]} embeddings of size {features.shape[1]}")
    return 0


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fr-embed",
        description="Embeddings of aligned face crops, or of photos with 5-point landmarks, with an fr checkpoint "
        "or an ONNX file; --compare prints the cosine similarity of two images.",
        epilog="Landmarks file: one line per photo, 'PATH x1 y1 x2 y2 x3 y3 x4 y4 x5 y5' (left eye, right eye, "
        "nose, left and right mouth corners, in pixels); relative paths are relative to the file's directory.",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGES", help="image files (aligned crops without --landmarks)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model.pt state_dict, a run directory, a resumable checkpoint, or an .onnx file",
    )
    parser.add_argument("--landmarks", help="5-point landmarks per photo (see below); photos are aligned with them")
    parser.add_argument("--out", help="write the embeddings, float32 [N, D] in IMAGES order, to this .npy")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the cosine similarity of two images")
    parser.add_argument("--flip", action="store_true", help="embedding = image + its horizontal flip (flip-sum)")
    parser.add_argument("--backbone", help="backbone name when the checkpoint has no config.json beside it")
    parser.add_argument("--embedding-size", type=int, help="embedding size (default: from config.json, else 512)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli("fr-embed", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
