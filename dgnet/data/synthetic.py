"""The embedded synthetic re-ID dataset: procedurally drawn pedestrians in Market-1501 layout.

Why it exists: the whole pipeline has to run end to end on a 2-core CPU in minutes, with no
download, on a problem where DG-Net's two codes mean something. Every image is a pure function
of one row of factors, and the factors are split the way DG-Net splits an image:

* APPEARANCE_FIELDS, the clothing (top colour and texture, sleeves, bottom, shoes): what the
  appearance code a carries;
* STRUCTURE_FIELDS, everything else (body shape, skin, hair, hat, bag, pose, viewpoint,
  position, background and camera, noise): what the structure code s carries.

So `render_swap(i, j)` is the exact ground truth for the generator's G(s_j, a_i). About 30% of
the identities come in groups of 2-3 that wear the very same clothes and differ only in
structure cues (hat, bag, hair, body shape): telling them apart needs DG-Net's fine-grained
features, not just colours. (A check of how hard it is: colour histograms of the true person
pixels, in four horizontal bands, reach rank-1 70% on the default test set; 86% for
identities with their own clothes, 31% for those that share them. Over the whole image, where
the scene dominates, HSV histograms of three stripes reach rank-1 0%, mAP 1.1%.)

The scenes are drawn at half saturation and out of focus (SCENE_SATURATION, SCENE_DEFOCUS), as in
real surveillance crops: the camera focuses on the walking person, and streets, walls and floors
are dull next to clothing. With fully saturated, sharp scenes the appearance code (a re-ID
feature, trained to ignore the background) cannot carry the background's colours, and the
generator's self-reconstruction lost about 0.01 L1 there (docs/generator_diagnosis.md).

Layout written by `generate_dataset` (Market-1501 conventions, 128x64 JPEG images):

    OUT/bounding_box_train/  train identities, several images from 2-4 cameras each
    OUT/query/               test identities: one image per (identity, camera)
    OUT/bounding_box_test/   gallery: the other images of the test identities, plus
                             distractors (id 0000, other people) and junk (id -1, bad crops)
    OUT/factors.csv          one row per image: its full factor record (see COLUMNS)

File names are `{pid:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg` (junk: `-1_c{cam}s1_...`).

Default counts (`generate_dataset(out, seed=0)`: 120 identities, 60 train / 60 test, 6
cameras): 637 train images, 175 queries, 405 gallery images (345 of test identities, 40
distractors, 20 junk), 1,217 images in all (other seeds: within a few percent); rendered and
written in about 5 s on one CPU core. Sampling the factors alone takes 0.1 s.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from dgnet.errors import ConfigError, DatasetError
from dgnet.io import atomic_dir, atomic_path, check_replaceable

# --------------------------------------------------------------------------------------------
# Constants: image format, vocabularies, field groups
# --------------------------------------------------------------------------------------------

H, W = 128, 64  # Market-1501's native crop size (height x width)
SS = 4  # draw at 4x and box-filter down: anti-aliased edges with exact, portable arithmetic
BG_W = 128  # scenes are twice as wide as a crop; an image shows the W columns from `bg_offset` on
JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4, always the same, so re-encoding a render gives identical bytes

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
DISTRACTOR_ID = 0
JUNK_ID = -1

VIEWPOINTS = ("front", "back", "left", "right")  # left / right: side views facing that way
TEXTURES = ("plain", "stripes", "checks", "logo")
SLEEVES = ("long", "short")
BOTTOM_STYLES = ("trousers", "shorts")
HAIR_LENGTHS = ("short", "long")
HATS = ("none", "cap", "beanie")
BAGS = ("none", "backpack", "shoulder", "handbag")
SCENES = ("street", "plaza", "corridor", "park", "station", "shops")

# The clothing: what DG-Net's appearance code carries and what a swap takes from image i.
APPEARANCE_FIELDS: tuple[str, ...] = (
    "top_color",
    "top_texture",
    "top_color2",
    "sleeves",
    "bottom_color",
    "bottom_style",
    "shoe_color",
)
# Fixed per identity: the fine-grained cues that separate people in the same clothes.
# body_height: standing height as a fraction of 112 px; body_width: breadth factor (~0.85-1.2).
IDENTITY_STRUCTURE_FIELDS: tuple[str, ...] = (
    "body_height",
    "body_width",
    "skin_color",
    "hair_color",
    "hair_length",
    "hat",
    "hat_color",
    "bag",
    "bag_color",
)
# Drawn per image. pose_phase: radians of the gait cycle; dx, dy: shift in pixels of the feet
# from the bottom centre; scale: size factor; bg_offset: first scene column shown (pixels);
# noise_seed: seeds the sensor noise, so that it is reproducible too.
IMAGE_FIELDS: tuple[str, ...] = ("viewpoint", "pose_phase", "dx", "dy", "scale", "bg_offset", "noise_seed")
# Fixed per camera. scene, scene_seed: which scene is drawn and its own random layout;
# light_r/g/b: white-balance gains; brightness; saturation (1 = unchanged); blur: Gaussian
# sigma in pixels; noise_sigma: sensor noise in grey levels.
CAMERA_FIELDS: tuple[str, ...] = (
    "scene",
    "scene_seed",
    "light_r",
    "light_g",
    "light_b",
    "brightness",
    "saturation",
    "blur",
    "noise_sigma",
)
# Everything but the clothing: what the structure code carries and a swap takes from image j.
STRUCTURE_FIELDS: tuple[str, ...] = IDENTITY_STRUCTURE_FIELDS + IMAGE_FIELDS + CAMERA_FIELDS
# Bookkeeping, never read by `render`. clothing_group > 0 names a group of identities that
# share all APPEARANCE_FIELDS; 0 means the identity's clothes are its own.
META_FIELDS: tuple[str, ...] = (
    "file_name",
    "path",
    "split",
    "person_id",
    "camera_id",
    "frame",
    "k",
    "clothing_group",
)
COLUMNS: tuple[str, ...] = META_FIELDS + APPEARANCE_FIELDS + STRUCTURE_FIELDS

# Base colours; each draw jitters them a little so that two "red" tops are rarely identical.
CLOTHING_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (232, 232, 226),
    "grey": (128, 128, 130),
    "navy": (32, 42, 92),
    "red": (192, 32, 38),
    "blue": (40, 92, 192),
    "sky": (120, 172, 222),
    "green": (40, 130, 62),
    "olive": (112, 112, 50),
    "yellow": (232, 200, 40),
    "orange": (232, 122, 32),
    "pink": (232, 142, 172),
    "purple": (112, 52, 142),
    "brown": (112, 72, 42),
    "beige": (212, 192, 152),
    "teal": (30, 142, 142),
    "maroon": (112, 26, 42),
}
BOTTOM_COLORS = ("black", "navy", "blue", "grey", "beige", "brown", "olive", "white", "red", "sky")
SHOE_COLORS = ("black", "white", "grey", "brown", "red", "blue", "navy")
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20),
    "dark_brown": (62, 40, 26),
    "brown": (112, 72, 40),
    "blonde": (212, 176, 102),
    "grey": (166, 164, 160),
    "auburn": (142, 60, 30),
}
SKIN_COLORS = ((246, 208, 178), (226, 178, 140), (196, 144, 104), (150, 102, 70), (102, 68, 48))

# Part labels of the label map the person is drawn into. They depend on STRUCTURE_FIELDS only
# (the logo aside, which lies inside the torso), so the person mask does too. Each limb has its
# own label: an outline then separates an arm from the torso in the same shirt, and sleeves and
# shorts are cut along the limb's own axis when it is coloured.
_SKIN, _HAND, _HAIR, _TOP, _ARM_A, _ARM_B, _PELVIS, _LEG_A, _LEG_B, _SHOE = range(1, 11)
_HAT, _HAT_DARK, _BAG, _BAG_DARK, _LOGO, _EYE = range(11, 17)
# What each label is made of; arms and legs turn to skin where sleeves or shorts end.
MATERIALS = (
    "background",
    "skin",
    "hair",
    "top",
    "bottom",
    "shoes",
    "hat",
    "hat_band",
    "bag",
    "strap",
    "logo",
    "eye",
)
_M = {name: i for i, name in enumerate(MATERIALS)}
_LABEL_MATERIAL = np.zeros(256, np.uint8)
for _labels, _material in (
    ((_SKIN, _HAND), "skin"),
    ((_HAIR,), "hair"),
    ((_TOP, _ARM_A, _ARM_B), "top"),
    ((_PELVIS, _LEG_A, _LEG_B), "bottom"),
    ((_SHOE,), "shoes"),
    ((_HAT,), "hat"),
    ((_HAT_DARK,), "hat_band"),
    ((_BAG,), "bag"),
    ((_BAG_DARK,), "strap"),
    ((_LOGO,), "logo"),
    ((_EYE,), "eye"),
):
    _LABEL_MATERIAL[list(_labels)] = _M[_material]
# Coarse part names returned by `part_labels`.
PART_OF_MATERIAL = {
    "background": "background",
    "skin": "skin",
    "hair": "hair",
    "top": "top",
    "bottom": "bottom",
    "shoes": "shoes",
    "hat": "hat",
    "hat_band": "hat",
    "bag": "bag",
    "strap": "bag",
    "logo": "top",
    "eye": "skin",
}

# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _hex(rgb: Sequence[float]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(np.clip(round(c), 0, 255)) for c in rgb))


def _rgb(value: Any, field: str) -> np.ndarray:
    s = str(value)
    if len(s) != 7 or not s.startswith("#"):
        raise DatasetError(f"factor {field}={value!r}: a colour must be written '#rrggbb'")
    try:
        return np.array([int(s[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float32)
    except ValueError:
        raise DatasetError(f"factor {field}={value!r}: a colour must be written '#rrggbb'") from None


def _field(f: Mapping[str, Any], name: str) -> Any:
    try:
        return f[name]
    except KeyError:
        raise DatasetError(f"factor record lacks the field {name!r} (see synthetic.COLUMNS)") from None


def _choice(f: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str:
    value = str(_field(f, name))
    if value not in allowed:
        raise DatasetError(f"factor {name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _num(f: Mapping[str, Any], name: str) -> float:
    try:
        return float(_field(f, name))
    except (TypeError, ValueError):
        raise DatasetError(f"factor {name}={f[name]!r} must be a number") from None


def _r4(x: float) -> float:
    # Factors are rounded to 4 decimals so factors.csv stays readable and parses back exactly.
    return round(float(x), 4)


def market_name(person_id: int, camera_id: int, frame: int, k: int = 1) -> str:
    """Market-1501 file name: `0007_c3s1_000451_01.jpg`; junk (-1) is written `-1_c3s1_...`."""
    pid = "-1" if person_id == JUNK_ID else f"{person_id:04d}"
    return f"{pid}_c{camera_id}s1_{frame:06d}_{k:02d}.jpg"


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of an HxWx3 uint8 image, with the dataset's fixed quality and subsampling."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def decode_jpeg(data: bytes | str | os.PathLike) -> np.ndarray:
    """Decode JPEG bytes or a file into an HxWx3 uint8 array."""
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


class _Pen:
    """ImageDraw in output-pixel coordinates (floats) on a canvas supersampled SS times."""

    def __init__(self, image: Image.Image):
        self.draw = ImageDraw.Draw(image)

    def poly(self, pts: Sequence[tuple[float, float]], fill: Any) -> None:
        self.draw.polygon([(x * SS, y * SS) for x, y in pts], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Any) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Any) -> None:
        self.draw.ellipse([(cx - rx) * SS, (cy - ry) * SS, (cx + rx) * SS, (cy + ry) * SS], fill=fill)

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float, fill: Any) -> None:
        box = [(cx - rx) * SS, (cy - ry) * SS, (cx + rx) * SS, (cy + ry) * SS]
        self.draw.chord(box, start, end, fill=fill)

    def capsule(
        self, p: tuple[float, float], q: tuple[float, float], rp: float, rq: float, fill: Any
    ) -> None:
        """A limb: a tapered band from p (half-width rp) to q (half-width rq) with round ends."""
        dx, dy = q[0] - p[0], q[1] - p[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.poly(
            [
                (p[0] + nx * rp, p[1] + ny * rp),
                (q[0] + nx * rq, q[1] + ny * rq),
                (q[0] - nx * rq, q[1] - ny * rq),
                (p[0] - nx * rp, p[1] - ny * rp),
            ],
            fill,
        )
        self.ellipse(p[0], p[1], rp, rp, fill)
        self.ellipse(q[0], q[1], rq, rq, fill)


# --------------------------------------------------------------------------------------------
# Backgrounds: one scene per camera, drawn once and cached (a pure function of kind and seed)
# --------------------------------------------------------------------------------------------


def _mix(rng: np.random.Generator, base: Sequence[int], spread: float = 18) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.uniform(-spread, spread), 0, 255)) for c in base)
    return (r, g, b)


def _shade(rgb: Sequence[int], k: float) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c * k, 0, 255)) for c in rgb)
    return (r, g, b)


def _floor(pen: _Pen, rng: np.random.Generator, hz: float, color: tuple[int, int, int], lines: bool) -> None:
    """Floor from the horizon down: a vertical gradient and perspective joints."""
    for i in range(16):  # bands: far floor a little darker, near floor lighter
        y0 = hz + (H - hz) * i / 16
        pen.rect(0, y0, BG_W, y0 + (H - hz) / 16 + 0.5, _shade(color, 0.86 + 0.2 * i / 16))
    if not lines:
        return
    joint = _shade(color, 0.72)
    vx, vy = BG_W / 2 + rng.uniform(-20, 20), hz - 60  # vanishing point above the crop
    for x in np.arange(-160, BG_W + 160, 22) + rng.uniform(0, 22):
        t = (hz - vy) / (H - vy)  # where the line from (x, H) to the vanishing point meets hz
        pen.draw.line([(x * SS, H * SS), ((vx + (x - vx) * t) * SS, hz * SS)], fill=joint, width=SS // 2)
    y, step = hz + 3, 3.0
    while y < H:  # joints across the floor get wider apart as they come nearer
        pen.draw.line([(0, y * SS), (BG_W * SS, y * SS)], fill=joint, width=SS // 2)
        step *= 1.45
        y += step


def _scene_street(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(62, 74)
    wall = _mix(rng, [(150, 84, 66), (196, 180, 150), (160, 160, 156), (214, 200, 172)][rng.integers(4)])
    pen.rect(0, 0, BG_W, hz, wall)
    glass, frame = _mix(rng, (62, 78, 96)), _shade(wall, 1.2)
    x0 = rng.uniform(-8, 4)
    for row in range(3):
        for col in range(7):
            x, y = x0 + col * 20, 4 + row * 21
            if y + 15 > hz - 6:
                continue
            pen.rect(x - 1, y - 1, x + 13, y + 16, frame)
            lit = rng.random() < 0.25
            pen.rect(x, y, x + 12, y + 15, (214, 196, 120) if lit else glass)
            pen.rect(x + 5.5, y, x + 6.5, y + 15, frame)
    pen.rect(0, hz - 3, BG_W, hz, _shade(wall, 0.7))  # base course of the wall
    _floor(pen, rng, hz, _mix(rng, (150, 148, 140), 12), lines=True)
    lx = rng.uniform(10, BG_W - 10)  # a lamp post
    pen.rect(lx, 0, lx + 2.5, hz + 14, (52, 54, 58))
    pen.rect(lx - 1.5, hz + 12, lx + 4, hz + 15, (40, 40, 44))


def _scene_plaza(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(56, 66)
    for i in range(12):  # sky gradient
        pen.rect(0, i * hz / 12, BG_W, (i + 1) * hz / 12 + 0.5, _shade((150, 190, 232), 0.9 + 0.02 * i))
    x = -5.0
    while x < BG_W:  # far buildings
        w, top = rng.uniform(14, 30), rng.uniform(8, hz - 24)
        pen.rect(x, top, x + w, hz, _mix(rng, (140, 146, 160), 22))
        x += w + rng.uniform(0, 4)
    for x in np.arange(rng.uniform(0, 18), BG_W, 18):  # a row of trees
        pen.rect(x - 1, hz - 14, x + 1, hz, (82, 60, 40))
        pen.ellipse(x, hz - 18, 7, 8, _mix(rng, (60, 122, 56), 16))
    _floor(pen, rng, hz, _mix(rng, (204, 196, 182), 12), lines=True)


def _scene_corridor(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(64, 76)
    wall = _mix(rng, [(222, 216, 196), (196, 214, 200), (196, 208, 226)][rng.integers(3)], 10)
    pen.rect(0, 0, BG_W, hz, wall)
    for x in np.arange(rng.uniform(0, 16), BG_W, 16):  # wall panels
        pen.rect(x, 8, x + 0.6, hz - 4, _shade(wall, 0.85))
    for x in np.arange(rng.uniform(0, 40), BG_W, 40):  # ceiling lights
        pen.rect(x, 0, x + 18, 3, (252, 252, 236))
    door = _mix(rng, [(120, 80, 50), (70, 96, 140), (150, 150, 150)][rng.integers(3)], 12)
    dx = rng.uniform(4, BG_W - 26)
    pen.rect(dx - 1.5, hz - 56, dx + 21.5, hz, _shade(door, 0.7))
    pen.rect(dx, hz - 54.5, dx + 20, hz, door)
    pen.ellipse(dx + 16, hz - 27, 1.2, 1.2, (220, 200, 120))
    pen.rect(0, hz - 3, BG_W, hz, _shade(wall, 0.6))  # skirting board
    _floor(pen, rng, hz, _mix(rng, (172, 160, 140), 20), lines=True)
    pen.rect(dx, hz + 1, dx + 20, hz + 9, _shade(door, 1.4))  # the door's reflection on the floor


def _scene_park(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(54, 66)
    pen.rect(0, 0, BG_W, hz, (168, 202, 230))
    for x in np.arange(rng.uniform(-10, 0), BG_W + 10, 13):  # tree line
        pen.ellipse(
            x, hz - rng.uniform(14, 26), rng.uniform(9, 14), rng.uniform(12, 18), _mix(rng, (56, 106, 48), 20)
        )
    for x in np.arange(rng.uniform(0, 30), BG_W, 30):
        pen.rect(x - 1.5, hz - 12, x + 1.5, hz + 2, (86, 62, 42))
    _floor(pen, rng, hz, _mix(rng, (96, 150, 70), 14), lines=False)
    for _ in range(260):  # grass tufts
        x, y = rng.uniform(0, BG_W), rng.uniform(hz, H)
        pen.rect(x, y, x + 0.8, y + 1.5 + (y - hz) / 30, _mix(rng, (70, 120, 52), 20))
    cx = rng.uniform(30, BG_W - 30)  # a sand path coming towards the camera
    sand = _mix(rng, (206, 186, 146), 12)
    pen.poly([(cx - 6, hz), (cx + 6, hz), (cx + 40, H), (cx - 40, H)], sand)
    bx = rng.uniform(0, BG_W - 24)  # a bench
    wood = _mix(rng, (130, 86, 50), 12)
    pen.rect(bx, hz + 2, bx + 22, hz + 4, wood)
    pen.rect(bx, hz + 6, bx + 22, hz + 8, wood)
    pen.rect(bx + 2, hz + 8, bx + 3, hz + 13, (50, 50, 50))
    pen.rect(bx + 19, hz + 8, bx + 20, hz + 13, (50, 50, 50))


def _scene_station(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(66, 78)
    tile = _mix(rng, (226, 226, 220), 8)
    pen.rect(0, 0, BG_W, hz, tile)
    grout = _shade(tile, 0.8)
    for y in np.arange(0, hz, 5):
        pen.rect(0, y, BG_W, y + 0.5, grout)
    for x in np.arange(0, BG_W, 5):
        pen.rect(x, 0, x + 0.5, hz, grout)
    band = _mix(rng, [(200, 40, 40), (40, 90, 180), (40, 150, 80), (230, 170, 30)][rng.integers(4)], 10)
    pen.rect(0, hz - 30, BG_W, hz - 25, band)
    sx = rng.uniform(0, BG_W - 34)  # a sign board
    pen.rect(sx, 8, sx + 34, 20, (30, 46, 100))
    for i in range(3):
        pen.rect(sx + 3 + 10 * i, 12.5, sx + 10 + 10 * i, 15.5, (236, 236, 236))
    for px in rng.uniform(0, BG_W - 12, size=2):  # pillars
        pen.rect(px, 0, px + 12, hz + 10, _mix(rng, (150, 150, 156), 10))
        pen.rect(px + 9, 0, px + 12, hz + 10, (120, 120, 126))
    _floor(pen, rng, hz, _mix(rng, (130, 130, 128), 10), lines=True)
    pen.rect(0, hz + 16, BG_W, hz + 19, (226, 196, 40))  # platform safety line


def _scene_shops(pen: _Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(64, 74)
    front = _mix(rng, (90, 84, 80), 20)
    pen.rect(0, 0, BG_W, hz, front)
    x = 0.0
    while x < BG_W:  # shop after shop: sign, striped awning, window
        w = rng.uniform(34, 46)
        sign = _mix(rng, list(CLOTHING_COLORS.values())[rng.integers(len(CLOTHING_COLORS))], 10)
        pen.rect(x + 1, 2, x + w - 1, 11, sign)
        pen.rect(x + 5, 5.5, x + w - 5, 7.5, _shade(sign, 1.6))
        c1, c2 = _mix(rng, (236, 236, 230), 6), _mix(rng, (196, 50, 50), 40)
        for i, sx in enumerate(np.arange(x + 1, x + w - 1, 4)):
            pen.poly([(sx, 12), (sx + 4, 12), (sx + 4.8, 20), (sx + 0.8, 20)], c1 if i % 2 else c2)
        glass = _mix(rng, (110, 136, 150), 14)
        pen.rect(x + 2, 22, x + w - 2, hz - 2, glass)
        for gx in np.arange(x + 4, x + w - 6, 9):  # reflections
            pen.poly([(gx, hz - 2), (gx + 3, hz - 2), (gx + 9, 22), (gx + 6, 22)], _shade(glass, 1.18))
        pen.rect(x + w / 2 - 0.5, 22, x + w / 2 + 0.5, hz - 2, _shade(front, 0.6))
        x += w
    _floor(pen, rng, hz, _mix(rng, (160, 100, 84), 14), lines=True)


_SCENE_PAINTERS = {
    "street": _scene_street,
    "plaza": _scene_plaza,
    "corridor": _scene_corridor,
    "park": _scene_park,
    "station": _scene_station,
    "shops": _scene_shops,
}


# The scenes' look (see the module docstring): colour saturation kept, and the defocus blur's
# sigma in output pixels.
SCENE_SATURATION = 0.5
SCENE_DEFOCUS = 2.0


@functools.lru_cache(maxsize=64)
def _scene(kind: str, scene_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The camera's whole scene, drawn from its own seed, dulled and defocused: (SS scale, output
    scale), float32."""
    image = Image.new("RGB", (BG_W * SS, H * SS))
    _SCENE_PAINTERS[kind](_Pen(image), np.random.default_rng(scene_seed))
    big = np.asarray(image, dtype=np.float32)
    gray = big.mean(axis=2, keepdims=True)
    big = (gray + SCENE_SATURATION * (big - gray)).astype(np.float32)
    if SCENE_DEFOCUS > 0:
        big = _gaussian_blur(big, SCENE_DEFOCUS * SS).astype(np.float32)
    small = _downsample(big)
    big.flags.writeable = small.flags.writeable = False  # shared by every image of the camera
    return big, small


