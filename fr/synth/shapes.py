"""The draw list of one face: every polygon and line of an identity under an expression, in canonical coordinates."""

from __future__ import annotations

from typing import List, NamedTuple

import numpy as np

from fr.synth.frame import CENTRE_X as _CX
from fr.synth.frame import S7, T9, T11, arc, ellipse, rotate, superellipse
from fr.synth.identity import Identity, mix


class Expression(NamedTuple):
    """The per-image face movements (canonical pixels unless noted)."""

    smile: float  # added to the identity's resting mouth curve
    mouth_open: float
    brow_raise: float
    eye_opening: float  # relative eye height: 1 open, near 0 a blink
    gaze: np.ndarray  # [2] iris offset, x and y


class Shape(NamedTuple):
    """One polygon or line of the draw list."""

    kind: str  # "poly" or "line"
    pts: np.ndarray  # [n, 2] canonical coordinates
    fill: tuple  # RGB or RGBA
    width: float  # line width, canonical pixels
    depth: float  # weight of the head ellipsoid's depth in the pose warp (0: flat outline, 1: on the face)
    z: float  # extra depth toward the camera (nose, glasses) or away from it (back hair, ears)


def polygon(pts, fill, depth=1.0, z=0.0) -> Shape:
    """A filled polygon through `pts`."""
    return Shape("poly", np.asarray(pts, float), fill, 0.0, depth, z)


def polyline(pts, fill, width, depth=1.0, z=0.0) -> Shape:
    """A line of `width` canonical pixels through `pts`."""
    return Shape("line", np.asarray(pts, float), fill, width, depth, z)


class Shapes:
    """Back-to-front draw list in canonical coordinates."""

    def __init__(self):
        self.items: List[Shape] = []

    def poly(self, pts, fill, depth=1.0, z=0.0) -> None:
        self.items.append(polygon(pts, fill, depth, z))

    def line(self, pts, fill, width, depth=1.0, z=0.0) -> None:
        self.items.append(polyline(pts, fill, width, depth, z))


def face_outline(idn: Identity, n=36) -> np.ndarray:
    """The face's contour: an ellipse narrowed toward the jaw and, with `chin_point`, the chin."""
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    t = np.linspace(0, 2 * np.pi * (1 - 1 / n), n)
    c, s = np.cos(t), np.sin(t)
    low = np.clip(s, 0, 1)
    width = 1 - (1 - idn.jaw) * low**1.6 - 0.25 * idn.chin_point * low**6
    return np.stack([_CX + a * c * width, cy + b * s], 1)


def _back_hair(sh: Shapes, idn: Identity) -> None:
    """Hair behind the head (long, curly, bun), drawn before the face."""
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    th, hc, style = idn.hair_volume, idn.hair_colour, idn.hair_style
    if style == "long":
        back = ellipse(_CX, cy + 0.3 * b, a + th + 4, b * 1.3, 28)
        back[:, 1] = np.minimum(back[:, 1], idn.chin_y + 6 + 3 * th)
        sh.poly(back, hc, depth=0.0, z=-18)
    elif style == "curly":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 1 + 0.06 * np.sin(t * 11 + 3 * idn.hair_part)
        pts = np.stack([_CX + (a + th + 8) * r * np.cos(t), cy - 0.25 * b + (b * 0.95 + th) * r * np.sin(t)], 1)
        sh.poly(pts, hc, depth=0.0, z=-12)
    elif style == "bun":
        sh.poly(ellipse(_CX + 10 * idn.hair_part, cy - b - 4, 12 + th, 10 + th * 0.6), hc, depth=0.0, z=-10)


