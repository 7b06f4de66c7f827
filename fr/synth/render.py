"""Images of synthetic identities: one face under random nuisance (pose, expression, light, colour, blur, noise,
occlusion, cluttered background) drawn into an ArcFace-style aligned crop (eyes near y=51, nose tip near y=71,
mouth near y=92 at 112x112)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fr.synth.frame import CANON, CENTRE_X, PIVOT_Y, ellipse, rotate
from fr.synth.identity import SKIN_TONES, Identity, clamp_colour, identity_for, image_seed
from fr.synth.shapes import Expression, Shape, Shapes, face_shapes, polygon

SUPERSAMPLE = 2  # drawn at twice the size, box-reduced at the end: cheap anti-aliasing


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


class Pose(NamedTuple):
    """Head pose and framing of one image."""

    yaw: float  # radians
    pitch: float  # radians
    roll: float  # radians
    scale: float  # relative size
    shift: np.ndarray  # [2] canonical pixels, x and y


def warp(shapes: Shapes, idn: Identity, pose: Pose, px: float) -> List[np.ndarray]:
    """Pose warp of every shape: pseudo-3D yaw/pitch on an ellipsoid, then roll, scale, shift; output pixels."""
    a, b = idn.face_half_width, idn.face_half_height
    cy = idn.chin_y - b
    depth_scale = 0.7 * a
    sizes = [len(it.pts) for it in shapes.items]
    pts = np.concatenate([it.pts for it in shapes.items])
    dk = np.repeat([it.depth for it in shapes.items], sizes)
    dz = np.repeat([it.z for it in shapes.items], sizes)
    u = (pts[:, 0] - CENTRE_X) / a
    v = (pts[:, 1] - cy) / b
    z = dk * depth_scale * np.sqrt(np.clip(1 - u * u - v * v, 0, 1)) + dz
    x = CENTRE_X + (pts[:, 0] - CENTRE_X) * np.cos(pose.yaw) + z * np.sin(pose.yaw)
    y = PIVOT_Y + (pts[:, 1] - PIVOT_Y) * np.cos(pose.pitch) + z * np.sin(pose.pitch)
    c, s = np.cos(pose.roll) * pose.scale, np.sin(pose.roll) * pose.scale
    dx, dy = x - CENTRE_X, y - PIVOT_Y
    out = np.stack([CENTRE_X + c * dx - s * dy + pose.shift[0], PIVOT_Y + s * dx + c * dy + pose.shift[1]], 1) * px
    return np.split(out, np.cumsum(sizes)[:-1])


def background(rng: np.random.Generator, n: int, clutter: float) -> Image.Image:
    """A smooth random colour field with random shapes on it."""
    k = int(rng.integers(2, 6))
    base = rng.uniform(0, 255, 3)
    field = np.clip(base + rng.normal(0, 30 + 40 * min(clutter, 2), (k, k, 3)), 0, 255).astype(np.uint8)
    # the canvas is box-reduced by 2 at the end, so a nearest 2x upsample of a half-size field is exact and cheap
    img = Image.fromarray(field).resize((n // 2, n // 2), Image.BILINEAR).resize((n, n), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.poisson(6 * clutter))):
        kind = rng.integers(3)
        col = clamp_colour(rng.uniform(0, 255, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * n
        w, h = rng.uniform(0.05, 0.5, 2) * n
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=col, width=max(1, int(rng.uniform(0.01, 0.05) * n)))
    return img


def occluder(rng: np.random.Generator, idn: Identity) -> Shape:
    """A hand-like blob or a rectangular object over part of the face, in front of everything."""
    cx = CENTRE_X + rng.uniform(-30, 30)
    cy = rng.uniform(idn.eye_y - 10, idn.chin_y - 5)
    w, h = rng.uniform(14, 34, 2)
    if rng.random() < 0.5:
        pts = ellipse(cx, cy, w / 2, h / 2, 16)
        pts = rotate(pts, cx, cy, rng.uniform(0, 180))
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        col = SKIN_TONES[int(tone)] * 0.5 + SKIN_TONES[int(np.ceil(tone))] * 0.5
    else:
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2 + (cx, cy)
        pts = rotate(pts, cx, cy, rng.uniform(-30, 30))
        col = rng.uniform(0, 255, 3)
    return polygon(pts, clamp_colour(col), depth=0.0, z=25)


def _lighting(rng: np.random.Generator, size: int, style: SynthStyle) -> np.ndarray:
    """Gain of every pixel and channel, float32 ``[size, size, 3]``: a directional gradient plus a soft spot,
    times a per-channel colour cast."""
    d = style.difficulty
    u = rng.uniform
    theta = u(0, 2 * np.pi)
    grid = np.linspace(-1, 1, size, dtype=np.float32)
    strength = style.illumination * d * u(0.2, 1.0)
    gx, gy = np.cos(theta) * strength, np.sin(theta) * strength
    spot = u(-0.6, 0.6, 2)
    radial = (grid[None, :] - spot[0]) ** 2 + (grid[:, None] - spot[1]) ** 2
    light = np.exp(gx * grid[None, :] + gy * grid[:, None] - 0.25 * style.illumination * d * radial * u(0, 1))
    exposure = rng.normal(0, 0.2 * style.illumination * d)
    gain = np.exp(rng.normal(0, style.colour_cast * d, 3) + exposure)
    return light.astype(np.float32)[:, :, None] * gain.astype(np.float32)


def render_face(
    identity: Identity, rng: np.random.Generator, size: int = 112, style: SynthStyle = SynthStyle()
) -> np.ndarray:
    """Draw one image of ``identity``: uint8 RGB array ``[size, size, 3]``, aligned like an ArcFace crop."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    d = style.difficulty
    u = rng.uniform
    pose = Pose(
        yaw=np.deg2rad(u(-1, 1) * style.yaw * d),
        pitch=np.deg2rad(u(-1, 1) * style.pitch * d),
        roll=np.deg2rad(u(-1, 1) * style.roll * d),
        scale=1 + u(-1, 1) * style.scale_jitter * d,
        shift=u(-1, 1, 2) * style.shift_jitter * d,
    )
    e = style.expression * d
    expr = Expression(
        smile=u(-1.5, 2.5) * e,
        mouth_open=max(0.0, u(-6, 8)) * min(e, 1.5),
        brow_raise=u(-1, 3) * e,
        eye_opening=0.12 if rng.random() < 0.1 * min(e, 3) else 1 + u(-0.25, 0.1) * min(e, 1),  # 0.12: a blink
        gaze=u(-1, 1, 2) * (2.0, 0.8) * min(e, 2),
    )
    n = size * SUPERSAMPLE
    px = n / CANON
    img = background(rng, n, style.background_clutter * d)
    draw = ImageDraw.Draw(img, "RGBA")
    shirt = clamp_colour(rng.uniform(0, 255, 3))
    shoulders = ellipse(CENTRE_X + u(-8, 8), 150, 80, 42, 24) * px
    draw.polygon(shoulders.ravel().tolist(), fill=shirt)

    shapes = face_shapes(identity, expr)
    if rng.random() < min(1.0, style.occlusion_prob * d):
        shapes.items.append(occluder(rng, identity))
    for item, pts in zip(shapes.items, warp(shapes, identity, pose, px)):
        flat = pts.ravel().tolist()
        if item.kind == "poly":
            draw.polygon(flat, fill=item.fill)
        else:
            draw.line(flat, fill=item.fill, width=max(1, int(round(item.width * px))), joint="curve")

    img = img.reduce(SUPERSAMPLE)
    sigma = u(0, 1) * style.blur * d * size / CANON
    if sigma > 0.25:  # one box pass of the same variance: a third of a Gaussian's cost, alike at this width
        img = img.filter(ImageFilter.BoxBlur(float(np.sqrt(12 * sigma * sigma + 1) - 1) / 2))
    out = np.asarray(img, dtype=np.float32)

    out *= _lighting(rng, size, style)
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