# --------------------------------------------------------------------------------------------
# The person
# --------------------------------------------------------------------------------------------


def _limb(root: tuple[float, float], a1: float, a2: float, l1: float, l2: float, side: float, spread: float):
    """Joint positions of a two-segment limb swinging in the walking plane.

    a1, a2: angles of the upper / lower segment from the vertical, positive = forwards.
    side: +1 / -1 the way the person faces in a side view; 0 for front and back views, where
    a forward swing only foreshortens the limb, and `spread` moves it sideways instead.
    """
    if side:
        mid = (root[0] + side * l1 * math.sin(a1), root[1] + l1 * math.cos(a1))
        end = (mid[0] + side * l2 * math.sin(a2), mid[1] + l2 * math.cos(a2))
    else:
        mid = (root[0] + spread * 0.5, root[1] + l1 * math.cos(a1))
        end = (root[0] + spread, mid[1] + l2 * math.cos(a2))
    return mid, end


def _draw_person(f: Mapping[str, Any], labels: Image.Image) -> dict[str, float]:
    """Draw the person's part labels; return the geometry the colouring and shadow need."""
    view = _choice(f, "viewpoint", VIEWPOINTS)
    hair_len = _choice(f, "hair_length", HAIR_LENGTHS)
    hat = _choice(f, "hat", HATS)
    bag = _choice(f, "bag", BAGS)
    texture = _choice(f, "top_texture", TEXTURES)
    bw = _num(f, "body_width")
    u = 112.0 * _num(f, "body_height") * _num(f, "scale")  # standing height, head top to sole
    phase = _num(f, "pose_phase")
    cx = W / 2 + _num(f, "dx")
    feet_y = H - 4 + _num(f, "dy")
    side = {"left": -1.0, "right": 1.0}.get(view, 0.0)
    pen = _Pen(labels)

    # Walking cycle: legs swing opposite each other, arms opposite the legs; the leg coming
    # forward bends its knee. Angles in radians from the vertical, positive = forwards.
    def leg_angles(p: float) -> tuple[float, float]:
        thigh = 0.46 * math.sin(p)
        return thigh, thigh - 0.62 * max(0.0, math.cos(p)) ** 1.5

    def arm_angles(p: float) -> tuple[float, float]:
        upper = -0.36 * math.sin(p)
        return upper, upper + 0.22 + 0.2 * max(0.0, -math.sin(p))

    l_thigh, l_shin, l_up, l_fore = 0.255 * u, 0.235 * u, 0.165 * u, 0.155 * u
    # The hip height is set so that the lower foot stands on the floor (the body bobs).
    drops = [
        l_thigh * math.cos(a) + l_shin * math.cos(b) for a, b in map(leg_angles, (phase, phase + math.pi))
    ]
    shoe_h = 0.025 * u
    hip_y = feet_y - shoe_h - max(drops)
    top = hip_y - 0.49 * u
    sy = top + 0.17 * u  # shoulder line
    depth = 0.62 if side else 1.0  # a side view sees the torso's depth, not its width
    shw, whw = 0.125 * u * bw * depth, 0.098 * u * bw * depth
    hx, hy = cx + side * 0.01 * u, top + 0.064 * u
    rx, ry = 0.047 * u * (0.9 + 0.1 * bw), 0.064 * u
    arm_r, fore_r, hand_r = 0.028 * u * (0.9 + 0.1 * bw), 0.023 * u, 0.024 * u
    thigh_r, shin_r = 0.042 * u * bw, 0.031 * u * (0.8 + 0.2 * bw)

    limbs: dict[int, tuple[tuple[float, float], ...]] = {}

    def draw_leg(root, p, label, spread):
        a1, a2 = leg_angles(p)
        knee, ankle = _limb(root, a1, a2, l_thigh, l_shin, side, spread)
        pen.capsule(root, knee, thigh_r, shin_r * 1.15, label)
        pen.capsule(knee, ankle, shin_r * 1.15, shin_r * 1.05, label)
        limbs[label] = (root, knee, ankle)
        toe = side * 0.028 * u
        pen.ellipse(ankle[0] + toe, ankle[1] + shoe_h * 0.35, 0.036 * u + abs(toe), shoe_h * 0.85, _SHOE)

    def draw_arm(root, p, label, spread):
        a1, a2 = arm_angles(p)
        elbow, wrist = _limb(root, a1, a2, l_up, l_fore, side, spread)
        pen.capsule(root, elbow, arm_r, fore_r, label)
        pen.capsule(elbow, wrist, fore_r, fore_r * 0.9, label)
        limbs[label] = (root, elbow, wrist)
        pen.ellipse(wrist[0], wrist[1] + hand_r * 0.6, hand_r, hand_r * 1.15, _HAND)
        return (wrist[0], wrist[1] + hand_r * 1.2)

    def draw_pelvis():
        pen.poly(
            [
                (cx - whw, hip_y - 0.04 * u),
                (cx + whw, hip_y - 0.04 * u),
                (cx + whw * 0.95, hip_y + 0.05 * u),
                (cx - whw * 0.95, hip_y + 0.05 * u),
            ],
            _PELVIS,
        )

    def draw_torso():
        c = 0.035 * u
        pen.poly(
            [
                (cx - shw, sy + c),
                (cx - shw + c, sy),
                (cx + shw - c, sy),
                (cx + shw, sy + c),
                (cx + whw, hip_y),
                (cx - whw, hip_y),
            ],
            _TOP,
        )
        if texture == "logo" and view == "front":  # a star on the chest, hidden from behind
            sx, sy0, r = cx, sy + 0.1 * u, 0.042 * u
            pts = [
                (
                    sx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                    sy0 - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
                )
                for i in range(10)
            ]
            pen.poly(pts, _LOGO)

    def draw_neck():
        pen.capsule((hx, hy + ry * 0.6), (cx, sy + 0.01 * u), 0.02 * u, 0.024 * u, _SKIN)

    def draw_long_hair_back(width: float, bottom: float):
        pen.ellipse(hx - side * rx * 0.25, hy, rx * 1.12, ry * 1.02, _HAIR)
        pen.rect(hx - width - side * rx * 0.3, hy, hx + width - side * rx * 0.3, bottom, _HAIR)
        pen.ellipse(hx - side * rx * 0.3, bottom, width, 0.02 * u, _HAIR)

    def draw_head():
        if view == "front":
            pen.ellipse(hx, hy - ry * 0.08, rx * 1.07, ry * 1.04, _HAIR)
            pen.ellipse(hx, hy + ry * 0.16, rx * 0.93, ry * 0.84, _SKIN)
            if hair_len == "short":  # a short cut leaves the ears and jaw free
                pen.chord(hx, hy + ry * 0.16, rx * 0.98, ry * 0.86, 0, 180, _SKIN)
            for ex in (-0.36, 0.36):
                pen.ellipse(hx + ex * rx, hy + ry * 0.22, rx * 0.11, ry * 0.09, _EYE)
        elif view == "back":
            pen.ellipse(hx, hy, rx, ry, _SKIN)
            pen.ellipse(hx, hy - ry * 0.12, rx * 1.06, ry * 0.94, _HAIR)
        else:
            pen.ellipse(hx, hy, rx * 1.04, ry, _SKIN)
            pen.ellipse(hx + side * rx * 0.98, hy + ry * 0.12, rx * 0.16, ry * 0.16, _SKIN)  # nose
            pen.chord(hx - side * rx * 0.12, hy - ry * 0.08, rx * 1.1, ry * 1.02, 180, 360, _HAIR)
            pen.ellipse(hx - side * rx * 0.45, hy + ry * 0.05, rx * 0.66, ry * 0.72, _HAIR)
            pen.ellipse(hx + side * rx * 0.5, hy + ry * 0.02, rx * 0.1, ry * 0.09, _EYE)

    def draw_hat():
        if hat == "cap":
            pen.chord(hx, hy - ry * 0.22, rx * 1.1, ry * 0.88, 180, 360, _HAT)
            if view == "front":
                pen.ellipse(hx, hy - ry * 0.22, rx * 1.12, ry * 0.17, _HAT_DARK)
            elif side:
                pen.ellipse(hx + side * rx * 1.15, hy - ry * 0.2, rx * 0.72, ry * 0.13, _HAT_DARK)
            else:
                pen.rect(hx - rx * 0.3, hy - ry * 0.42, hx + rx * 0.3, hy - ry * 0.22, _HAT_DARK)
        elif hat == "beanie":
            pen.chord(hx, hy - ry * 0.15, rx * 1.12, ry * 1.05, 180, 360, _HAT)
            pen.rect(hx - rx * 1.12, hy - ry * 0.38, hx + rx * 1.12, hy - ry * 0.08, _HAT_DARK)
            pen.ellipse(hx, hy - ry * 1.22, rx * 0.3, rx * 0.3, _HAT_DARK)  # pom-pom

    def draw_backpack():
        if view == "front":  # only the straps show
            for s in (-1, 1):
                pen.poly(
                    [
                        (cx + s * shw * 0.5, sy - 0.004 * u),
                        (cx + s * shw * 0.72, sy - 0.004 * u),
                        (cx + s * shw * 0.66, sy + 0.2 * u),
                        (cx + s * shw * 0.48, sy + 0.2 * u),
                    ],
                    _BAG_DARK,
                )
        elif view == "back":
            x0, x1, y0, y1 = cx - shw * 0.78, cx + shw * 0.78, sy + 0.01 * u, sy + 0.27 * u
            pen.rect(x0, y0 + 0.03 * u, x1, y1, _BAG)
            pen.ellipse(cx, y0 + 0.03 * u, shw * 0.78, 0.03 * u, _BAG)
            pen.rect(x0 + 0.02 * u, y1 - 0.09 * u, x1 - 0.02 * u, y1 - 0.015 * u, _BAG_DARK)
        else:
            back = cx - side * shw
            pen.rect(
                min(back, back - side * 0.1 * u),
                sy + 0.01 * u,
                max(back, back - side * 0.1 * u),
                sy + 0.25 * u,
                _BAG,
            )
            pen.capsule(
                (back, sy + 0.005 * u), (back + side * 0.02 * u, sy + 0.12 * u), 0.01 * u, 0.01 * u, _BAG_DARK
            )

    def draw_shoulder_bag():
        # Strap from the left shoulder to the right hip: mirrored between front and back views.
        s = {"front": -1.0, "back": 1.0}.get(view, 0.0)
        if side:
            p, q = (cx + side * shw * 0.3, sy), (cx - side * shw * 0.4, hip_y - 0.01 * u)
            bx = cx - side * shw * 0.2
        else:
            p, q = (cx - s * shw * 0.62, sy - 0.003 * u), (cx + s * whw * 0.85, hip_y - 0.02 * u)
            bx = cx + s * (whw + 0.03 * u)
        pen.capsule(p, q, 0.011 * u, 0.011 * u, _BAG_DARK)
        pen.rect(bx - 0.06 * u, hip_y - 0.05 * u, bx + 0.06 * u, hip_y + 0.07 * u, _BAG)
        pen.rect(bx - 0.06 * u, hip_y - 0.05 * u, bx + 0.06 * u, hip_y - 0.015 * u, _BAG_DARK)

    def draw_handbag(hand: tuple[float, float]):
        x, y = hand
        pen.capsule((x - 0.03 * u, y + 0.015 * u), (x, y - 0.01 * u), 0.006 * u, 0.006 * u, _BAG_DARK)
        pen.capsule((x, y - 0.01 * u), (x + 0.03 * u, y + 0.015 * u), 0.006 * u, 0.006 * u, _BAG_DARK)
        pen.poly(
            [
                (x - 0.045 * u, y + 0.015 * u),
                (x + 0.045 * u, y + 0.015 * u),
                (x + 0.055 * u, y + 0.1 * u),
                (x - 0.055 * u, y + 0.1 * u),
            ],
            _BAG,
        )

    hip_r = (cx, hip_y - 0.01 * u)
    if side:
        # Far limbs first, the torso over them, then near limbs: a person seen from the side.
        draw_arm((cx - side * 0.01 * u, sy + 0.03 * u), phase, _ARM_A, 0.0)
        draw_leg(hip_r, phase + math.pi, _LEG_A, 0.0)
        draw_pelvis()
        draw_leg(hip_r, phase, _LEG_B, 0.0)
        draw_neck()
        draw_torso()
        if hair_len == "long":
            draw_long_hair_back(rx * 0.55, sy + 0.09 * u)
        draw_head()
        draw_hat()
        if bag == "backpack":
            draw_backpack()
        elif bag == "shoulder":
            draw_shoulder_bag()
        near_hand = draw_arm((cx + side * 0.01 * u, sy + 0.03 * u), phase + math.pi, _ARM_B, 0.0)
        if bag == "handbag":
            draw_handbag(near_hand)
    else:
        if view == "front" and hair_len == "long":
            draw_long_hair_back(rx * 1.08, sy + 0.08 * u)
        for s, p, label in ((-1, phase, _LEG_A), (1, phase + math.pi, _LEG_B)):
            draw_leg((cx + s * 0.052 * u * bw, hip_y), p, label, s * 0.012 * u)
        draw_pelvis()
        draw_neck()
        draw_torso()
        if bag == "backpack":
            draw_backpack()
        elif bag == "shoulder":
            draw_shoulder_bag()
        hands = {}
        for s, p, label in ((-1, phase + math.pi, _ARM_A), (1, phase, _ARM_B)):
            root = (cx + s * (shw - 0.022 * u), sy + 0.03 * u)
            hands[s] = draw_arm(root, p, label, s * 0.03 * u)
        if bag == "handbag":  # carried in the right hand: image left from the front
            draw_handbag(hands[-1 if view == "front" else 1])
        draw_head()
        if view == "back" and hair_len == "long":  # seen from behind, long hair falls over the back
            draw_long_hair_back(rx * 1.0, sy + 0.11 * u)
        draw_hat()
    return {"cx": cx, "u": u, "sy": sy, "shw": max(shw, 1.0), "feet_y": feet_y, "side": side, "limbs": limbs}


