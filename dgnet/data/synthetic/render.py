"""The rasteriser: one image from one factor record, a pure function of its APPEARANCE_FIELDS and
STRUCTURE_FIELDS. The person's labels are coloured by material, shaded and outlined at SS scale,
composited over the camera's scene, box-filtered down, then seen through the camera."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from dgnet.data.synthetic import person as p
from dgnet.data.synthetic.canvas import SS, downsample, gaussian_blur
from dgnet.data.synthetic.factors import BG_W, H, W, get_choice, get_color, get_number, swap_factors
from dgnet.data.synthetic.scenes import scene

# Each material: its coarse part name (`part_labels`), the person labels drawn in it, and the
# factor of its colour with a darkening factor. Arms and legs turn to skin where sleeves or shorts end.
_MATERIALS = {
    "background": ("background", (), None),
    "skin": ("skin", (p.SKIN, p.HAND), ("skin_color", 1.0)),
    "hair": ("hair", (p.HAIR,), ("hair_color", 1.0)),
    "top": ("top", (p.TOP, p.ARM_A, p.ARM_B), ("top_color", 1.0)),
    "bottom": ("bottom", (p.PELVIS, p.LEG_A, p.LEG_B), ("bottom_color", 1.0)),
    "shoes": ("shoes", (p.SHOE,), ("shoe_color", 1.0)),
    "hat": ("hat", (p.HAT,), ("hat_color", 1.0)),
    "hat_band": ("hat", (p.HAT_DARK,), ("hat_color", 0.7)),
    "bag": ("bag", (p.BAG,), ("bag_color", 1.0)),
    "strap": ("bag", (p.BAG_DARK,), ("bag_color", 0.68)),
    "logo": ("top", (p.LOGO,), ("top_color2", 1.0)),
    "eye": ("skin", (p.EYE,), None),
}
MATERIALS = tuple(_MATERIALS)
_M = {name: i for i, name in enumerate(MATERIALS)}
_PART_NAMES = np.array([part for part, _, _ in _MATERIALS.values()], dtype=object)
_LABEL_MATERIAL = np.zeros(256, np.uint8)
for _i, (_, _labels, _) in enumerate(_MATERIALS.values()):
    _LABEL_MATERIAL[list(_labels)] = _i
_EYE_COLOR = (34, 26, 26)


def _segment_distance(py: np.ndarray, px: np.ndarray, a, b) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points to the segment a-b, and where along it (0..1) they project."""
    vx, vy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((px - a[0]) * vx + (py - a[1]) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
    return np.hypot(px - a[0] - t * vx, py - a[1] - t * vy), t


def _materials(f: Mapping[str, Any], labels: np.ndarray, y0: int, x0: int, fig: p.Figure) -> np.ndarray:
    """Material index (into MATERIALS) of each pixel of a label-map window at (y0, x0), SS scale. Short
    sleeves and shorts only recolour a limb beyond 55% of the upper arm, 62% of the thigh: the
    silhouette, hence the mask, does not depend on the clothing."""
    mat = _LABEL_MATERIAL[labels]
    arm_cut = 0.55 if get_choice(f, "sleeves") == "short" else None
    leg_cut = 0.62 if get_choice(f, "bottom_style") == "shorts" else None
    cut = {p.ARM_A: arm_cut, p.ARM_B: arm_cut, p.LEG_A: leg_cut, p.LEG_B: leg_cut}
    for label, (root, joint, end) in fig.limbs.items():
        if cut[label] is None:
            continue
        iy, ix = np.nonzero(labels == label)
        py, px = (iy + y0 + 0.5) / SS, (ix + x0 + 0.5) / SS
        d_upper, t = _segment_distance(py, px, root, joint)
        d_lower, _ = _segment_distance(py, px, joint, end)
        bare = (d_lower < d_upper) | (t >= cut[label])
        mat[iy[bare], ix[bare]] = _M["skin"]
    return mat


def _colorize(f: Mapping[str, Any], labels: np.ndarray, y0: int, x0: int, fig: p.Figure) -> np.ndarray:
    """Colours (float32) of a window of the label map whose top-left pixel is (y0, x0) at SS scale."""
    palette = np.zeros((len(MATERIALS), 3), np.float32)
    for i, (_, _, color) in enumerate(_MATERIALS.values()):
        if color:
            palette[i] = get_color(f, color[0]) * color[1]
    palette[_M["eye"]] = _EYE_COLOR
    mat = _materials(f, labels, y0, x0, fig)
    rgb = np.take(palette, mat, axis=0)

    # Pixel centres in output-pixel units; patterns are anchored to the body so they move with it.
    ys = ((np.arange(labels.shape[0], dtype=np.float32) + y0 + 0.5) / SS)[:, None]
    xs = ((np.arange(labels.shape[1], dtype=np.float32) + x0 + 0.5) / SS)[None, :]
    u, cx, sy = fig.u, fig.cx, fig.sy
    pattern = None
    if fig.texture == "stripes":
        pattern = np.floor((ys - sy) / (0.036 * u)) % 2 == 1
    elif fig.texture == "checks":
        c = 0.05 * u
        pattern = (np.floor((ys - sy) / c) + np.floor((xs - cx) / c)) % 2 == 1
    if pattern is not None:
        rgb[(mat == _M["top"]) & pattern] = get_color(f, "top_color2")

    # Round shading (darker towards the body's sides, light from the left) and a dark outline
    # wherever two parts or materials meet: what makes the figure read as a person at 64 px.
    t = np.clip((xs - cx) / (1.6 * max(fig.shw, 1.0)), -1.0, 1.0)
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


def _draw_labels(f: Mapping[str, Any]) -> tuple[np.ndarray, p.Figure]:
    canvas = Image.new("L", (W * SS, H * SS), 0)
    fig = p.Figure(f, canvas).draw()
    return np.asarray(canvas), fig


def render(factors: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 image, HxW bool person mask) of one factor record (META_FIELDS are ignored)."""
    f = factors
    labels, fig = _draw_labels(f)

    # The background window, with a soft contact shadow under the feet (floor only, not masked).
    big, small = scene(get_choice(f, "scene"), int(get_number(f, "scene_seed")))
    off = int(np.clip(round(get_number(f, "bg_offset")), 0, BG_W - W))
    ys = (np.arange(H, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(W, dtype=np.float32) + 0.5)[None, :]
    srx = fig.u * (0.3 if fig.side else 0.2) * get_number(f, "body_width") ** 0.5
    d = ((xs - fig.cx) / srx) ** 2 + ((ys - fig.feet_y + 0.6) / (0.035 * fig.u)) ** 2
    shadow = (1.0 - 0.4 * np.clip(1.0 - d, 0.0, 1.0))[..., None]
    img = small[:, off : off + W] * shadow
    mask = np.zeros((H, W), bool)

    # The person, composited at SS scale over the blocks it touches (plus a margin of one block,
    # so that its outline is found), then box-filtered down.
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if len(rows):
        by0, by1 = max(0, rows[0] // SS - 1), min(H, rows[-1] // SS + 2)
        bx0, bx1 = max(0, cols[0] // SS - 1), min(W, cols[-1] // SS + 2)
        win = labels[by0 * SS : by1 * SS, bx0 * SS : bx1 * SS]
        person = _colorize(f, win, by0 * SS, bx0 * SS, fig)
        bg = big[by0 * SS : by1 * SS, (off + bx0) * SS : (off + bx1) * SS]
        bg = bg * np.repeat(np.repeat(shadow[by0:by1, bx0:bx1], SS, axis=0), SS, axis=1)
        on = win > 0
        img[by0:by1, bx0:bx1] = downsample(np.where(on[..., None], person, bg))
        mask[by0:by1, bx0:bx1] = downsample(on.astype(np.float32)) >= 0.5

    # The camera: colour saturation, white balance and exposure, optics blur, sensor noise.
    gray = img.mean(axis=2, keepdims=True)
    img = gray + get_number(f, "saturation") * (img - gray)
    gains = np.array([get_number(f, f"light_{c}") for c in "rgb"], np.float32)
    img = img * (gains * get_number(f, "brightness"))
    blur = get_number(f, "blur")
    if blur > 0.05:
        img = gaussian_blur(img.astype(np.float32), blur)
    noise_rng = np.random.default_rng(int(get_number(f, "noise_seed")))
    img = img + noise_rng.normal(0.0, get_number(f, "noise_sigma"), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def part_labels(factors: Mapping[str, Any]) -> np.ndarray:
    """HxW array of part names at pixel centres: background, skin, hair, top, bottom, shoes, hat, bag."""
    labels, fig = _draw_labels(factors)
    return _PART_NAMES[_materials(factors, labels, 0, 0, fig)[SS // 2 :: SS, SS // 2 :: SS]]


def render_swap(
    appearance_from: Mapping[str, Any], structure_from: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth for DG-Net's G(s_j, a_i): i's clothing on everything else of j (pose, body, hair,
    hat, bag, position, scene, camera, noise), so the mask is exactly j's."""
    return render(swap_factors(appearance_from, structure_from))
