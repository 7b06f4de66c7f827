"""Known 2-D similarity transforms, to place a face and check that alignment undoes it."""

import numpy as np


def similarity_matrix(scale, degrees, tx, ty) -> np.ndarray:
    """The 2x3 matrix of a rotation by `degrees`, a uniform `scale`, then a shift by (tx, ty)."""
    t = np.deg2rad(degrees)
    rot = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.hstack([rot, [[tx], [ty]]])


def apply_affine(matrix, points) -> np.ndarray:
    """`points` [N, 2] mapped by a 2x3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]
