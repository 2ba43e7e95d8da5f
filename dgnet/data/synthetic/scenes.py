"""Backgrounds: one scene per camera, a pure function of its kind and seed, drawn once and cached.
Dulled and out of focus, as in real surveillance crops: with saturated, sharp scenes the appearance code
(trained to ignore the background) cannot carry their colours, and the generator's self-reconstruction
lost about 0.01 L1 there (docs/generator_diagnosis.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from dgnet.data.synthetic.canvas import SS, Pen, downsample, gaussian_blur
from dgnet.data.synthetic.factors import BG_W, CLOTHING_COLORS, H

SCENE_SATURATION = 0.5  # colour saturation kept
SCENE_DEFOCUS = 2.0  # the defocus blur's sigma in output pixels

RGB = tuple[int, ...]


def _mix(rng: np.random.Generator, base: Sequence[int], spread: float = 18) -> RGB:
    return tuple(int(np.clip(c + rng.uniform(-spread, spread), 0, 255)) for c in base)


def _shade(rgb: Sequence[int], k: float) -> RGB:
    return tuple(int(np.clip(c * k, 0, 255)) for c in rgb)


def _floor(pen: Pen, rng: np.random.Generator, hz: float, color: RGB, lines: bool) -> None:
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
        pen.line((x, H), (vx + (x - vx) * t, hz), joint)
    y, step = hz + 3, 3.0
    while y < H:  # joints across the floor get wider apart as they come nearer
        pen.line((0, y), (BG_W, y), joint)
        step *= 1.45
        y += step


def _street(pen: Pen, rng: np.random.Generator) -> None:
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


def _plaza(pen: Pen, rng: np.random.Generator) -> None:
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


def _corridor(pen: Pen, rng: np.random.Generator) -> None:
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


def _park(pen: Pen, rng: np.random.Generator) -> None:
    hz = rng.uniform(54, 66)
    pen.rect(0, 0, BG_W, hz, (168, 202, 230))
    for x in np.arange(rng.uniform(-10, 0), BG_W + 10, 13):  # tree line
        y, rx, ry = hz - rng.uniform(14, 26), rng.uniform(9, 14), rng.uniform(12, 18)
        pen.ellipse(x, y, rx, ry, _mix(rng, (56, 106, 48), 20))
    for x in np.arange(rng.uniform(0, 30), BG_W, 30):
        pen.rect(x - 1.5, hz - 12, x + 1.5, hz + 2, (86, 62, 42))
    _floor(pen, rng, hz, _mix(rng, (96, 150, 70), 14), lines=False)
    for _ in range(260):  # grass tufts
        x, y = rng.uniform(0, BG_W), rng.uniform(hz, H)
        pen.rect(x, y, x + 0.8, y + 1.5 + (y - hz) / 30, _mix(rng, (70, 120, 52), 20))
    cx = rng.uniform(30, BG_W - 30)  # a sand path coming towards the camera
    pen.poly([(cx - 6, hz), (cx + 6, hz), (cx + 40, H), (cx - 40, H)], _mix(rng, (206, 186, 146), 12))
    bx = rng.uniform(0, BG_W - 24)  # a bench
    wood = _mix(rng, (130, 86, 50), 12)
    pen.rect(bx, hz + 2, bx + 22, hz + 4, wood)
    pen.rect(bx, hz + 6, bx + 22, hz + 8, wood)
    pen.rect(bx + 2, hz + 8, bx + 3, hz + 13, (50, 50, 50))
    pen.rect(bx + 19, hz + 8, bx + 20, hz + 13, (50, 50, 50))


def _station(pen: Pen, rng: np.random.Generator) -> None:
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


def _shops(pen: Pen, rng: np.random.Generator) -> None:
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


SCENE_PAINTERS: dict[str, Callable[[Pen, np.random.Generator], None]] = {
    "street": _street, "plaza": _plaza, "corridor": _corridor, "park": _park, "station": _station,
    "shops": _shops,
}


@functools.lru_cache(maxsize=64)
def scene(kind: str, scene_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The camera's whole scene, dulled and defocused: float32 at SS scale and at output scale."""
    image = Image.new("RGB", (BG_W * SS, H * SS))
    SCENE_PAINTERS[kind](Pen(image), np.random.default_rng(scene_seed))
    big = np.asarray(image, dtype=np.float32)
    gray = big.mean(axis=2, keepdims=True)
    big = (gray + SCENE_SATURATION * (big - gray)).astype(np.float32)
    big = gaussian_blur(big, SCENE_DEFOCUS * SS).astype(np.float32)
    small = downsample(big)
    big.flags.writeable = small.flags.writeable = False  # shared by every image of the camera
    return big, small
