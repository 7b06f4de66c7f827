"""The canonical drawing frame (a 112x112 ArcFace crop) and the point-set primitives every shape is built from."""

from __future__ import annotations

import numpy as np

CANON = 112.0  # side of the canonical frame; every shape is drawn in these units
CENTRE_X = 56.0  # vertical axis of the face
PIVOT_Y = 60.0  # centre of pose rotation

# read-only sample grids, built once so the per-image draw list stays cheap
UNIT_CIRCLES = {
    n: np.stack([np.cos(t), np.sin(t)], 1)
    for n in (8, 12, 14, 16, 20, 24, 28)
    for t in [np.linspace(0, 2 * np.pi * (1 - 1 / n), n)]
}
T9 = np.linspace(-1, 1, 9)
T11 = np.linspace(-1, 1, 11)
S7 = np.linspace(0, 1, 7)
for _grid in (*UNIT_CIRCLES.values(), T9, T11, S7):
    _grid.setflags(write=False)
del _grid


def arc(cx, cy, rx, ry, t0, t1, n) -> np.ndarray:
    """`n` points of the ellipse arc from angle `t0` to `t1` (radians), both ends included."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def ellipse(cx, cy, rx, ry, n=20) -> np.ndarray:
    """`n` points around an axis-aligned ellipse."""
    unit = UNIT_CIRCLES.get(n)
    if unit is None:
        return arc(cx, cy, rx, ry, 0, 2 * np.pi * (1 - 1 / n), n)
    return unit * (rx, ry) + (cx, cy)


def rotate(pts, cx, cy, deg) -> np.ndarray:
    """`pts` rotated by `deg` degrees about (cx, cy)."""
    r = np.deg2rad(deg)
    c, s = np.cos(r), np.sin(r)
    d = pts - (cx, cy)
    return np.stack([cx + c * d[:, 0] - s * d[:, 1], cy + s * d[:, 0] + c * d[:, 1]], 1)


def superellipse(cx, cy, rx, ry, p, n=24) -> np.ndarray:
    """`n` points of |x/rx|^(2/p) + |y/ry|^(2/p) = 1: p < 1 squares the ellipse off (lens frames)."""
    t = np.linspace(0, 2 * np.pi * (1 - 1 / n), n)
    c, s = np.cos(t), np.sin(t)
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** p, cy + ry * np.sign(s) * np.abs(s) ** p], 1)
