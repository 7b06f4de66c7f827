"""Procedural face-like images: fr's embedded, download-free default data set.

An ``Identity`` is a frozen set of facial parameters (geometry, colours, hair, accessories);
``render_face`` draws one identity under random nuisance (pose, expression, light, colour,
blur, noise, occlusion, cluttered background) into an ArcFace-style aligned crop
(eyes near y=51, nose tip near y=71, mouth near y=92 at 112x112).

Every draw is a pure function of ``(seed, identity)`` or ``(seed, identity, image)`` through
``numpy.random.SeedSequence`` spawn keys, so splitting the work across processes in any way
renders the same bytes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "SynthStyle",
    "Identity",
    "HAIR_STYLES",
    "GLASSES",
    "FACIAL_HAIR",
    "identity_seed",
    "image_seed",
    "sample_identity",
    "identity_for",
    "render_face",
    "render_identity_images",
    "render_identities",
]

Colour = Tuple[int, int, int]

HAIR_STYLES = ("none", "short", "long", "fringe", "side_part", "curly", "bun")
GLASSES = ("none", "round", "rect", "wide")
FACIAL_HAIR = ("none", "stubble", "moustache", "goatee", "beard")

# Canonical frame: 112x112 ArcFace crop coordinates; everything is drawn in these units.
_CANON = 112.0
_CX = 56.0  # vertical axis of the face
_PIVOT_Y = 60.0  # centre of pose rotation
_SUPERSAMPLE = 2

_SKIN = np.array([[250, 222, 200], [228, 180, 145], [190, 135, 95], [135, 90, 60], [85, 55, 40]], float)
_HAIR = np.array(
    [[22, 18, 18], [55, 38, 28], [100, 68, 40], [150, 70, 35], [205, 170, 110], [150, 150, 150], [232, 228, 220]],
    float,
)
_HAIR_P = np.array([0.24, 0.24, 0.18, 0.08, 0.12, 0.09, 0.05])
_FRAMES = ((20, 20, 20), (120, 80, 40), (180, 180, 190), (150, 30, 40), (40, 60, 130))
_IRIS = np.array([[85, 52, 30], [40, 26, 20], [70, 110, 170], [80, 120, 70], [120, 130, 140], [130, 100, 50]], float)


@dataclass(frozen=True)
class SynthStyle:
    """Magnitudes of per-image nuisance; ``difficulty`` multiplies all of them at once.

    Each value is the largest draw (uniform in +-value, or 0..value) unless noted; lengths are
    pixels of the 112x112 frame. The defaults keep raw-pixel and random-network verification
    near 0.7 while a small CNN trained for minutes on CPU passes 0.95 on held-out identities.
    """

    difficulty: float = 1.0
    roll: float = 10.0  # in-plane rotation, degrees
    yaw: float = 20.0  # left/right turn on a pseudo-3D head, degrees
    pitch: float = 12.0  # up/down nod, degrees
    scale_jitter: float = 0.08  # relative
    shift_jitter: float = 7.0  # per axis, pixels
    expression: float = 0.7  # smile, mouth opening, brow raise, blinks, gaze
    illumination: float = 0.7  # log-gain of the light gradient across the image
    colour_cast: float = 0.1  # standard deviation of the per-channel log-gain
    blur: float = 0.8  # Gaussian-equivalent sigma, pixels
    noise: float = 6.0  # standard deviation of additive noise, 0..255 units
    occlusion_prob: float = 0.2  # chance of a hand or object over part of the face
    background_clutter: float = 1.0  # contrast of the background field; mean number of shapes / 6


@dataclass(frozen=True)
class Identity:
    """Everything that stays fixed across the images of one synthetic person."""

    face_half_width: float
    face_half_height: float
    chin_y: float
    jaw: float  # width of the jaw relative to the cheeks
    chin_point: float  # 0 round .. 1 pointed
    skin: Colour
    ear_size: float
    eye_spacing: float
    eye_y: float
    eye_width: float
    eye_height: float
    eye_tilt: float  # degrees, outer corners up when positive
    iris: Colour
    iris_ratio: float
    brow_gap: float
    brow_thickness: float
    brow_angle: float  # degrees, outer ends up when positive
    brow_length: float
    brow_arch: float
    brow_colour: Colour
    nose_y: float
    nose_width: float
    nose_projection: float
    mouth_y: float
    mouth_width: float
    lip_upper: float
    lip_lower: float
    lip_colour: Colour
    mouth_curve: float  # resting smile (+) or frown (-)
    hair_style: str
    hair_colour: Colour
    hairline: float  # forehead height below the top of the face
    hair_volume: float
    hair_part: float  # -1 .. 1, side of the parting / asymmetry
    glasses: str
    glasses_colour: Colour
    glasses_tint: float  # 0 clear .. 1 sunglasses
    facial_hair: str
    earrings: bool
    mole: Tuple[float, float, float]  # x, y, radius; radius 0 means none


def identity_seed(seed: int, identity_index: int) -> np.random.SeedSequence:
    """Seed of identity ``identity_index``'s parameters, independent of any other identity."""
    _check_index("seed", seed)
    _check_index("identity_index", identity_index)
    return np.random.SeedSequence(seed, spawn_key=(identity_index, 0))


