"""Drawing at SS times the output size, and the exact numpy filters that bring it down."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SS = 4  # draw at 4x and box-filter down: anti-aliased edges with exact, portable arithmetic

Point = tuple[float, float]


class Pen:
    """ImageDraw in output-pixel coordinates (floats) on a canvas supersampled SS times."""

    def __init__(self, image: Image.Image):
        self.draw = ImageDraw.Draw(image)

    def poly(self, pts: Sequence[Point], fill: Any) -> None:
        self.draw.polygon([(x * SS, y * SS) for x, y in pts], fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Any) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: Any) -> None:
        self.draw.ellipse([(cx - rx) * SS, (cy - ry) * SS, (cx + rx) * SS, (cy + ry) * SS], fill=fill)

    def chord(self, cx: float, cy: float, rx: float, ry: float, start: float, end: float, fill: Any) -> None:
        box = [(cx - rx) * SS, (cy - ry) * SS, (cx + rx) * SS, (cy + ry) * SS]
        self.draw.chord(box, start, end, fill=fill)

    def line(self, p: Point, q: Point, fill: Any) -> None:
        self.draw.line([(p[0] * SS, p[1] * SS), (q[0] * SS, q[1] * SS)], fill=fill, width=SS // 2)

    def capsule(self, p: Point, q: Point, rp: float, rq: float, fill: Any) -> None:
        """A limb: a tapered band from p (half-width rp) to q (half-width rq) with round ends."""
        dx, dy = q[0] - p[0], q[1] - p[1]
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        self.poly([(p[0] + nx * rp, p[1] + ny * rp), (q[0] + nx * rq, q[1] + ny * rq),
                   (q[0] - nx * rq, q[1] - ny * rq), (p[0] - nx * rp, p[1] - ny * rp)], fill)
        self.ellipse(p[0], p[1], rp, rp, fill)
        self.ellipse(q[0], q[1], rq, rq, fill)


def downsample(x: np.ndarray) -> np.ndarray:
    """Box-filter an (h*SS, w*SS, ...) array to (h, w, ...): the mean of each SS x SS block."""
    x = sum(x[i::SS] for i in range(SS))
    return sum(x[:, i::SS] for i in range(SS)) / (SS * SS)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (numpy only, so it is exact everywhere)."""
    r = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    p = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="reflect")
    img = sum(k[i] * p[i : i + img.shape[0]] for i in range(2 * r + 1))
    p = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="reflect")
    return sum(k[i] * p[:, i : i + img.shape[1]] for i in range(2 * r + 1))
