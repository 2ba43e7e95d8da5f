"""Pictures of results, drawn with PIL only (dgnet cannot import matplotlib): swap grids, ranked
retrieval lists, CMC curves. Images: PIL Images, (H, W, 3) uint8 arrays or (3, H, W) tensors in [0, 1]
(`normalized=True` for ImageNet-normalised ones)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dgnet.data.transforms import denormalize
from dgnet.io import atomic_path

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GREY_INK = (110, 110, 110)
MATCH_COLOURS = {"hit": (30, 160, 60), "miss": (215, 40, 40), "junk": (150, 150, 150),
                 "unknown": (70, 110, 170)}  # unknown: images without ids (`dgnet rank` on any folder)
# Colour-blind-safe line colours (Okabe and Ito).
PALETTE = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (120, 120, 120), (240, 228, 66)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def to_pil(image: Any, normalized: bool = False) -> Image.Image:
    """A PIL RGB image from a PIL Image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [0, 1]
    (ImageNet-normalised with `normalized=True`)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W), got {tuple(x.shape)}")
        x = denormalize(x) if normalized else x.clamp(0, 1)
        image = (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image arrays must be (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def _tile(image: Any, size: tuple[int, int], normalized: bool) -> Image.Image:
    """The image fitted to size = (width, height); pixel-art upscaling stays sharp."""
    pil = to_pil(image, normalized)
    if pil.size == size:
        return pil
    whole = size[0] % pil.width == 0 and size[1] % pil.height == 0
    return pil.resize(size, Image.Resampling.NEAREST if whole else Image.Resampling.BILINEAR)


def save(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` atomically; the format follows the suffix (PNG when there is none)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path


def _cell_size(images: Sequence[Any], scale: float, normalized: bool) -> tuple[int, int]:
    return tuple(max(1, round(n * scale)) for n in to_pil(images[0], normalized).size)


def swap_grid(
    appearance_images: Sequence[Any],
    structure_images: Sequence[Any],
    generated: Sequence[Sequence[Any]] | torch.Tensor,
    scale: float = 2.0,
    normalized: bool = False,
    title: str | None = None,
    appearance_label: str = "appearance from",
    structure_label: str = "structure from",
) -> Image.Image:
    """Cell (i, j) = G(s_j, a_i): appearance image i's clothing in structure image j's pose, body and
    background; donors in the first column / row. `generated`: A x S nested lists or (A, S, 3, H, W)."""
    num_a, num_s = len(appearance_images), len(structure_images)
    if num_a == 0 or num_s == 0:
        raise ValueError("swap_grid needs at least one appearance and one structure image")
    if len(generated) != num_a or any(len(row) != num_s for row in generated):
        raise ValueError(f"generated must be {num_a} rows of {num_s} images (appearance x structure)")
    cw, ch = _cell_size(appearance_images, scale, normalized)
    gap, sep, margin = 4, 10, 10
    font, small = _font(15), _font(12)
    title_h = 28 if title else 0
    width = 2 * margin + (num_s + 1) * cw + num_s * gap + sep
    height = 2 * margin + title_h + (num_a + 1) * ch + num_a * gap + sep
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((margin, margin), title, INK, font)
    top = margin + title_h

    def x_of(j: int) -> int:  # column 0 = donors, 1.. = structure images
        return margin + j * (cw + gap) + (sep - gap if j else 0)

    def y_of(i: int) -> int:
        return top + i * (ch + gap) + (sep - gap if i else 0)

    # The corner: a light panel naming the donors, arrows pointing at them.
    x0, y0 = x_of(0), y_of(0)
    draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=(242, 243, 246))
    lines = _wrap(draw, structure_label, small, cw - 12)
    for k, line in enumerate(lines):
        draw.text((x0 + 6, y0 + 8 + 15 * k), line, INK, small)
    y = y0 + 8 + 15 * len(lines) + 6
    _arrow(draw, (x0 + 6, y), (x0 + cw - 6, y))
    lines = _wrap(draw, appearance_label, small, cw - 28)
    y = y0 + ch - 10 - 15 * len(lines)
    for k, line in enumerate(lines):
        draw.text((x0 + 6, y + 15 * k), line, INK, small)
    _arrow(draw, (x0 + cw - 14, y0 + ch // 2 + 4), (x0 + cw - 14, y0 + ch - 6))
    for j, image in enumerate(structure_images):
        sheet.paste(_tile(image, (cw, ch), normalized), (x_of(j + 1), y_of(0)))
    for i, image in enumerate(appearance_images):
        sheet.paste(_tile(image, (cw, ch), normalized), (x_of(0), y_of(i + 1)))
        for j in range(num_s):
            sheet.paste(_tile(generated[i][j], (cw, ch), normalized), (x_of(j + 1), y_of(i + 1)))
    # Separators between the donors and the generated block.
    line_x, line_y = x_of(1) - sep // 2 - 1, y_of(1) - sep // 2 - 1
    draw.line([(line_x, top), (line_x, height - margin)], fill=GREY_INK, width=2)
    draw.line([(margin, line_y), (width - margin, line_y)], fill=GREY_INK, width=2)
    return sheet


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float],
           fill: tuple[int, int, int] = INK, width: int = 2, head: float = 7.0) -> None:
    """A straight arrow with a filled triangular head (the default font has no arrow glyphs)."""
    (x1, y1), (x2, y2) = start, end
    length = max(math.hypot(x2 - x1, y2 - y1), 1e-9)
    ux, uy = (x2 - x1) / length, (y2 - y1) / length
    bx, by = x2 - ux * head, y2 - uy * head
    draw.line([(x1, y1), (bx, by)], fill=fill, width=width)
    draw.polygon([(x2, y2), (bx - uy * head * 0.6, by + ux * head * 0.6),
                  (bx + uy * head * 0.6, by - ux * head * 0.6)], fill=fill)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap to a pixel width."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_size(draw, trial, font)[0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def ranked_list(
    query_image: Any | Sequence[Any],
    gallery_images: Sequence[Any] | Sequence[Sequence[Any]],
    matches: Sequence[str] | Sequence[Sequence[str]],
    top_k: int = 10,
    scale: float = 1.5,
    normalized: bool = False,
    query_labels: Sequence[str] | None = None,
    gallery_labels: Sequence[str] | Sequence[Sequence[str]] | None = None,
    title: str | None = None,
) -> Image.Image:
    """Rows of a query and its top-k gallery images, framed by `matches`: green hit (same id, other
    camera), red miss, grey junk, blue unknown (no ids). One query, or lists of each for several;
    captions: `query_labels` (one per query), `gallery_labels` (shaped like `matches`)."""
    single = len(matches) == 0 or isinstance(matches[0], str)
    queries, galleries, match_rows, label_rows = (None if x is None else [x] if single else list(x) for x in
                                                  (query_image, gallery_images, matches, gallery_labels))
    if not (len(queries) == len(galleries) == len(match_rows)):
        raise ValueError(f"{len(queries)} queries, {len(galleries)} gallery lists and "
                         f"{len(match_rows)} match lists: one of each per query")
    if bad := sorted({m for row in match_rows for m in row} - set(MATCH_COLOURS)):
        raise ValueError(f"matches must be 'hit', 'miss' or 'junk' ('unknown' without ids), got {bad}")
    cw, ch = _cell_size(queries, scale, normalized)
    border, gap, margin, sep, legend_h = 4, 6, 10, 22, 22
    number_h, caption_h = 18, (14 if label_rows or query_labels else 0)
    font, small = _font(14), _font(11)
    title_h = 28 if title else 0
    k = min(top_k, max((len(g) for g in galleries), default=0))
    cell_w, row_h = cw + 2 * border, number_h + ch + 2 * border + caption_h
    width = 2 * margin + cell_w + sep + k * cell_w + max(k - 1, 0) * gap
    height = 2 * margin + title_h + len(queries) * (row_h + gap) + legend_h
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((margin, margin), title, INK, font)
    frame_h = ch + 2 * border

    def framed(x: int, y: int, image: Any, fill: tuple[int, int, int], caption: str | None) -> None:
        draw.rectangle([x, y + number_h, x + cell_w - 1, y + number_h + frame_h - 1], fill=fill)
        sheet.paste(_tile(image, (cw, ch), normalized), (x + border, y + number_h + border))
        if caption is not None:
            _centred(draw, caption, x + cell_w // 2, y + number_h + frame_h + 1, small, GREY_INK)

    for q, (query, gallery, row) in enumerate(zip(queries, galleries, match_rows, strict=True)):
        y = margin + title_h + q * (row_h + gap)
        _centred(draw, "query", margin + cell_w // 2, y + 1, small, INK)
        framed(margin, y, query, (60, 60, 60), query_labels[q] if query_labels else None)
        x0 = margin + cell_w + sep
        # A thin divider between the query and its results.
        draw.line([(x0 - sep // 2, y + number_h), (x0 - sep // 2, y + number_h + frame_h)],
                  fill=(200, 200, 200), width=1)
        for r, (image, match) in enumerate(zip(gallery[:k], row[:k], strict=False)):
            x = x0 + r * (cell_w + gap)
            colour = MATCH_COLOURS[match]
            _centred(draw, str(r + 1), x + cell_w // 2, y + 1, font, colour if match == "hit" else INK)
            framed(x, y, image, colour,
                   label_rows[q][r] if label_rows is not None and r < len(label_rows[q]) else None)
    # Legend: the id states, and "unknown" only where it is used.
    x, y = margin, height - margin - legend_h + 6
    entries = [("hit", "same id, other camera"), ("miss", "other id"), ("junk", "junk")]
    if any("unknown" in row for row in match_rows):
        entries = [e for e in entries if any(e[0] in row for row in match_rows)]
        entries.append(("unknown", "no id known"))
    for name, label in entries:
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=MATCH_COLOURS[name])
        draw.text((x + 18, y), label, INK, small)
        x += 30 + _text_size(draw, label, small)[0]
    return sheet


def _centred(draw: ImageDraw.ImageDraw, text: str, cx: int, y: int, font: Any,
             fill: tuple[int, int, int]) -> None:
    w, _ = _text_size(draw, text, font)
    draw.text((cx - w // 2, y), text, fill, font)


def _nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 x 10^n) giving about `ticks` intervals over `span`."""
    raw = span / max(ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def cmc_plot(
    curves: Mapping[str, Sequence[float]],
    max_rank: int = 20,
    title: str = "CMC",
    size: tuple[int, int] = (720, 460),
    percent: bool = True,
) -> Image.Image:
    """Line chart of CMC curves (fractions, shown as percentages) over ranks 1..max_rank, with a legend."""
    if not curves:
        raise ValueError("cmc_plot needs at least one curve")
    width, height = size
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font, small, title_font = _font(13), _font(12), _font(16)
    factor = 100.0 if percent else 1.0
    values = {name: [factor * float(v) for v in curve[:max_rank]] for name, curve in curves.items()}
    ranks = max(len(v) for v in values.values())
    if ranks == 0:
        raise ValueError("cmc_plot: the curves are empty")
    # Y range: from a round value below the lowest point up to the top (100%).
    top = factor
    low = min(min(v) for v in values.values() if v)
    step = _nice_step(max(top - low, factor / 20))
    bottom = math.floor(low / step) * step
    if bottom >= low - 0.02 * step:  # a point on the bottom line would hide in the axis
        bottom -= step
    bottom = max(0.0, min(bottom, top - step))

    left, right, upper, lower = 64, width - 20, 44, height - 52
    draw.text(((width - _text_size(draw, title, title_font)[0]) // 2, 12), title, INK, title_font)

    def px(rank: float) -> float:  # 8 px inside the axes, so that no dot sits on the Y axis
        return left + 8 + (rank - 1) / max(ranks - 1, 1) * (right - left - 16)

    def py(value: float) -> float:
        return lower - (value - bottom) / (top - bottom) * (lower - upper)

    # Grid and Y ticks.
    tick = bottom
    while tick <= top + 1e-9:
        y = py(tick)
        draw.line([(left, y), (right, y)], fill=(232, 232, 232), width=1)
        label = f"{tick:g}" + ("%" if percent else "")
        tw, th = _text_size(draw, label, small)
        draw.text((left - 8 - tw, y - th // 2 - 2), label, GREY_INK, small)
        tick += step
    # X ticks: every rank up to 20, then a round step.
    x_step = 1 if ranks <= 20 else int(_nice_step(ranks, 10))
    for rank in sorted({1, *range(x_step, ranks + 1, x_step)}):
        x = px(rank)
        draw.line([(x, lower), (x, lower + 5)], fill=INK, width=1)
        _centred(draw, str(rank), int(x), lower + 8, small, GREY_INK)
    # Axes and their names.
    draw.line([(left, upper), (left, lower), (right, lower)], fill=INK, width=2)
    _centred(draw, "rank", (left + right) // 2, height - 24, font, INK)
    ylabel = "matching rate"
    tw, th = _text_size(draw, ylabel, font)
    label = Image.new("RGB", (tw + 4, th + 6), BACKGROUND)
    ImageDraw.Draw(label).text((2, 0), ylabel, INK, font)
    sheet.paste(label.rotate(90, expand=True), (6, (upper + lower) // 2 - tw // 2))

    # The curves: lines with dots (up to 25 ranks), then the legend in an empty corner.
    dot = 3 if ranks <= 25 else 0
    points = {}
    for n, (name, curve) in enumerate(values.items()):
        colour = PALETTE[n % len(PALETTE)]
        points[name] = [(px(r + 1), py(v)) for r, v in enumerate(curve)]
        if len(points[name]) > 1:
            draw.line(points[name], fill=colour, width=3, joint="curve")
        for x, y in points[name] if dot else ():
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=colour)
    entries = [f"{name} (rank-1 {curve[0]:.1f}{'%' if percent else ''})" for name, curve in values.items()]
    box_w = max(_text_size(draw, e, small)[0] for e in entries) + 44
    box_h = 20 * len(entries) + 10
    # The first corner (lower right, upper left, ...) that no curve point falls into.
    corners = [(right - box_w - 10, lower - box_h - 10), (left + 14, upper + 10),
               (right - box_w - 10, upper + 10), (left + 14, lower - box_h - 10)]
    every = [p for curve in points.values() for p in curve]
    bx, by = next((c for c in corners if not any(c[0] - 6 <= x <= c[0] + box_w + 6 and c[1] - 6 <= y
                                                 <= c[1] + box_h + 6 for x, y in every)), corners[0])
    draw.rectangle([bx, by, bx + box_w, by + box_h], fill=BACKGROUND, outline=(200, 200, 200))
    for n, entry in enumerate(entries):
        colour = PALETTE[n % len(PALETTE)]
        y = by + 8 + 20 * n
        draw.line([(bx + 8, y + 7), (bx + 30, y + 7)], fill=colour, width=3)
        draw.text((bx + 36, y), entry, INK, small)
    return sheet


# The synthetic dataset (dgnet.data.synthetic) at a glance

def _interleave(groups: Sequence[Sequence[Any]], n: int) -> list[Any]:
    """Up to n items, one of each group in turn."""
    return [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)][:n]


def _camera_round_robin(rows: Any, n: int) -> list[dict[str, Any]]:
    """Up to n factor records, one camera after another: as many cameras as a row can show."""
    by_cam = rows.sort_values(["camera_id", "frame"]).groupby("camera_id")
    return _interleave([g.to_dict("records") for _, g in by_cam], n)


def synthetic_contact_sheet(root: str | os.PathLike, num_ids: int = 8, per_id: int = 8, scale: int = 2,
                            show_extras: bool = True) -> Image.Image:
    """One row per identity of a synthetic dataset, its images across cameras: first (up to two)
    groups of identities that wear the same clothes; with `show_extras`, a last row of gallery
    distractors (0000) and junk (-1)."""
    from dgnet.data.synthetic import decode_jpeg, read_factors

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
        picked = _camera_round_robin(people[people["person_id"] == pid], per_id)
        r = picked[0]
        group = [f"same clothes: group {r['clothing_group']}"] if r["clothing_group"] > 0 else []
        lines.append(([f"id {pid:04d} ({'train' if r['split'] == 'train' else 'test'})", *group,
                       f"{r['top_texture']} top, {r['bottom_style']}", f"hair: {r['hair_length']}",
                       f"hat: {r['hat']}", f"bag: {r['bag']}",
                       f"height {r['body_height']:.2f}, width {r['body_width']:.2f}"], picked))
    extras = table[table["person_id"] <= 0]
    if show_extras and len(extras):
        mixed = _interleave([_camera_round_robin(g, per_id) for _, g in extras.groupby("person_id")], per_id)
        lines.append((["gallery extras:", "0000 = distractors", "-1 = junk crops"], mixed))

    h, w = decode_jpeg(Path(root) / table["path"].iloc[0]).shape[:2]
    label_w, gap, tw, th = 150, 6, w * scale, h * scale
    row_h = th + 16 + gap  # 16: the captions
    font, small = _font(14), _font(12)
    sheet = Image.new("RGB", (label_w + per_id * (tw + gap), 30 + len(lines) * row_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), "Synthetic re-ID dataset: one row per identity, its images across cameras (c = camera)",
              INK, font)
    for row, (text, picked) in enumerate(lines):
        y = 30 + row * row_h
        for i, line in enumerate(text):
            draw.text((6, y + 8 + 17 * i), line, INK, font if i == 0 else small)
        for c, rec in enumerate(picked):
            x = label_w + c * (tw + gap)
            sheet.paste(_tile(decode_jpeg(Path(root) / rec["path"]), (tw, th), False), (x, y))
            pid = "" if rec["person_id"] > 0 else f"{rec['file_name'].split('_')[0]} "
            caption = f"{pid}c{rec['camera_id']} {rec['viewpoint']} {rec['split']}"
            draw.text((x + 2, y + th + 1), caption, INK, small)
    return sheet


def synthetic_swap_sheet(root: str | os.PathLike, num: int = 5, scale: float = 2.0) -> Image.Image:
    """`swap_grid` of the synthetic ground truth `render_swap` on `num` train images of different
    people, viewpoints and cameras: cell (i, j) wears image i's clothing in image j's structure
    (pose, body, hair, hat, bag, background, camera)."""
    from dgnet.data.synthetic import read_factors, render, render_swap

    train = read_factors(root).query("split == 'train'")
    num_cameras = train["camera_id"].nunique()
    donors: list[dict[str, Any]] = []
    for n in range(min(num, train["person_id"].nunique())):
        # Other people, viewpoints and cameras (until all are shown): the grid shows what moves with what.
        fresh = train[~train["person_id"].isin([d["person_id"] for d in donors])]
        cameras = [d["camera_id"] for d in donors[n - n % num_cameras :]]
        rows = fresh[(fresh["viewpoint"] == ("front", "left", "back", "right")[n % 4])
                     & ~fresh["camera_id"].isin(cameras)]
        donors.append((rows if len(rows) else fresh).iloc[0].to_dict())
    images = [render(d)[0] for d in donors]
    swaps = [[render_swap(a, s)[0] for s in donors] for a in donors]
    return swap_grid(images, images, swaps, scale, title="Synthetic ground truth of swaps",
                     appearance_label="clothing from", structure_label="structure from")