def image_seed(seed: int, identity_index: int, image_index: int) -> np.random.SeedSequence:
    """Seed of the nuisance of image ``image_index`` of identity ``identity_index``."""
    _check_index("seed", seed)
    _check_index("identity_index", identity_index)
    _check_index("image_index", image_index)
    return np.random.SeedSequence(seed, spawn_key=(identity_index, 1, image_index))


def _check_index(name: str, value: int) -> None:
    if int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _colour(c) -> Colour:
    return tuple(min(255, max(0, int(round(float(v))))) for v in c)


def _mix(a, b, t: float) -> Colour:
    return _colour([x * (1 - t) + y * t for x, y in zip(a, b)])


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's fixed parameters."""
    u = rng.uniform
    tone = u(0, len(_SKIN) - 1)
    lo = int(min(tone, len(_SKIN) - 2))
    skin = _SKIN[lo] + (tone - lo) * (_SKIN[lo + 1] - _SKIN[lo]) + rng.normal(0, 1, 3) * (8, 6, 6)
    skin = _colour(skin)
    a = u(37, 47)
    b = u(50, 59)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * u(0.8, 1.2) + rng.normal(0, 8, 3)
    hair = _colour(hair)
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.1, 0.24, 0.2, 0.14, 0.14, 0.1, 0.08])]
    glasses = GLASSES[rng.choice(len(GLASSES), p=[0.64, 0.12, 0.14, 0.1])]
    facial_hair = FACIAL_HAIR[rng.choice(len(FACIAL_HAIR), p=[0.6, 0.1, 0.1, 0.08, 0.12])]
    eye_y = u(48, 54)
    nose_y = u(67, 76)
    mouth_y = u(nose_y + 15, nose_y + 22)
    has_mole = rng.random() < 0.3
    mole = (
        (float(_CX + u(-28, 28)), float(u(eye_y + 8, mouth_y + 6)), float(u(1.0, 2.2)))
        if has_mole
        else (0.0, 0.0, 0.0)
    )
    lip = _mix(skin, (165, 55, 70), u(0.25, 0.55))
    return Identity(
        face_half_width=float(a),
        face_half_height=float(b),
        chin_y=float(u(103, 113)),
        jaw=float(u(0.55, 0.95)),
        chin_point=float(u(0.0, 1.0)),
        skin=skin,
        ear_size=float(u(0.8, 1.25)),
        eye_spacing=float(u(30, 40)),
        eye_y=float(eye_y),
        eye_width=float(u(9, 14)),
        eye_height=float(u(3.5, 6.0)),
        eye_tilt=float(u(-10, 10)),
        iris=_colour(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 8, 3)),
        iris_ratio=float(u(0.55, 0.85)),
        brow_gap=float(u(6, 12)),
        brow_thickness=float(u(1.5, 5.0)),
        brow_angle=float(u(-15, 15)),
        brow_length=float(u(11, 18)),
        brow_arch=float(u(0, 4)),
        brow_colour=_mix(hair, (20, 15, 15), u(0.1, 0.6)),
        nose_y=float(nose_y),
        nose_width=float(u(8, 17)),
        nose_projection=float(u(4, 11)),
        mouth_y=float(mouth_y),
        mouth_width=float(u(20, 34)),
        lip_upper=float(u(1.5, 4.5)),
        lip_lower=float(u(2.0, 6.0)),
        lip_colour=lip,
        mouth_curve=float(u(-1.5, 2.0)),
        hair_style=style,
        hair_colour=hair,
        hairline=float(u(9, 24)),
        hair_volume=float(u(2, 9)),
        hair_part=float(u(-1, 1)),
        glasses=glasses,
        glasses_colour=_colour(_FRAMES[rng.integers(len(_FRAMES))]),
        glasses_tint=float(rng.random() < 0.25) * float(u(0.4, 0.85)),
        facial_hair=facial_hair,
        earrings=bool(rng.random() < 0.2),
        mole=mole,
    )


