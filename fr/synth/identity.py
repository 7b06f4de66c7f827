"""Synthetic identities: the fixed facial parameters of one person, drawn from a seed independent of all others.

Every draw is a pure function of ``(seed, identity)`` or ``(seed, identity, image)`` through
``numpy.random.SeedSequence`` spawn keys, so splitting the work across processes in any way renders the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np

from fr.synth.frame import CENTRE_X

Colour = Tuple[int, int, int]

HAIR_STYLES = ("none", "short", "long", "fringe", "side_part", "curly", "bun")
GLASSES = ("none", "round", "rect", "wide")
FACIAL_HAIR = ("none", "stubble", "moustache", "goatee", "beard")

SKIN_TONES = np.array([[250, 222, 200], [228, 180, 145], [190, 135, 95], [135, 90, 60], [85, 55, 40]], float)
_HAIR = np.array(
    [[22, 18, 18], [55, 38, 28], [100, 68, 40], [150, 70, 35], [205, 170, 110], [150, 150, 150], [232, 228, 220]],
    float,
)
_HAIR_P = np.array([0.24, 0.24, 0.18, 0.08, 0.12, 0.09, 0.05])
_FRAMES = ((20, 20, 20), (120, 80, 40), (180, 180, 190), (150, 30, 40), (40, 60, 130))
_IRIS = np.array([[85, 52, 30], [40, 26, 20], [70, 110, 170], [80, 120, 70], [120, 130, 140], [130, 100, 50]], float)


def clamp_colour(c) -> Colour:
    """Three numbers rounded and clipped to an 8-bit RGB colour."""
    return tuple(min(255, max(0, int(round(float(v))))) for v in c)


def mix(a, b, t: float) -> Colour:
    """The colour a fraction `t` of the way from `a` to `b`."""
    return clamp_colour([x * (1 - t) + y * t for x, y in zip(a, b)])


class Mole(NamedTuple):
    """A beauty mark in canonical coordinates; radius 0 means none."""

    x: float
    y: float
    radius: float


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
    mole: Mole


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


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's fixed parameters."""
    u = rng.uniform
    tone = u(0, len(SKIN_TONES) - 1)
    lo = int(min(tone, len(SKIN_TONES) - 2))
    skin = SKIN_TONES[lo] + (tone - lo) * (SKIN_TONES[lo + 1] - SKIN_TONES[lo]) + rng.normal(0, 1, 3) * (8, 6, 6)
    skin = clamp_colour(skin)
    a = u(37, 47)
    b = u(50, 59)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * u(0.8, 1.2) + rng.normal(0, 8, 3)
    hair = clamp_colour(hair)
    style = HAIR_STYLES[rng.choice(len(HAIR_STYLES), p=[0.1, 0.24, 0.2, 0.14, 0.14, 0.1, 0.08])]
    glasses = GLASSES[rng.choice(len(GLASSES), p=[0.64, 0.12, 0.14, 0.1])]
    facial_hair = FACIAL_HAIR[rng.choice(len(FACIAL_HAIR), p=[0.6, 0.1, 0.1, 0.08, 0.12])]
    eye_y = u(48, 54)
    nose_y = u(67, 76)
    mouth_y = u(nose_y + 15, nose_y + 22)
    has_mole = rng.random() < 0.3
    mole = (
        Mole(x=float(CENTRE_X + u(-28, 28)), y=float(u(eye_y + 8, mouth_y + 6)), radius=float(u(1.0, 2.2)))
        if has_mole
        else Mole(0.0, 0.0, 0.0)
    )
    lip = mix(skin, (165, 55, 70), u(0.25, 0.55))
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
        iris=clamp_colour(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 8, 3)),
        iris_ratio=float(u(0.55, 0.85)),
        brow_gap=float(u(6, 12)),
        brow_thickness=float(u(1.5, 5.0)),
        brow_angle=float(u(-15, 15)),
        brow_length=float(u(11, 18)),
        brow_arch=float(u(0, 4)),
        brow_colour=mix(hair, (20, 15, 15), u(0.1, 0.6)),
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
        glasses_colour=clamp_colour(_FRAMES[rng.integers(len(_FRAMES))]),
        glasses_tint=float(rng.random() < 0.25) * float(u(0.4, 0.85)),
        facial_hair=facial_hair,
        earrings=bool(rng.random() < 0.2),
        mole=mole,
    )


def identity_for(seed: int, identity_index: int) -> Identity:
    """The identity number ``identity_index`` of the data set ``seed``."""
    return sample_identity(np.random.default_rng(identity_seed(seed, identity_index)))
