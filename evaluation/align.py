"""5-point face alignment: a least-squares similarity transform (Umeyama) to the 112x112 ArcFace template.

Landmarks are in the detector's convention, pixel centres at integer coordinates (as OpenCV's
`warpAffine`, which insightface uses); the warp itself is Pillow's bilinear affine transform, whose pixel
centres sit at half-integers, so `warp_face` shifts by half a pixel on both sides to sample the same points.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix `[sR | t]` minimising `sum ||dst - (sR src + t)||^2` over scale, rotation, translation.

    Umeyama (1991): the rotation comes from the SVD of the cross-covariance, with a sign flip that keeps
    it a proper rotation (no reflection); the scale is the ratio of the matched spread to the source spread.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two [K, 2] point sets with K >= 2, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src <= 0:
        raise ValueError("source points are all identical: no transform is defined")
    u, sig, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / var_src)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = mu_dst - scale * rot @ mu_src
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    a = np.asarray(matrix, np.float64)[:, :2]
    a_inv = np.linalg.inv(a)
    return np.hstack([a_inv, -(a_inv @ np.asarray(matrix, np.float64)[:, 2:])])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """`image` (uint8 HxWxC) mapped by the 2x3 `matrix` (integer-centre coordinates) into a `size` (w, h) image.

    Output pixels that fall outside the source are black, as OpenCV's default border.
    """
    matrix = np.asarray(matrix, np.float64)
    # Pillow samples at half-integer pixel centres: conjugate the matrix by a half-pixel shift.
    shifted = matrix.copy()
    shifted[:, 2] += 0.5 - matrix[:, :2] @ np.array([0.5, 0.5])
    inv = invert_affine(shifted)
    pil = Image.fromarray(np.ascontiguousarray(image))
    out = pil.transform(tuple(size), Image.Transform.AFFINE, tuple(inv.ravel()), resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The `size`x`size` ArcFace crop of `image` (uint8 HxWx3) given its five landmarks [5, 2]."""
    landmarks = np.asarray(landmarks, np.float64).reshape(5, 2)
    template = ARCFACE_TEMPLATE * (size / 112.0)
    return warp_affine(image, similarity_transform(landmarks, template), (size, size))