def _downsample(x: np.ndarray) -> np.ndarray:
    """Box-filter an (h*SS, w*SS, ...) array to (h, w, ...): the mean of each SS x SS block."""
    x = sum(x[i::SS] for i in range(SS))
    return sum(x[:, i::SS] for i in range(SS)) / (SS * SS)


def _segment_distance(py: np.ndarray, px: np.ndarray, p, q) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points to the segment p-q, and where along it (0..1) they project."""
    vx, vy = q[0] - p[0], q[1] - p[1]
    t = np.clip(((px - p[0]) * vx + (py - p[1]) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    return np.hypot(px - p[0] - t * vx, py - p[1] - t * vy), t


def _materials(f: Mapping[str, Any], labels: np.ndarray, y0: int, x0: int, geo: dict[str, Any]) -> np.ndarray:
    """Material index (into MATERIALS) of each pixel of a label-map window at (y0, x0), SS scale.

    Short sleeves and shorts only recolour part of a limb (the part beyond 55% of the upper
    arm, 62% of the thigh): the silhouette, hence the mask, does not depend on the clothing.
    """
    mat = _LABEL_MATERIAL[labels]
    cut = {
        _ARM_A: 0.55 if _choice(f, "sleeves", SLEEVES) == "short" else None,
        _LEG_A: 0.62 if _choice(f, "bottom_style", BOTTOM_STYLES) == "shorts" else None,
    }
    cut[_ARM_B], cut[_LEG_B] = cut[_ARM_A], cut[_LEG_A]
    for label, (root, joint, end) in geo["limbs"].items():
        if cut[label] is None:
            continue
        iy, ix = np.nonzero(labels == label)
        py, px = (iy + y0 + 0.5) / SS, (ix + x0 + 0.5) / SS
        d_upper, t = _segment_distance(py, px, root, joint)
        d_lower, _ = _segment_distance(py, px, joint, end)
        bare = (d_lower < d_upper) | (t >= cut[label])
        mat[iy[bare], ix[bare]] = _M["skin"]
    return mat


def _colorize(f: Mapping[str, Any], labels: np.ndarray, y0: int, x0: int, geo: dict[str, Any]) -> np.ndarray:
    """Colours (float32) of a window of the label map whose top-left pixel is (y0, x0) at SS scale."""
    palette = np.zeros((len(MATERIALS), 3), np.float32)
    for material, field, k in (
        ("skin", "skin_color", 1.0),
        ("hair", "hair_color", 1.0),
        ("top", "top_color", 1.0),
        ("logo", "top_color2", 1.0),
        ("bottom", "bottom_color", 1.0),
        ("shoes", "shoe_color", 1.0),
        ("hat", "hat_color", 1.0),
        ("hat_band", "hat_color", 0.7),
        ("bag", "bag_color", 1.0),
        ("strap", "bag_color", 0.68),
    ):
        palette[_M[material]] = _rgb(_field(f, field), field) * k
    palette[_M["eye"]] = (34, 26, 26)
    mat = _materials(f, labels, y0, x0, geo)
    rgb = np.take(palette, mat, axis=0)

    # Pixel centres in output-pixel units; patterns are anchored to the body so they move with it.
    ys = ((np.arange(labels.shape[0], dtype=np.float32) + y0 + 0.5) / SS)[:, None]
    xs = ((np.arange(labels.shape[1], dtype=np.float32) + x0 + 0.5) / SS)[None, :]
    u, cx, sy = geo["u"], geo["cx"], geo["sy"]
    texture = _choice(f, "top_texture", TEXTURES)
    if texture in ("stripes", "checks"):
        if texture == "stripes":
            on = np.floor((ys - sy) / (0.036 * u)) % 2 == 1
        else:
            c = 0.05 * u
            on = (np.floor((ys - sy) / c) + np.floor((xs - cx) / c)) % 2 == 1
        rgb[(mat == _M["top"]) & on] = _rgb(f["top_color2"], "top_color2")

    # Round shading (darker towards the body's sides, light from the left) and a dark outline
    # wherever two parts or materials meet: what makes the figure read as a person at 64 px.
    t = np.clip((xs - cx) / (1.6 * geo["shw"]), -1.0, 1.0)
    shade = np.broadcast_to(1.0 - 0.24 * t * t - 0.06 * t, labels.shape).copy()
    key = labels.astype(np.int16) * 16 + mat
    edge = np.zeros(labels.shape, bool)
    diff_x, diff_y = key[:, 1:] != key[:, :-1], key[1:, :] != key[:-1, :]
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    shade[edge] *= 0.6
    return rgb * shade[..., None]


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only, so it is exact everywhere)."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="reflect")
    img = sum(k[i] * p[i : i + img.shape[0]] for i in range(2 * r + 1))
    p = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * p[:, i : i + img.shape[1]] for i in range(2 * r + 1))


def render(factors: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image from its factor record: (HxWx3 uint8 image, HxW bool person mask).

    A pure function of APPEARANCE_FIELDS + STRUCTURE_FIELDS (META_FIELDS are ignored): the same
    factors give the same pixels. The mask depends on STRUCTURE_FIELDS only.
    """
    f = factors
    canvas = Image.new("L", (W * SS, H * SS), 0)
    geo = _draw_person(f, canvas)
    labels = np.asarray(canvas)

    # The background window, with a soft contact shadow under the feet (floor only, not masked).
    scene, scene_small = _scene(_choice(f, "scene", SCENES), int(_field(f, "scene_seed")))
    off = int(np.clip(round(_num(f, "bg_offset")), 0, BG_W - W))
    ys = (np.arange(H, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(W, dtype=np.float32) + 0.5)[None, :]
    srx = geo["u"] * (0.3 if geo["side"] else 0.2) * _num(f, "body_width") ** 0.5
    d = ((xs - geo["cx"]) / srx) ** 2 + ((ys - geo["feet_y"] + 0.6) / (0.035 * geo["u"])) ** 2
    shadow = (1.0 - 0.4 * np.clip(1.0 - d, 0.0, 1.0))[..., None]
    img = scene_small[:, off : off + W] * shadow
    mask = np.zeros((H, W), bool)

    # The person, composited at SS scale over the blocks it touches (plus a margin of one block,
    # so that its outline is found), then box-filtered down.
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if len(rows):
        by0, by1 = max(0, rows[0] // SS - 1), min(H, rows[-1] // SS + 2)
        bx0, bx1 = max(0, cols[0] // SS - 1), min(W, cols[-1] // SS + 2)
        win = labels[by0 * SS : by1 * SS, bx0 * SS : bx1 * SS]
        person = _colorize(f, win, by0 * SS, bx0 * SS, geo)
        bg = scene[by0 * SS : by1 * SS, (off + bx0) * SS : (off + bx1) * SS]
        bg = bg * np.repeat(np.repeat(shadow[by0:by1, bx0:bx1], SS, axis=0), SS, axis=1)
        on = win > 0
        img[by0:by1, bx0:bx1] = _downsample(np.where(on[..., None], person, bg))
        mask[by0:by1, bx0:bx1] = _downsample(on.astype(np.float32)) >= 0.5

    # The camera: colour saturation, white balance and exposure, optics blur, sensor noise.
    gray = img.mean(axis=2, keepdims=True)
    img = gray + _num(f, "saturation") * (img - gray)
    gains = np.array([_num(f, "light_r"), _num(f, "light_g"), _num(f, "light_b")], np.float32)
    img = img * (gains * _num(f, "brightness"))
    blur = _num(f, "blur")
    if blur > 0.05:
        img = _gaussian_blur(img.astype(np.float32), blur)
    noise_rng = np.random.default_rng(int(_field(f, "noise_seed")))
    img = img + noise_rng.normal(0.0, _num(f, "noise_sigma"), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def part_labels(factors: Mapping[str, Any]) -> np.ndarray:
    """HxW array of part names at pixel centres: background, skin, hair, top, bottom, shoes, hat, bag."""
    canvas = Image.new("L", (W * SS, H * SS), 0)
    geo = _draw_person(factors, canvas)
    mat = _materials(factors, np.asarray(canvas), 0, 0, geo)[SS // 2 :: SS, SS // 2 :: SS]
    names = np.array([PART_OF_MATERIAL[m] for m in MATERIALS], dtype=object)
    return names[mat]


def swap_factors(appearance_from: Mapping[str, Any], structure_from: Mapping[str, Any]) -> dict[str, Any]:
    """The factor record of 'the clothing of appearance_from, everything else of structure_from'."""
    out = {k: _field(structure_from, k) for k in STRUCTURE_FIELDS}
    out.update({k: _field(appearance_from, k) for k in APPEARANCE_FIELDS})
    return out


def render_swap(
    appearance_from: Mapping[str, Any], structure_from: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for DG-Net's G(s_j, a_i): image i's clothing in image j's structure.

    Structure means j's pose, viewpoint, body shape, skin, hair, hat, bag, position, background,
    camera and noise; the mask is therefore exactly j's.
    """
    return render(swap_factors(appearance_from, structure_from))


# --------------------------------------------------------------------------------------------
# Sampling the factors of a dataset
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    return items[int(rng.choice(len(items), p=p))]


def _cloth_color(rng: np.random.Generator, names: Sequence[str], spread: float = 14) -> str:
    return _hex(np.array(CLOTHING_COLORS[_pick(rng, names)]) + rng.uniform(-spread, spread, 3))


def _sample_clothing(rng: np.random.Generator) -> dict[str, Any]:
    names = list(CLOTHING_COLORS)
    top = _pick(rng, names)
    # The pattern's second colour must stand out from the first, or the texture is invisible.
    contrast = [n for n in names if np.abs(np.subtract(CLOTHING_COLORS[n], CLOTHING_COLORS[top])).sum() > 200]
    return {
        "top_color": _cloth_color(rng, [top]),
        "top_texture": _pick(rng, TEXTURES, [0.4, 0.2, 0.2, 0.2]),
        "top_color2": _cloth_color(rng, contrast),
        "sleeves": _pick(rng, SLEEVES, [0.6, 0.4]),
        "bottom_color": _cloth_color(rng, BOTTOM_COLORS),
        "bottom_style": _pick(rng, BOTTOM_STYLES, [0.75, 0.25]),
        "shoe_color": _cloth_color(rng, SHOE_COLORS, 10),
    }


def _sample_body(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "body_height": _r4(rng.uniform(0.86, 1.0)),
        "body_width": _r4(rng.uniform(0.85, 1.2)),
        "skin_color": _hex(_pick(rng, SKIN_COLORS)),
        "hair_color": _hex(HAIR_COLORS[_pick(rng, list(HAIR_COLORS))]),
        "hair_length": _pick(rng, HAIR_LENGTHS, [0.6, 0.4]),
        "hat": _pick(rng, HATS, [0.55, 0.25, 0.2]),
        "hat_color": _cloth_color(rng, list(CLOTHING_COLORS)),
        "bag": _pick(rng, BAGS, [0.35, 0.25, 0.2, 0.2]),
        "bag_color": _cloth_color(
            rng, ("black", "grey", "brown", "navy", "red", "beige", "olive", "blue", "pink")
        ),
    }


_CUES = ("hair_color", "hair_length", "hat", "bag")


def _sample_camera(rng: np.random.Generator, scene: str) -> dict[str, Any]:
    warmth = rng.uniform(-1.0, 1.0)  # white balance: warm (reddish) to cold (bluish)
    return {
        "scene": scene,
        "scene_seed": int(rng.integers(2**31)),
        "light_r": _r4(1.0 + 0.14 * warmth + rng.uniform(-0.03, 0.03)),
        "light_g": _r4(1.0 + rng.uniform(-0.05, 0.05)),
        "light_b": _r4(1.0 - 0.14 * warmth + rng.uniform(-0.03, 0.03)),
        "brightness": _r4(rng.uniform(0.78, 1.12)),
        "saturation": _r4(rng.uniform(0.7, 1.1)),
        "blur": _r4(rng.uniform(0.0, 0.9)),
        "noise_sigma": _r4(rng.uniform(1.5, 6.0)),
    }


def _sample_people(
    rng: np.random.Generator, ids: Sequence[int], shared_fraction: float, first_group: int
) -> tuple[dict[int, dict[str, Any]], dict[int, int]]:
    """Identities of one split; about `shared_fraction` of them in groups of 2-3 in the same clothes."""
    people, group_of = {}, {}
    order = [int(i) for i in rng.permutation(ids)]
    target, used, group = round(shared_fraction * len(ids)), 0, first_group
    while target - used >= 2:
        size = 3 if target - used >= 3 and target - used != 4 and rng.random() < 0.4 else 2
        clothing = _sample_clothing(rng)
        members: list[dict[str, Any]] = []
        for pid in order[used : used + size]:
            # Same clothes, so they must differ in at least two visible cues to stay identifiable.
            body = _sample_body(rng)
            while any(sum(body[c] != m[c] for c in _CUES) < 2 for m in members):
                body = _sample_body(rng)
            members.append(body)
            people[pid], group_of[pid] = {**clothing, **body}, group
        used += size
        group += 1
    for pid in order[used:]:
        people[pid], group_of[pid] = {**_sample_clothing(rng), **_sample_body(rng)}, 0
    return people, group_of


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r}: must be an integer from {low} to {high}")
    return int(value)


def sample_factors(
    *,
    seed: int = 0,
    num_ids: int = 120,
    num_cameras: int = 6,
    shared_clothing_fraction: float = 0.3,
    num_distractors: int | None = None,
    num_junk: int | None = None,
) -> pd.DataFrame:
    """The factors table of a dataset (no rendering): one row per image, columns COLUMNS.

    Identities 1..num_ids//2 are train, the rest test. Each identity is seen by 2-4 cameras:
    a train identity 2-5 times per camera; a test identity once as a query and 1-3 times in
    the gallery per camera. Distractors (id 0) default to num_ids//3, junk (id -1) to
    num_ids//6 (at least 2 each). Deterministic for a seed: one explicit numpy Generator.
    """
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    num_ids = _check_int("num_ids", num_ids, 4, 9999)
    num_cameras = _check_int("num_cameras", num_cameras, 2, 99)
    if not isinstance(shared_clothing_fraction, int | float) or not 0 <= shared_clothing_fraction <= 1:
        raise ConfigError(f"shared_clothing_fraction={shared_clothing_fraction!r}: must be between 0 and 1")
    num_distractors = _check_int(
        "num_distractors", max(2, num_ids // 3) if num_distractors is None else num_distractors, 0, 100_000
    )
    num_junk = _check_int("num_junk", max(2, num_ids // 6) if num_junk is None else num_junk, 0, 100_000)

    rng = np.random.default_rng(seed)
    kinds = [SCENES[i] for i in rng.permutation(len(SCENES))]
    cameras = {c: _sample_camera(rng, kinds[(c - 1) % len(kinds)]) for c in range(1, num_cameras + 1)}
    n_train = num_ids // 2
    train_ids, test_ids = list(range(1, n_train + 1)), list(range(n_train + 1, num_ids + 1))
    people, group_of = _sample_people(rng, train_ids, shared_clothing_fraction, 1)
    first_test_group = max(group_of.values(), default=0) + 1
    test_people, test_groups = _sample_people(rng, test_ids, shared_clothing_fraction, first_test_group)
    people.update(test_people)
    group_of.update(test_groups)
    next_frame = {c: int(rng.integers(50, 500)) for c in cameras}
    rows: list[dict[str, Any]] = []

    def track(pid: int, person: dict[str, Any], group: int, cam: int, splits: Sequence[str]) -> None:
        """A person walking through one camera's view: consecutive frames, a steady direction."""
        view0 = _pick(rng, VIEWPOINTS, [0.35, 0.35, 0.15, 0.15])
        phase0, offset0 = rng.uniform(0, 2 * math.pi), rng.uniform(8, BG_W - W - 8)
        frame0 = frame = next_frame[cam] + int(rng.integers(5, 60))
        for split in splits:
            frame += int(rng.integers(3, 13))
            view = view0 if rng.random() > 0.2 else _pick(rng, VIEWPOINTS)  # now and then, a turn
            image = {
                "viewpoint": view,
                "pose_phase": _r4((phase0 + 0.21 * (frame - frame0)) % (2 * math.pi)),  # ~30-frame gait
                "dx": _r4(rng.uniform(-3.5, 3.5)),
                "dy": _r4(rng.uniform(-2.5, 2.5)),
                "scale": _r4(rng.uniform(0.93, 1.05)),
                "bg_offset": int(np.clip(round(offset0 + rng.uniform(-6, 6)), 0, BG_W - W)),
                "noise_seed": int(rng.integers(2**31)),
            }
            name = market_name(pid, cam, frame)
            meta = {
                "file_name": name,
                "path": f"{SPLIT_DIRS[split]}/{name}",
                "split": split,
                "person_id": pid,
                "camera_id": cam,
                "frame": frame,
                "k": 1,
                "clothing_group": group,
            }
            rows.append({**meta, **person, **image, **cameras[cam]})
        next_frame[cam] = frame + 1

    def some_cameras() -> list[int]:
        k = int(rng.integers(2, min(4, num_cameras) + 1))
        return sorted(int(c) + 1 for c in rng.choice(num_cameras, size=k, replace=False))

    for pid in train_ids:
        for cam in some_cameras():
            track(pid, people[pid], group_of[pid], cam, ["train"] * int(rng.integers(2, 6)))
    for pid in test_ids:
        for cam in some_cameras():  # Market style: one query per camera, the rest in the gallery
            splits = ["gallery"] * int(rng.integers(1, 4))
            splits.insert(int(rng.integers(len(splits) + 1)), "query")
            track(pid, people[pid], group_of[pid], cam, splits)
    for _ in range(num_distractors):  # other passers-by, id 0000
        person = {**_sample_clothing(rng), **_sample_body(rng)}
        track(DISTRACTOR_ID, person, 0, int(rng.integers(1, num_cameras + 1)), ["gallery"])
    for _ in range(num_junk):  # bad detections, id -1: cut off, too close, or too far
        person = {**_sample_clothing(rng), **_sample_body(rng)}
        track(JUNK_ID, person, 0, int(rng.integers(1, num_cameras + 1)), ["gallery"])
        mode = _pick(rng, ("cut", "close", "far"))
        if mode == "cut":
            rows[-1]["dx"] = _r4(rng.choice([-1, 1]) * rng.uniform(22, 32))
        elif mode == "close":
            rows[-1]["scale"], rows[-1]["dy"] = _r4(rng.uniform(1.5, 2.1)), _r4(rng.uniform(30, 80))
        else:
            rows[-1]["scale"], rows[-1]["dy"] = _r4(rng.uniform(0.42, 0.55)), _r4(rng.uniform(-30, -12))

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {"train": 0, "query": 1, "gallery": 2}
    table = table.sort_values(["split", "file_name"], key=lambda s: s.map(order) if s.name == "split" else s)
    return table.reset_index(drop=True)


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_ids: int = 120,
    num_cameras: int = 6,
    shared_clothing_fraction: float = 0.3,
    num_distractors: int | None = None,
    num_junk: int | None = None,
) -> pd.DataFrame:
    """Render a synthetic dataset into `out_dir` (Market-1501 layout), replacing it atomically.

    Returns the factors table, also written to `out_dir/factors.csv`. See `sample_factors` for
    what the arguments mean; the defaults give about 1,200 images in about 5 s.
    """
    table = sample_factors(
        seed=seed,
        num_ids=num_ids,
        num_cameras=num_cameras,
        shared_clothing_fraction=shared_clothing_fraction,
        num_distractors=num_distractors,
        num_junk=num_junk,
    )
    out = Path(out_dir)
    check_replaceable(out, "factors.csv", "synth")
    with atomic_dir(out) as tmp:
        for folder in SPLIT_DIRS.values():
            (tmp / folder).mkdir()
        for row in table.to_dict("records"):
            image, _ = render(row)
            (tmp / row["path"]).write_bytes(encode_jpeg(image))
        table.to_csv(tmp / "factors.csv", index=False)
    return table


def read_factors(root: str | os.PathLike) -> pd.DataFrame:
    """Read `root/factors.csv` back, exactly as written (floats round-trip, 'none' stays a string)."""
    path = Path(root) / "factors.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a synthetic dataset folder holds factors.csv")
    table = pd.read_csv(path, float_precision="round_trip", keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: lacks the columns {', '.join(missing)}")
    return table


# --------------------------------------------------------------------------------------------
# Pictures for the README
# --------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _tile(image: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(image).resize((W * scale, H * scale), Image.Resampling.NEAREST)


def _save_png(sheet: Image.Image, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    with atomic_path(out) as tmp:
        # 256 colours: a third of the size, and no visible change, for a picture in a README.
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    return out


def _round_robin(rows: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """Up to n records, one camera after another, so that a row shows as many cameras as it can."""
    by_cam = [g.to_dict("records") for _, g in rows.sort_values(["camera_id", "frame"]).groupby("camera_id")]
    return [g[i] for i in range(max(map(len, by_cam), default=0)) for g in by_cam if i < len(g)][:n]


def contact_sheet(
    root: str | os.PathLike,
    out_png: str | os.PathLike,
    num_ids: int = 8,
    per_id: int = 8,
    scale: int = 2,
    show_extras: bool = True,
) -> Path:
    """A PNG grid of a generated dataset: one row per identity, its images across cameras.

    The first rows are (up to two) groups of identities that wear the same clothes; with
    `show_extras`, a last row shows gallery distractors (0000) and junk (-1).
    """
    table = read_factors(root)
    people = table[table["person_id"] > 0]
    groups = people[people["clothing_group"] > 0].groupby("clothing_group")["person_id"].unique()
    groups = sorted((sorted(int(i) for i in ids) for ids in groups if len(ids) >= 2), key=lambda g: -len(g))
    chosen: list[int] = []
    for ids in groups[:2]:
        if len(chosen) + len(ids) <= num_ids:
            chosen += ids
    others = sorted(set(people.loc[people["clothing_group"] == 0, "person_id"].astype(int)))
    want = max(0, min(num_ids - len(chosen), len(others)))
    chosen += [others[int(i)] for i in np.linspace(0, len(others) - 1, want).round()] if want else []
    lines = []
    for pid in chosen:
        picked = _round_robin(people[people["person_id"] == pid], per_id)
        first = picked[0]
        text = [f"id {pid:04d} ({'train' if first['split'] == 'train' else 'test'})"]
        if first["clothing_group"] > 0:
            text.append(f"same clothes: group {first['clothing_group']}")
        text += [
            f"{first['top_texture']} top, {first['bottom_style']}",
            f"hair: {first['hair_length']}",
            f"hat: {first['hat']}",
            f"bag: {first['bag']}",
            f"height {first['body_height']:.2f}",
            f"width {first['body_width']:.2f}",
        ]
        lines.append((text, picked))
    extras = table[table["person_id"] <= 0]
    if show_extras and len(extras):
        picked = [r for _, r in extras.groupby("person_id")]
        half = [_round_robin(r, per_id) for r in picked]
        mixed = [g[i] for i in range(per_id) for g in half if i < len(g)][:per_id]
        lines.append((["gallery extras:", "0000 = distractors", "-1 = junk crops"], mixed))

    label_w, cap_h, gap, tw, th = 150, 16, 6, W * scale, H * scale
    font, small = _font(14), _font(12)
    sheet = Image.new("RGB", (label_w + per_id * (tw + gap), 30 + len(lines) * (th + cap_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    title = "Synthetic re-ID dataset: one row per identity, its images across cameras (c = camera)"
    draw.text((6, 6), title, "black", font)
    for r, (text, picked) in enumerate(lines):
        y = 30 + r * (th + cap_h + gap)
        for i, line in enumerate(text):
            draw.text((6, y + 8 + 17 * i), line, "black", font if i == 0 else small)
        for c, rec in enumerate(picked):
            x = label_w + c * (tw + gap)
            sheet.paste(_tile(decode_jpeg(Path(root) / rec["path"]), scale), (x, y))
            pid = "" if rec["person_id"] > 0 else f"{rec['file_name'].split('_')[0]} "
            caption = f"{pid}c{rec['camera_id']} {rec['viewpoint']} {rec['split']}"
            draw.text((x + 2, y + th + 1), caption, "black", small)
    return _save_png(sheet, out_png)


def swap_sheet(root: str | os.PathLike, out_png: str | os.PathLike, num: int = 5, scale: int = 2) -> Path:
    """A PNG grid of `render_swap`: row i takes its clothing from image i (left column), column
    j its structure (pose, body, hair, hat, bag, background, camera) from image j (top row)."""
    table = read_factors(root)
    train = table[table["split"] == "train"]
    pids = sorted(set(train["person_id"].astype(int)))
    donors: list[dict[str, Any]] = []
    used_ids: set[int] = set()
    used_cams: set[int] = set()
    for n in range(min(num, len(pids))):
        # Different people, viewpoints and cameras, so that the grid shows what moves with what.
        view = ("front", "left", "back", "right")[n % 4]
        start = int(n * len(pids) / num)
        pick = None
        for pid in pids[start:] + pids[:start]:
            rows = train[(train["person_id"] == pid) & ~train["camera_id"].isin(used_cams)]
            rows = rows[rows["viewpoint"] == view]
            if pid not in used_ids and len(rows):
                pick = rows.iloc[0].to_dict()
                break
        if pick is None:
            pick = train[~train["person_id"].isin(used_ids)].iloc[0].to_dict()
        donors.append(pick)
        used_ids.add(int(pick["person_id"]))
        used_cams.add(int(pick["camera_id"]))
        if len(used_cams) >= train["camera_id"].nunique():  # every camera shown: start over
            used_cams.clear()

    tw, th, gap, head = W * scale, H * scale, 6, 22
    n = len(donors)
    sheet = Image.new("RGB", ((n + 1) * (tw + gap) + gap, head + (n + 1) * (th + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(12)
    draw.text(
        (6, 4), "rows: clothing from the left image; columns: structure from the top image", "black", font
    )
    y0 = head + gap
    draw.text((8, y0 + th // 2 - 20), "clothing\n   from\n    v", "black", font)
    draw.text((8, y0 + th // 2 + 30), "structure\n  from  >", "black", font)
    for j, d in enumerate(donors):
        original = _tile(render(d)[0], scale)
        sheet.paste(original, ((j + 1) * (tw + gap) + gap, y0))
        sheet.paste(original, (gap, y0 + (j + 1) * (th + gap)))
    for i, a in enumerate(donors):
        for j, s in enumerate(donors):
            x, y = (j + 1) * (tw + gap) + gap, y0 + (i + 1) * (th + gap)
            sheet.paste(_tile(render_swap(a, s)[0], scale), (x, y))
    draw.line([(tw + gap + gap // 2, head), (tw + gap + gap // 2, sheet.height)], "black", 2)
    draw.line([(0, y0 + th + gap // 2), (sheet.width, y0 + th + gap // 2)], "black", 2)
    return _save_png(sheet, out_png)