def identity_for(seed: int, identity_index: int) -> Identity:
    """The identity number ``identity_index`` of the data set ``seed``."""
    return sample_identity(np.random.default_rng(identity_seed(seed, identity_index)))


# --------------------------------------------------------------------------- geometry helpers

# read-only sample grids, built once so the per-image draw list stays cheap
_UNIT_CIRCLES = {
    n: np.stack([np.cos(t), np.sin(t)], 1)
    for n in (8, 12, 14, 16, 20, 24, 28)
    for t in [np.linspace(0, 2 * np.pi * (1 - 1 / n), n)]
}
_T9 = np.linspace(-1, 1, 9)
_T11 = np.linspace(-1, 1, 11)
_S7 = np.linspace(0, 1, 7)
for _grid in (*_UNIT_CIRCLES.values(), _T9, _T11, _S7):
    _grid.setflags(write=False)
del _grid


def _arc(cx, cy, rx, ry, t0, t1, n):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _ellipse(cx, cy, rx, ry, n=20):
    unit = _UNIT_CIRCLES.get(n)
    if unit is None:
        return _arc(cx, cy, rx, ry, 0, 2 * np.pi * (1 - 1 / n), n)
    return unit * (rx, ry) + (cx, cy)


def _rotate(pts, cx, cy, deg):
    r = np.deg2rad(deg)
    c, s = np.cos(r), np.sin(r)
    d = pts - (cx, cy)
    return np.stack([cx + c * d[:, 0] - s * d[:, 1], cy + s * d[:, 0] + c * d[:, 1]], 1)


def _superellipse(cx, cy, rx, ry, p, n=24):
    t = np.linspace(0, 2 * np.pi * (1 - 1 / n), n)
    c, s = np.cos(t), np.sin(t)
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** p, cy + ry * np.sign(s) * np.abs(s) ** p], 1)


class _Shape(NamedTuple):
    kind: str  # "poly" or "line"
    pts: np.ndarray  # [n, 2] canonical coordinates
    fill: tuple  # RGB or RGBA
    width: float  # line width, canonical pixels
    depth: float  # weight of the head ellipsoid's depth in the pose warp (0: flat outline, 1: on the face)
    z: float  # extra depth toward the camera (nose, glasses) or away from it (back hair, ears)


class _Shapes:
    """Back-to-front draw list in canonical coordinates."""

    def __init__(self):
        self.items: List[_Shape] = []

    def poly(self, pts, fill, depth=1.0, z=0.0):
        self.items.append(_Shape("poly", np.asarray(pts, float), fill, 0.0, depth, z))

    def line(self, pts, fill, width, depth=1.0, z=0.0):
        self.items.append(_Shape("line", np.asarray(pts, float), fill, width, depth, z))


def _face_outline(idn: Identity, n=36):
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    t = np.linspace(0, 2 * np.pi * (1 - 1 / n), n)
    c, s = np.cos(t), np.sin(t)
    low = np.clip(s, 0, 1)
    width = 1 - (1 - idn.jaw) * low**1.6 - 0.25 * idn.chin_point * low**6
    return np.stack([_CX + a * c * width, cy + b * s], 1)


