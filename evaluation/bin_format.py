"""insightface `.bin` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): read, write, encode.

A `.bin` file is a pickle of `(bins, issame_list)`: `bins` holds 2N encoded images (JPEG/PNG bytes),
`issame_list` N booleans (a list, or a numpy bool array), and pair i is images 2i and 2i+1. insightface's
files were written by Python 2, so their image entries are py2 `str`, which Python 3 only unpickles with
`encoding='bytes'`. The unpickler admits only the globals such files hold (numpy arrays and bool scalars,
protocol-2 byte strings), so a crafted file is refused instead of running its code.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import reprlib
import struct
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from evaluation.errors import UserInputError
from evaluation.fileio import atomic_write

try:  # numpy >= 2 (numpy 1.x pickles name numpy.core, numpy 2 pickles numpy._core: both are admitted)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

ImageSize = Union[int, Tuple[int, int]]
_BYTES_LIKE = (bytes, bytearray, memoryview)


class BinFormatError(UserInputError):
    """A `.bin` file that is not a verification set; the message names the file and what was expected."""


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of bytes call it: `(str, 'latin1')` only, never another codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode called with ({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """`bytes()` as protocol-2 pickles of b'' call it; arguments (`bytes(10**12)`) are refused."""
    if args:
        raise pickle.UnpicklingError("bytes called with arguments")
    return b""


def _allowed_globals() -> Dict[Tuple[str, str], Callable]:
    """(module, name) -> object: everything Python 2 and 3 tools write into a `.bin` file, at any protocol."""
    allowed: Dict[Tuple[str, str], Callable] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = _multiarray._reconstruct  # arrays, protocols 0-4
        allowed[(f"{module}.multiarray", "scalar")] = _multiarray.scalar  # numpy.bool_ entries
        allowed[(f"{module}.numeric", "_frombuffer")] = _numeric._frombuffer  # arrays, protocol 5
    return allowed


_ALLOWED = _allowed_globals()


class _BinUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the allow-listed globals and refuses every other one.

    It builds on the pure-Python unpickler (as fast here, where the images are large byte strings): its memo is
    a dict, whereas the C unpickler grows a table to any memo index a file names, so one mutated four-byte index
    would ask for gigabytes before any global is looked up.
    """

    def __init__(self, file: Any, path: str, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise BinFormatError(
                f"{self._path}: refused to load global '{module}.{name}' (a .bin holds only images and bools)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise BinFormatError(f"{self._path}: refused a pickle persistent id (a .bin holds only images and bools)")


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _unpickle(path: str) -> Any:
    """The pickled object in `path`, retrying py2 pickles with `encoding='bytes'`."""
    try:
        with open(path, "rb") as f:
            try:
                return _BinUnpickler(f, path).load()
            except UnicodeDecodeError:
                # A Python 2 pickle whose `str` entries are binary image data.
                f.seek(0)
                return _BinUnpickler(f, path, encoding="bytes").load()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such verification .bin file", path) from None
    except BinFormatError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
        RecursionError,
        struct.error,
    ) as e:
        raise BinFormatError(f"{path}: not a readable pickle ({_one_line(e)})") from None


def _check_images(path: str, bins: Sequence[Any]) -> None:
    """Every entry is encoded image bytes (or the uint8 buffer some converters store)."""
    for i, data in enumerate(bins):
        if isinstance(data, (bytes, bytearray)):
            continue
        if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
            continue
        raise BinFormatError(f"{path}: image {i} is a {type(data).__name__}, expected encoded image bytes")


def _issame_flags(path: str, issame: Any) -> np.ndarray:
    """The issame list as bool [N]; entries must be bools (Python or numpy) or the integers 0 and 1."""
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1:
            raise BinFormatError(f"{path}: issame must be one flag per pair, got an array of shape {issame.shape}")
        if issame.dtype == np.bool_:
            return issame.astype(np.bool_)
        issame = issame.tolist()  # numbers, strings or objects: checked one by one below
    for i, flag in enumerate(issame):
        if isinstance(flag, (bool, np.bool_)):
            continue
        # Anything else would be read by truth value: the string "False" is true.
        if isinstance(flag, (int, np.integer)) and flag in (0, 1):
            continue
        shown = flag.item() if isinstance(flag, np.generic) else flag  # 2, not np.int8(2)
        raise BinFormatError(
            f"{path}: issame entry {i} is {reprlib.repr(shown)} ({type(flag).__name__}), expected a bool (or 0/1)"
        )
    return np.array([bool(f) for f in issame], dtype=np.bool_)


def _split_payload(path: str, obj: Any, nrof_folds: Optional[int] = None) -> Tuple[List[Any], np.ndarray]:
    """Validate the unpickled structure and return (bins, issame bool [N])."""
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
    if not bins:
        raise BinFormatError(f"{path}: holds no pairs (expected 2N images and N issame flags)")
    if nrof_folds is not None and len(issame) < nrof_folds:
        raise BinFormatError(
            f"{path}: {len(issame)} pairs, fewer than the {nrof_folds} folds of the verification protocol"
        )
    _check_images(path, bins)
    return list(bins), _issame_flags(path, issame)


def read_bin(path: Union[str, os.PathLike], *, nrof_folds: Optional[int] = None) -> Tuple[List[Any], np.ndarray]:
    """(encoded images [2N], issame bool [N]) of a `.bin` file, checked but not decoded.

    With `nrof_folds`, a file with fewer pairs than folds is refused too (as is one without pairs, always).
    """
    path = os.fspath(path)
    return _split_payload(path, _unpickle(path), nrof_folds)


def _pair(image_size: ImageSize) -> Tuple[int, int]:
    """(height, width) from an int or a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def decode_bin_image(data: Any, image_size: ImageSize = 112) -> np.ndarray:
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


def load_bin(
    path: Union[str, os.PathLike], image_size: ImageSize = 112, *, nrof_folds: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Images uint8 [2N, H, W, 3] RGB and issame bool [N] from an insightface `.bin` file (see `read_bin`)."""
    path = os.fspath(path)
    bins, issame = read_bin(path, nrof_folds=nrof_folds)
    h, w = _pair(image_size)
    images = np.empty((len(bins), h, w, 3), dtype=np.uint8)
    for i, data in enumerate(bins):
        try:
            images[i] = decode_bin_image(data, (h, w))
        except (
            OSError,
            ValueError,
            TypeError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as e:  # what PIL raises for bad data
            raise BinFormatError(f"{path}: image {i} cannot be decoded ({_one_line(e)})") from None
    return images, issame


def write_bin(path: Union[str, os.PathLike], images_bytes: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write `(images_bytes, issame)` as a `.bin` file (pickle protocol 4), atomically."""
    path = os.fspath(path)
    bins = [bytes(b) for b in images_bytes]
    flags = [bool(s) for s in issame]
    if len(bins) % 2:
        raise ValueError(f"{path}: expected an even number of images (pairs at 2i, 2i+1), got {len(bins)}")
    if len(flags) * 2 != len(bins):
        raise ValueError(f"{path}: {len(flags)} issame entries need {len(flags) * 2} images, got {len(bins)}")
    # Readers see either the old file or the complete new one, never a partial write.
    atomic_write(path, lambda fh: pickle.dump((bins, flags), fh, protocol=4))


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
