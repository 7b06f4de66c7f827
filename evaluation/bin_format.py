"""insightface `.bin` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): read, write, encode.

A `.bin` file is a pickle of `(bins, issame_list)`: `bins` holds 2N encoded images (JPEG/PNG bytes),
`issame_list` N booleans, and pair i is images 2i and 2i+1. insightface's files were written by Python 2,
so their image entries are py2 `str`, which Python 3 only unpickles with `encoding='bytes'`.
Unpickling runs code named in the file: load `.bin` files from trusted sources only.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
from typing import Any, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from evaluation.errors import UserInputError

ImageSize = Union[int, Tuple[int, int]]
_BYTES_LIKE = (bytes, bytearray, memoryview)


class BinFormatError(UserInputError):
    """A `.bin` file that is not a verification set; the message names the file and what was expected."""


def _unpickle(path: str) -> Any:
    """The pickled object in `path`, retrying py2 pickles with `encoding='bytes'`."""
    try:
        with open(path, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:
                # A Python 2 pickle whose `str` entries are binary image data.
                f.seek(0)
                return pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such verification .bin file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise BinFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _split_payload(path: str, obj: Any) -> Tuple[list, list]:
    """Validate the unpickled structure and return (bins, issame) as lists."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{path}: expected a pickled 2-tuple (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise BinFormatError(
            f"{path}: expected (list of image bytes, list of bool), "
            f"got ({type(bins).__name__}, {type(issame).__name__})"
        )
    if len(bins) % 2:
        raise BinFormatError(f"{path}: expected an even number of images (pairs at 2i, 2i+1), got {len(bins)}")
    if len(issame) * 2 != len(bins):
        raise BinFormatError(f"{path}: {len(issame)} issame entries need {len(issame) * 2} images, got {len(bins)}")
    return list(bins), list(issame)


def _pair(image_size: ImageSize) -> Tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def decode_image(data: Any, image_size: ImageSize = 112) -> np.ndarray:
    """RGB uint8 [H, W, 3] from encoded bytes, resized (bilinear) to `image_size` when it differs."""
    if isinstance(data, np.ndarray):  # some converters store the encoded buffer as a uint8 array
        data = data.tobytes()
    if not isinstance(data, _BYTES_LIKE):
        raise TypeError(f"expected encoded image bytes, got {type(data).__name__}")
    h, w = _pair(image_size)
    with Image.open(io.BytesIO(bytes(data))) as img:
        img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def load_bin(path: Union[str, os.PathLike], image_size: ImageSize = 112) -> Tuple[np.ndarray, np.ndarray]:
    """Images uint8 [2N, H, W, 3] RGB and issame bool [N] from an insightface `.bin` file."""
    path = os.fspath(path)
    bins, issame = _split_payload(path, _unpickle(path))
    h, w = _pair(image_size)
    images = np.empty((len(bins), h, w, 3), dtype=np.uint8)
    for i, data in enumerate(bins):
        try:
            images[i] = decode_image(data, (h, w))
        except (OSError, ValueError, TypeError, SyntaxError) as e:  # PIL raises these for corrupt data
            raise BinFormatError(f"{path}: image {i} cannot be decoded ({type(e).__name__}: {e})") from None
    return images, np.asarray(issame, dtype=np.bool_)


def write_bin(path: Union[str, os.PathLike], images_bytes: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write `(images_bytes, issame)` as a `.bin` file (pickle protocol 4), atomically."""
    path = os.fspath(path)
    bins = [bytes(b) for b in images_bytes]
    flags = [bool(s) for s in issame]
    if len(bins) % 2:
        raise ValueError(f"{path}: expected an even number of images (pairs at 2i, 2i+1), got {len(bins)}")
    if len(flags) * 2 != len(bins):
        raise ValueError(f"{path}: {len(flags)} issame entries need {len(flags) * 2} images, got {len(bins)}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".bin", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((bins, flags), f, protocol=4)
            f.flush()
            os.fsync(f.fileno())
        # Readers see either the old file or the complete new one, never a partial write.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _encode(rgb_uint8: np.ndarray, fmt: str, **options: Any) -> bytes:
    """Encode an RGB uint8 [H, W, 3] array with PIL."""
    arr = np.asarray(rgb_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {arr.dtype} {tuple(arr.shape)}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **options)
    return buf.getvalue()


def encode_jpeg(rgb_uint8: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB uint8 [H, W, 3] array."""
    return _encode(rgb_uint8, "JPEG", quality=quality)


def encode_png(rgb_uint8: np.ndarray) -> bytes:
    """PNG (lossless) bytes of an RGB uint8 [H, W, 3] array."""
    return _encode(rgb_uint8, "PNG")