def _hair_shapes(sh: _Shapes, idn: Identity, front: bool):
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    top = cy - b
    th = idn.hair_volume
    hc = idn.hair_colour
    style = idn.hair_style
    temple_y = idn.eye_y - 6
    hl = top + idn.hairline
    if not front:
        if style == "long":
            back = _ellipse(_CX, cy + 0.3 * b, a + th + 4, b * 1.3, 28)
            back[:, 1] = np.minimum(back[:, 1], idn.chin_y + 6 + 3 * th)
            sh.poly(back, hc, depth=0.0, z=-18)
        elif style == "curly":
            t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            r = 1 + 0.06 * np.sin(t * 11 + 3 * idn.hair_part)
            pts = np.stack([_CX + (a + th + 8) * r * np.cos(t), cy - 0.25 * b + (b * 0.95 + th) * r * np.sin(t)], 1)
            sh.poly(pts, hc, depth=0.0, z=-12)
        elif style == "bun":
            sh.poly(_ellipse(_CX + 10 * idn.hair_part, top - 4, 12 + th, 10 + th * 0.6), hc, depth=0.0, z=-10)
        return
    if style == "none":
        if idn.hair_volume > 6:  # receding: hair only above the ears
            for side in (-1, 1):
                sh.poly(_ellipse(_CX + side * (a - 2), temple_y - 1, 4.5, 10, 12), hc, depth=0.3)
        return
    # cap: outer arc over the skull, inner edge along the hairline
    outer = _arc(_CX, cy, a + th, b + th, np.pi - 0.12, 2 * np.pi + 0.12, 22)
    s = np.linspace(1, -1, 17)
    part = idn.hair_part if style == "side_part" else 0.0
    inner_y = hl + (temple_y - hl) * np.abs(s) ** 3 + part * 7 * s * (1 - np.abs(s))
    inner = np.stack([_CX + a * 0.97 * s, inner_y], 1)
    sh.poly(np.concatenate([outer, inner]), hc, depth=0.35)
    if style == "fringe":
        brow_top = idn.eye_y - idn.brow_gap - 3
        xs = np.linspace(-a * 0.95, a * 0.95, 13)
        ys = brow_top - 1.5 * (np.arange(13) % 2) - 4 * (np.abs(xs) / a) ** 2
        top_edge = np.array([[_CX + a * 0.97, temple_y], [_CX + a * 0.9, hl - 3], [_CX - a * 0.9, hl - 3],
                             [_CX - a * 0.97, temple_y]])
        sh.poly(np.concatenate([top_edge, np.stack([_CX + xs, ys], 1)]), hc, depth=0.6)
    elif style == "side_part":
        side = 1 if idn.hair_part >= 0 else -1
        swoop = np.array(
            [[_CX + side * 4, top - th], [_CX - side * (a + th * 0.5), top + 6],
             [_CX - side * (a * 0.7), hl + 8], [_CX + side * 2, hl - 1]]
        )
        sh.poly(swoop, hc, depth=0.5)
    elif style == "bun":
        sh.poly(_arc(_CX, top + 2, a * 0.6, 5, np.pi, 2 * np.pi, 8), hc, depth=0.4)
    elif style == "long":
        for side in (-1, 1):
            strand = np.array(
                [[_CX + side * (a + th), temple_y - 4], [_CX + side * (a - 3), temple_y],
                 [_CX + side * (a - 1), idn.chin_y - 18], [_CX + side * (a + th + 3), idn.chin_y + 2 * th]]
            )
            sh.poly(strand, hc, depth=0.2)