def _front_hair(sh: Shapes, idn: Identity) -> None:
    """Hair over the forehead and temples, drawn over the face."""
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    top = cy - b
    th, hc, style = idn.hair_volume, idn.hair_colour, idn.hair_style
    temple_y = idn.eye_y - 6
    hl = top + idn.hairline
    if style == "none":
        if idn.hair_volume > 6:  # receding: hair only above the ears
            for side in (-1, 1):
                sh.poly(ellipse(_CX + side * (a - 2), temple_y - 1, 4.5, 10, 12), hc, depth=0.3)
        return
    # cap: outer arc over the skull, inner edge along the hairline
    outer = arc(_CX, cy, a + th, b + th, np.pi - 0.12, 2 * np.pi + 0.12, 22)
    s = np.linspace(1, -1, 17)
    part = idn.hair_part if style == "side_part" else 0.0
    inner_y = hl + (temple_y - hl) * np.abs(s) ** 3 + part * 7 * s * (1 - np.abs(s))
    inner = np.stack([_CX + a * 0.97 * s, inner_y], 1)
    sh.poly(np.concatenate([outer, inner]), hc, depth=0.35)
    if style == "fringe":
        brow_top = idn.eye_y - idn.brow_gap - 3
        xs = np.linspace(-a * 0.95, a * 0.95, 13)
        ys = brow_top - 1.5 * (np.arange(13) % 2) - 4 * (np.abs(xs) / a) ** 2
        top_edge = np.array(
            [[_CX + a * 0.97, temple_y], [_CX + a * 0.9, hl - 3], [_CX - a * 0.9, hl - 3], [_CX - a * 0.97, temple_y]]
        )
        sh.poly(np.concatenate([top_edge, np.stack([_CX + xs, ys], 1)]), hc, depth=0.6)
    elif style == "side_part":
        side = 1 if idn.hair_part >= 0 else -1
        swoop = np.array(
            [
                [_CX + side * 4, top - th],
                [_CX - side * (a + th * 0.5), top + 6],
                [_CX - side * (a * 0.7), hl + 8],
                [_CX + side * 2, hl - 1],
            ]
        )
        sh.poly(swoop, hc, depth=0.5)
    elif style == "bun":
        sh.poly(arc(_CX, top + 2, a * 0.6, 5, np.pi, 2 * np.pi, 8), hc, depth=0.4)
    elif style == "long":
        for side in (-1, 1):
            strand = np.array(
                [
                    [_CX + side * (a + th), temple_y - 4],
                    [_CX + side * (a - 3), temple_y],
                    [_CX + side * (a - 1), idn.chin_y - 18],
                    [_CX + side * (a + th + 3), idn.chin_y + 2 * th],
                ]
            )
            sh.poly(strand, hc, depth=0.2)


def _head(sh: Shapes, idn: Identity) -> None:
    """Neck, ears (with earrings) and the skin of the face."""
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    skin = idn.skin
    neck = np.array(
        [[_CX - 0.6 * a, cy + 0.3 * b], [_CX + 0.6 * a, cy + 0.3 * b], [_CX + 0.62 * a, 140], [_CX - 0.62 * a, 140]]
    )
    sh.poly(neck, mix(skin, (30, 20, 20), 0.2), depth=0.0, z=-8)
    for side in (-1, 1):
        ear = ellipse(_CX + side * (a - 1), idn.eye_y + 7, 5.5 * idn.ear_size, 10 * idn.ear_size, 14)
        sh.poly(ear, mix(skin, (40, 20, 20), 0.12), depth=0.0, z=-6)
        if idn.earrings:
            sh.poly(
                ellipse(_CX + side * (a + 1), idn.eye_y + 7 + 10 * idn.ear_size, 1.8, 1.8, 8),
                (215, 185, 70),
                depth=0.0,
                z=-5,
            )
    sh.poly(face_outline(idn), skin, depth=0.0)