def _face_shapes(idn: Identity, expr) -> _Shapes:
    """All shapes of one face in canonical coordinates, back to front."""
    smile, mouth_open, brow_raise, blink, gaze = expr
    sh = _Shapes()
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    skin = idn.skin
    shadow = _mix(skin, (40, 20, 20), 0.35)
    dark = (30, 18, 18)

    _hair_shapes(sh, idn, front=False)
    neck = np.array([[_CX - 0.6 * a, cy + 0.3 * b], [_CX + 0.6 * a, cy + 0.3 * b],
                     [_CX + 0.62 * a, 140], [_CX - 0.62 * a, 140]])
    sh.poly(neck, _mix(skin, (30, 20, 20), 0.2), depth=0.0, z=-8)
    for side in (-1, 1):
        ear = _ellipse(_CX + side * (a - 1), idn.eye_y + 7, 5.5 * idn.ear_size, 10 * idn.ear_size, 14)
        sh.poly(ear, _mix(skin, (40, 20, 20), 0.12), depth=0.0, z=-6)
        if idn.earrings:
            sh.poly(_ellipse(_CX + side * (a + 1), idn.eye_y + 7 + 10 * idn.ear_size, 1.8, 1.8, 8), (215, 185, 70),
                    depth=0.0, z=-5)
    sh.poly(_face_outline(idn), skin, depth=0.0)

    mw, my = idn.mouth_width, idn.mouth_y
    fh = idn.facial_hair
    hc = _mix(idn.hair_colour, (20, 15, 15), 0.2)
    if fh in ("stubble", "beard"):
        outline = _face_outline(idn, 48)
        low = outline[outline[:, 1] > idn.nose_y - 4]
        low = low[np.argsort(np.arctan2(low[:, 1] - cy, low[:, 0] - _CX))]
        inner = np.array([[_CX - mw / 2 - 3, my - 6], [_CX - mw / 2 - 2, my + 2], [_CX, my + 6 + idn.lip_lower],
                          [_CX + mw / 2 + 2, my + 2], [_CX + mw / 2 + 3, my - 6]])
        sh.poly(np.concatenate([low, inner]), hc if fh == "beard" else (*hc, 70))
    elif fh == "goatee":
        top = my + idn.lip_lower
        sh.poly(_ellipse(_CX, (top + idn.chin_y) / 2, mw * 0.3, (idn.chin_y - top) / 2, 14), hc)
    if fh in ("moustache", "beard"):
        lip_top = my - idn.lip_upper
        ny = idn.nose_y
        top = max(ny + 4, lip_top - 5)
        must = np.array([[_CX - mw * 0.32, top + 0.5], [_CX, top], [_CX + mw * 0.32, top + 0.5],
                         [_CX + mw / 2 + 1.5, my + 2], [_CX + mw * 0.25, lip_top - 0.5], [_CX, lip_top - 1],
                         [_CX - mw * 0.25, lip_top - 0.5], [_CX - mw / 2 - 1.5, my + 2]])
        sh.poly(must, hc)
    if idn.mole[2] > 0:
        sh.poly(_ellipse(idn.mole[0], idn.mole[1], idn.mole[2], idn.mole[2], 8), (70, 45, 35))

    # eyes
    ew, eh = idn.eye_width / 2, idn.eye_height * blink
    for side in (-1, 1):
        ex, ey = _CX + side * idn.eye_spacing / 2, idn.eye_y
        t = _T9
        upper = np.stack([ex + ew * t, ey - eh * (1 - t**2) ** 0.8], 1)
        lower = np.stack([ex - ew * t, ey + 0.75 * eh * (1 - t**2)], 1)
        tilt = -side * idn.eye_tilt
        lid = _rotate(upper, ex, ey, tilt)
        if blink > 0.3:
            sh.poly(_rotate(np.concatenate([upper, lower]), ex, ey, tilt), (245, 242, 238))
            r = min(ew * idn.iris_ratio, eh * 0.95)
            ix, iy = ex + gaze[0], ey - 0.1 * eh + gaze[1]
            sh.poly(_ellipse(ix, iy, r, r, 12), idn.iris)
            sh.poly(_ellipse(ix, iy, r * 0.45, r * 0.45, 8), (12, 10, 10))
        sh.line(lid, dark, 1.3)
        # brow
        bl = idn.brow_length
        s = _S7
        inner_x = ex - side * ew * 0.9
        by = ey - idn.brow_gap - brow_raise
        cx_ = inner_x + side * bl * s
        cy_ = by - idn.brow_arch * np.sin(np.pi * s) - np.tan(np.deg2rad(idn.brow_angle)) * bl * s
        half = idn.brow_thickness / 2 * (1 - 0.5 * s)
        brow = np.concatenate([np.stack([cx_, cy_ - half], 1), np.stack([cx_, cy_ + half], 1)[::-1]])
        sh.poly(brow, idn.brow_colour)

    # nose: shaded side of the bridge, tip and nostrils
    nw, ny, pz = idn.nose_width, idn.nose_y, idn.nose_projection
    sh.line(np.array([[_CX + 3, idn.eye_y + 3], [_CX + nw * 0.28, ny - 5]]), (*shadow, 140), 1.4, z=pz * 0.5)
    t = _T9
    sh.line(np.stack([_CX + nw / 2 * t, ny + 1.5 + 1.5 * (1 - t**2) - 2.5 * np.abs(t) ** 3], 1), shadow, 1.5, z=pz)
    for side in (-1, 1):
        sh.poly(_ellipse(_CX + side * nw * 0.24, ny + 1.5, 1.7, 1.0, 8), (60, 30, 30), z=pz * 0.8)

    # mouth: lips around a mouth line that bends with the smile and splits when open
    curve = idn.mouth_curve + smile
    t = _T11
    line_y = my + curve * (1 - t**2) - 0.6 * curve * t**4
    gap = mouth_open * (1 - t**2)
    mx = _CX + mw / 2 * t
    top_lip = np.stack([mx, line_y - gap / 2 - idn.lip_upper * (1 - t**2) ** 0.7 + 0.8 * np.exp(-(t * 6) ** 2)], 1)
    bot_lip = np.stack([mx, line_y + gap / 2 + idn.lip_lower * (1 - t**2) ** 0.6], 1)
    up_edge = np.stack([mx, line_y - gap / 2], 1)
    low_edge = np.stack([mx, line_y + gap / 2], 1)
    if mouth_open > 0.5:
        sh.poly(np.concatenate([up_edge, low_edge[::-1]]), (70, 20, 28))
        teeth = np.stack([mx[2:-2], line_y[2:-2] - gap[2:-2] / 2 + min(2.0, gap.max() * 0.35)], 1)
        sh.poly(np.concatenate([up_edge[2:-2], teeth[::-1]]), (235, 230, 220))
    sh.poly(np.concatenate([top_lip, up_edge[::-1]]), idn.lip_colour)
    sh.poly(np.concatenate([low_edge, bot_lip[::-1]]), idn.lip_colour)
    sh.line(np.concatenate([up_edge[:1], up_edge[1:-1], up_edge[-1:]]), _mix(idn.lip_colour, dark, 0.5), 0.8)

    _hair_shapes(sh, idn, front=True)

    if idn.glasses != "none":
        gc = idn.glasses_colour
        rx = idn.eye_width * 0.5 + 5
        ry = rx * (0.85 if idn.glasses == "round" else 0.7 if idn.glasses == "rect" else 0.62)
        lenses = []
        for side in (-1, 1):
            ex = _CX + side * idn.eye_spacing / 2
            if idn.glasses == "round":
                lens = _ellipse(ex, idn.eye_y + 1, rx, ry, 20)
            else:
                lens = _superellipse(ex, idn.eye_y + 1, rx * (1.12 if idn.glasses == "wide" else 1.0), ry,
                                     0.35 if idn.glasses == "rect" else 0.5)
            lenses.append(lens)
            if idn.glasses_tint > 0:
                sh.poly(lens, (20, 25, 30, int(255 * idn.glasses_tint)), z=4)
            sh.line(np.concatenate([lens, lens[:1]]), gc, 1.6, z=4)
            outer_x = ex + side * rx * (1.12 if idn.glasses == "wide" else 1.0)
            sh.line(np.array([[outer_x, idn.eye_y], [_CX + side * (a - 1), idn.eye_y + 3]]), gc, 1.4, z=2)
        sh.line(np.array([[_CX - idn.eye_spacing / 2 + rx - 1, idn.eye_y - 1], [_CX, idn.eye_y - 2.5],
                          [_CX + idn.eye_spacing / 2 - rx + 1, idn.eye_y - 1]]), gc, 1.4, z=5)
    return sh


# --------------------------------------------------------------------------- rendering


def _warp(sh: _Shapes, idn: Identity, pose, px: float):
    """Pose warp of every shape: pseudo-3D yaw/pitch on an ellipsoid, then roll, scale, shift."""
    yaw, pitch, roll, scale, shift = pose
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    depth_scale = 0.7 * a
    sizes = [len(it.pts) for it in sh.items]
    pts = np.concatenate([it.pts for it in sh.items])
    dk = np.repeat([it.depth for it in sh.items], sizes)
    dz = np.repeat([it.z for it in sh.items], sizes)
    u = (pts[:, 0] - _CX) / a
    v = (pts[:, 1] - cy) / b
    z = dk * depth_scale * np.sqrt(np.clip(1 - u * u - v * v, 0, 1)) + dz
    x = _CX + (pts[:, 0] - _CX) * np.cos(yaw) + z * np.sin(yaw)
    y = _PIVOT_Y + (pts[:, 1] - _PIVOT_Y) * np.cos(pitch) + z * np.sin(pitch)
    c, s = np.cos(roll) * scale, np.sin(roll) * scale
    dx, dy = x - _CX, y - _PIVOT_Y
    out = np.stack([_CX + c * dx - s * dy + shift[0], _PIVOT_Y + s * dx + c * dy + shift[1]], 1) * px
    return np.split(out, np.cumsum(sizes)[:-1])