def _facial_hair_and_mole(sh: Shapes, idn: Identity) -> None:
    """Stubble, beard, goatee or moustache in the hair colour, and the mole."""
    b = idn.face_half_height
    cy = idn.chin_y - b
    mw, my = idn.mouth_width, idn.mouth_y
    fh = idn.facial_hair
    hc = mix(idn.hair_colour, (20, 15, 15), 0.2)
    if fh in ("stubble", "beard"):
        outline = face_outline(idn, 48)
        low = outline[outline[:, 1] > idn.nose_y - 4]
        low = low[np.argsort(np.arctan2(low[:, 1] - cy, low[:, 0] - _CX))]
        inner = np.array(
            [
                [_CX - mw / 2 - 3, my - 6],
                [_CX - mw / 2 - 2, my + 2],
                [_CX, my + 6 + idn.lip_lower],
                [_CX + mw / 2 + 2, my + 2],
                [_CX + mw / 2 + 3, my - 6],
            ]
        )
        sh.poly(np.concatenate([low, inner]), hc if fh == "beard" else (*hc, 70))
    elif fh == "goatee":
        top = my + idn.lip_lower
        sh.poly(ellipse(_CX, (top + idn.chin_y) / 2, mw * 0.3, (idn.chin_y - top) / 2, 14), hc)
    if fh in ("moustache", "beard"):
        lip_top = my - idn.lip_upper
        top = max(idn.nose_y + 4, lip_top - 5)
        must = np.array(
            [
                [_CX - mw * 0.32, top + 0.5],
                [_CX, top],
                [_CX + mw * 0.32, top + 0.5],
                [_CX + mw / 2 + 1.5, my + 2],
                [_CX + mw * 0.25, lip_top - 0.5],
                [_CX, lip_top - 1],
                [_CX - mw * 0.25, lip_top - 0.5],
                [_CX - mw / 2 - 1.5, my + 2],
            ]
        )
        sh.poly(must, hc)
    mole = idn.mole
    if mole.radius > 0:
        sh.poly(ellipse(mole.x, mole.y, mole.radius, mole.radius, 8), (70, 45, 35))


def _eyes_and_brows(sh: Shapes, idn: Identity, expr: Expression, dark) -> None:
    """Whites, irises and pupils (hidden in a blink), upper lids, and brows raised by the expression."""
    ew, eh = idn.eye_width / 2, idn.eye_height * expr.eye_opening
    for side in (-1, 1):
        ex, ey = _CX + side * idn.eye_spacing / 2, idn.eye_y
        t = T9
        upper = np.stack([ex + ew * t, ey - eh * (1 - t**2) ** 0.8], 1)
        lower = np.stack([ex - ew * t, ey + 0.75 * eh * (1 - t**2)], 1)
        tilt = -side * idn.eye_tilt
        lid = rotate(upper, ex, ey, tilt)
        if expr.eye_opening > 0.3:
            sh.poly(rotate(np.concatenate([upper, lower]), ex, ey, tilt), (245, 242, 238))
            r = min(ew * idn.iris_ratio, eh * 0.95)
            ix, iy = ex + expr.gaze[0], ey - 0.1 * eh + expr.gaze[1]
            sh.poly(ellipse(ix, iy, r, r, 12), idn.iris)
            sh.poly(ellipse(ix, iy, r * 0.45, r * 0.45, 8), (12, 10, 10))
        sh.line(lid, dark, 1.3)
        bl = idn.brow_length
        s = S7
        inner_x = ex - side * ew * 0.9
        by = ey - idn.brow_gap - expr.brow_raise
        cx_ = inner_x + side * bl * s
        cy_ = by - idn.brow_arch * np.sin(np.pi * s) - np.tan(np.deg2rad(idn.brow_angle)) * bl * s
        half = idn.brow_thickness / 2 * (1 - 0.5 * s)
        brow = np.concatenate([np.stack([cx_, cy_ - half], 1), np.stack([cx_, cy_ + half], 1)[::-1]])
        sh.poly(brow, idn.brow_colour)


def _nose(sh: Shapes, idn: Identity, shadow) -> None:
    """Shaded side of the bridge, tip and nostrils."""
    nw, ny, pz = idn.nose_width, idn.nose_y, idn.nose_projection
    sh.line(np.array([[_CX + 3, idn.eye_y + 3], [_CX + nw * 0.28, ny - 5]]), (*shadow, 140), 1.4, z=pz * 0.5)
    t = T9
    sh.line(np.stack([_CX + nw / 2 * t, ny + 1.5 + 1.5 * (1 - t**2) - 2.5 * np.abs(t) ** 3], 1), shadow, 1.5, z=pz)
    for side in (-1, 1):
        sh.poly(ellipse(_CX + side * nw * 0.24, ny + 1.5, 1.7, 1.0, 8), (60, 30, 30), z=pz * 0.8)