def _background(rng: np.random.Generator, n: int, clutter: float) -> Image.Image:
    """A smooth random colour field with random shapes on it."""
    k = int(rng.integers(2, 6))
    base = rng.uniform(0, 255, 3)
    field = np.clip(base + rng.normal(0, 30 + 40 * min(clutter, 2), (k, k, 3)), 0, 255).astype(np.uint8)
    # the canvas is box-reduced by 2 at the end, so a nearest 2x upsample of a half-size field is exact and cheap
    img = Image.fromarray(field).resize((n // 2, n // 2), Image.BILINEAR).resize((n, n), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.poisson(6 * clutter))):
        kind = rng.integers(3)
        col = _colour(rng.uniform(0, 255, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * n
        w, h = rng.uniform(0.05, 0.5, 2) * n
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=col, width=max(1, int(rng.uniform(0.01, 0.05) * n)))
    return img


def _occluder(rng: np.random.Generator, idn: Identity) -> Tuple[np.ndarray, tuple]:
    """A hand-like blob or a rectangular object over part of the face (canonical coordinates)."""
    cx = _CX + rng.uniform(-30, 30)
    cy = rng.uniform(idn.eye_y - 10, idn.chin_y - 5)
    w, h = rng.uniform(14, 34, 2)
    if rng.random() < 0.5:
        pts = _ellipse(cx, cy, w / 2, h / 2, 16)
        pts = _rotate(pts, cx, cy, rng.uniform(0, 180))
        tone = rng.uniform(0, len(_SKIN) - 1)
        col = _SKIN[int(tone)] * 0.5 + _SKIN[int(np.ceil(tone))] * 0.5
    else:
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2 + (cx, cy)
        pts = _rotate(pts, cx, cy, rng.uniform(-30, 30))
        col = rng.uniform(0, 255, 3)
    return pts, _colour(col)


def render_face(
    identity: Identity, rng: np.random.Generator, size: int = 112, style: SynthStyle = SynthStyle()
) -> np.ndarray:
    """Draw one image of ``identity``: uint8 RGB array ``[size, size, 3]``, aligned like an ArcFace crop."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    d = style.difficulty
    u = rng.uniform
    pose = (
        np.deg2rad(u(-1, 1) * style.yaw * d),
        np.deg2rad(u(-1, 1) * style.pitch * d),
        np.deg2rad(u(-1, 1) * style.roll * d),
        1 + u(-1, 1) * style.scale_jitter * d,
        u(-1, 1, 2) * style.shift_jitter * d,
    )
    e = style.expression * d
    expr = (
        u(-1.5, 2.5) * e,  # smile
        max(0.0, u(-6, 8)) * min(e, 1.5),  # mouth opening, px
        u(-1, 3) * e,  # brow raise, px
        0.12 if rng.random() < 0.1 * min(e, 3) else 1 + u(-0.25, 0.1) * min(e, 1),  # eye opening (blink)
        u(-1, 1, 2) * (2.0, 0.8) * min(e, 2),  # gaze
    )
    n = size * _SUPERSAMPLE
    px = n / _CANON
    img = _background(rng, n, style.background_clutter * d)
    draw = ImageDraw.Draw(img, "RGBA")
    shirt = _colour(rng.uniform(0, 255, 3))
    shoulders = _ellipse(_CX + u(-8, 8), 150, 80, 42, 24) * px
    draw.polygon(shoulders.ravel().tolist(), fill=shirt)

    shapes = _face_shapes(identity, expr)
    occluded = rng.random() < min(1.0, style.occlusion_prob * d)
    if occluded:
        pts, col = _occluder(rng, identity)
        shapes.poly(pts, col, depth=0.0, z=25)
    for item, pts in zip(shapes.items, _warp(shapes, identity, pose, px)):
        flat = pts.ravel().tolist()
        if item.kind == "poly":
            draw.polygon(flat, fill=item.fill)
        else:
            draw.line(flat, fill=item.fill, width=max(1, int(round(item.width * px))), joint="curve")

    img = img.reduce(_SUPERSAMPLE)
    sigma = u(0, 1) * style.blur * d * size / _CANON
    if sigma > 0.25:  # one box pass of the same variance: a third of a Gaussian's cost, alike at this width
        img = img.filter(ImageFilter.BoxBlur(float(np.sqrt(12 * sigma * sigma + 1) - 1) / 2))
    out = np.asarray(img, dtype=np.float32)

    # illumination: directional gradient plus a soft spot, then per-channel colour cast
    theta = u(0, 2 * np.pi)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    strength = style.illumination * d * u(0.2, 1.0)
    gx, gy = np.cos(theta) * strength, np.sin(theta) * strength
    spot = u(-0.6, 0.6, 2)
    radial = (grid[None, :] - spot[0]) ** 2 + (grid[:, None] - spot[1]) ** 2
    light = np.exp(gx * grid[None, :] + gy * grid[:, None] - 0.25 * style.illumination * d * radial * u(0, 1))
    exposure = rng.normal(0, 0.2 * style.illumination * d)
    gain = np.exp(rng.normal(0, style.colour_cast * d, 3) + exposure)
    out *= light.astype(np.float32)[:, :, None] * gain.astype(np.float32)
    sd = u(0, 1) * style.noise * d
    if sd > 0:
        noise = rng.random(out.shape, dtype=np.float32)  # uniform noise of std sd: 4x cheaper than normal
        noise -= np.float32(0.5)
        noise *= np.float32(sd * np.sqrt(12))
        out += noise
    out += np.float32(0.5)  # round to nearest on the cast below
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def render_identity_images(
    seed: int, identity_index: int, count: int, size: int = 112, style: SynthStyle = SynthStyle(), start: int = 0
) -> np.ndarray:
    """Images ``start .. start+count-1`` of identity ``identity_index``: uint8 ``[count, size, size, 3]``."""
    identity = identity_for(seed, identity_index)
    out = np.empty((count, size, size, 3), np.uint8)
    for j in range(count):
        out[j] = render_face(identity, np.random.default_rng(image_seed(seed, identity_index, start + j)), size, style)
    return out


def render_identities(
    seed: int, identity_indices: Sequence[int], count: int, size: int = 112, style: SynthStyle = SynthStyle()
) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` images of each listed identity: (uint8 ``[N, size, size, 3]``, int64 labels ``[N]``)."""
    ids = list(identity_indices)
    images = np.empty((len(ids) * count, size, size, 3), np.uint8)
    for i, k in enumerate(ids):
        images[i * count : (i + 1) * count] = render_identity_images(seed, k, count, size, style)
    return images, np.repeat(np.asarray(ids, np.int64), count)