def _mouth(sh: Shapes, idn: Identity, expr: Expression, dark) -> None:
    """Lips around a mouth line that bends with the smile and splits when open."""
    mw, my = idn.mouth_width, idn.mouth_y
    curve = idn.mouth_curve + expr.smile
    t = T11
    line_y = my + curve * (1 - t**2) - 0.6 * curve * t**4
    gap = expr.mouth_open * (1 - t**2)
    mx = _CX + mw / 2 * t
    top_lip = np.stack([mx, line_y - gap / 2 - idn.lip_upper * (1 - t**2) ** 0.7 + 0.8 * np.exp(-((t * 6) ** 2))], 1)
    bot_lip = np.stack([mx, line_y + gap / 2 + idn.lip_lower * (1 - t**2) ** 0.6], 1)
    up_edge = np.stack([mx, line_y - gap / 2], 1)
    low_edge = np.stack([mx, line_y + gap / 2], 1)
    if expr.mouth_open > 0.5:
        sh.poly(np.concatenate([up_edge, low_edge[::-1]]), (70, 20, 28))
        teeth = np.stack([mx[2:-2], line_y[2:-2] - gap[2:-2] / 2 + min(2.0, gap.max() * 0.35)], 1)
        sh.poly(np.concatenate([up_edge[2:-2], teeth[::-1]]), (235, 230, 220))
    sh.poly(np.concatenate([top_lip, up_edge[::-1]]), idn.lip_colour)
    sh.poly(np.concatenate([low_edge, bot_lip[::-1]]), idn.lip_colour)
    sh.line(np.concatenate([up_edge[:1], up_edge[1:-1], up_edge[-1:]]), mix(idn.lip_colour, dark, 0.5), 0.8)


def _glasses(sh: Shapes, idn: Identity) -> None:
    """Lenses (tinted for sunglasses), rims, temples to the ears and the bridge."""
    if idn.glasses == "none":
        return
    a = idn.face_half_width
    gc = idn.glasses_colour
    rx = idn.eye_width * 0.5 + 5
    ry = rx * (0.85 if idn.glasses == "round" else 0.7 if idn.glasses == "rect" else 0.62)
    for side in (-1, 1):
        ex = _CX + side * idn.eye_spacing / 2
        if idn.glasses == "round":
            lens = ellipse(ex, idn.eye_y + 1, rx, ry, 20)
        else:
            lens = superellipse(
                ex,
                idn.eye_y + 1,
                rx * (1.12 if idn.glasses == "wide" else 1.0),
                ry,
                0.35 if idn.glasses == "rect" else 0.5,
            )
        if idn.glasses_tint > 0:
            sh.poly(lens, (20, 25, 30, int(255 * idn.glasses_tint)), z=4)
        sh.line(np.concatenate([lens, lens[:1]]), gc, 1.6, z=4)
        outer_x = ex + side * rx * (1.12 if idn.glasses == "wide" else 1.0)
        sh.line(np.array([[outer_x, idn.eye_y], [_CX + side * (a - 1), idn.eye_y + 3]]), gc, 1.4, z=2)
    sh.line(
        np.array(
            [
                [_CX - idn.eye_spacing / 2 + rx - 1, idn.eye_y - 1],
                [_CX, idn.eye_y - 2.5],
                [_CX + idn.eye_spacing / 2 - rx + 1, idn.eye_y - 1],
            ]
        ),
        gc,
        1.4,
        z=5,
    )


def face_shapes(idn: Identity, expr: Expression) -> Shapes:
    """All shapes of one face in canonical coordinates, back to front."""
    sh = Shapes()
    shadow = mix(idn.skin, (40, 20, 20), 0.35)
    dark = (30, 18, 18)
    _back_hair(sh, idn)
    _head(sh, idn)
    _facial_hair_and_mole(sh, idn)
    _eyes_and_brows(sh, idn, expr, dark)
    _nose(sh, idn, shadow)
    _mouth(sh, idn, expr, dark)
    _front_hair(sh, idn)
    _glasses(sh, idn)
    return sh
