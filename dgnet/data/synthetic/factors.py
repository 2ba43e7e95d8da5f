"""The factors of the synthetic dataset: vocabularies, field groups, reading a factor record, and
sampling a whole dataset's records from one seed."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dgnet.errors import ConfigError, DatasetError

H, W = 128, 64  # Market-1501's native crop size (height x width)
BG_W = 128  # scenes are twice as wide as a crop; an image shows the W columns from `bg_offset` on

SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
DISTRACTOR_ID = 0
JUNK_ID = -1

# The values of the categorical factors (viewpoint left / right: side views facing that way).
CHOICES: dict[str, tuple[str, ...]] = {
    "viewpoint": ("front", "back", "left", "right"), "top_texture": ("plain", "stripes", "checks", "logo"),
    "sleeves": ("long", "short"), "bottom_style": ("trousers", "shorts"), "hair_length": ("short", "long"),
    "hat": ("none", "cap", "beanie"), "bag": ("none", "backpack", "shoulder", "handbag"),
    "scene": ("street", "plaza", "corridor", "park", "station", "shops"),
}
_CHOICE_P = {"viewpoint": (0.35, 0.35, 0.15, 0.15), "top_texture": (0.4, 0.2, 0.2, 0.2),  # how often each
             "sleeves": (0.6, 0.4), "bottom_style": (0.75, 0.25), "hair_length": (0.6, 0.4),  # value is drawn
             "hat": (0.55, 0.25, 0.2), "bag": (0.35, 0.25, 0.2, 0.2)}

# The clothing: what DG-Net's appearance code carries and what a swap takes from image i.
APPEARANCE_FIELDS: tuple[str, ...] = (
    "top_color", "top_texture", "top_color2", "sleeves", "bottom_color", "bottom_style", "shoe_color")
# Fixed per identity: the fine-grained cues that separate people in the same clothes.
# body_height: standing height as a fraction of 112 px; body_width: breadth factor (~0.85-1.2).
IDENTITY_STRUCTURE_FIELDS: tuple[str, ...] = (
    "body_height", "body_width", "skin_color", "hair_color", "hair_length", "hat", "hat_color", "bag",
    "bag_color")
# Drawn per image. pose_phase: radians of the gait cycle; dx, dy: shift in pixels of the feet
# from the bottom centre; scale: size factor; bg_offset: first scene column shown (pixels);
# noise_seed: seeds the sensor noise, so that it is reproducible too.
IMAGE_FIELDS: tuple[str, ...] = ("viewpoint", "pose_phase", "dx", "dy", "scale", "bg_offset", "noise_seed")
# Fixed per camera. scene_seed: the scene's own random layout; light_r/g/b: white-balance gains;
# saturation (1 = unchanged); blur: Gaussian sigma in pixels; noise_sigma: in grey levels.
CAMERA_FIELDS: tuple[str, ...] = (
    "scene", "scene_seed", "light_r", "light_g", "light_b", "brightness", "saturation", "blur", "noise_sigma")
# Everything but the clothing: what the structure code carries and a swap takes from image j.
STRUCTURE_FIELDS: tuple[str, ...] = IDENTITY_STRUCTURE_FIELDS + IMAGE_FIELDS + CAMERA_FIELDS
# Bookkeeping, never read by `render`. clothing_group > 0 names a group of identities that
# share all APPEARANCE_FIELDS; 0 means the identity's clothes are its own.
META_FIELDS: tuple[str, ...] = (
    "file_name", "path", "split", "person_id", "camera_id", "frame", "k", "clothing_group")
COLUMNS: tuple[str, ...] = META_FIELDS + APPEARANCE_FIELDS + STRUCTURE_FIELDS

# Base colours; each draw jitters them a little so that two "red" tops are rarely identical.
CLOTHING_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32), "white": (232, 232, 226), "grey": (128, 128, 130), "navy": (32, 42, 92),
    "red": (192, 32, 38), "blue": (40, 92, 192), "sky": (120, 172, 222), "green": (40, 130, 62),
    "olive": (112, 112, 50), "yellow": (232, 200, 40), "orange": (232, 122, 32), "pink": (232, 142, 172),
    "purple": (112, 52, 142), "brown": (112, 72, 42), "beige": (212, 192, 152), "teal": (30, 142, 142),
    "maroon": (112, 26, 42),
}
BOTTOM_COLORS = ("black", "navy", "blue", "grey", "beige", "brown", "olive", "white", "red", "sky")
SHOE_COLORS = ("black", "white", "grey", "brown", "red", "blue", "navy")
BAG_COLORS = ("black", "grey", "brown", "navy", "red", "beige", "olive", "blue", "pink")
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "black": (22, 20, 20), "dark_brown": (62, 40, 26), "brown": (112, 72, 40), "blonde": (212, 176, 102),
    "grey": (166, 164, 160), "auburn": (142, 60, 30),
}
SKIN_COLORS = ((246, 208, 178), (226, 178, 140), (196, 144, 104), (150, 102, 70), (102, 68, 48))


# Reading a factor record: DatasetError on a bad one.
def get_field(f: Mapping[str, Any], name: str) -> Any:
    try:
        return f[name]
    except KeyError:
        raise DatasetError(f"factor record lacks the field {name!r} (see synthetic.COLUMNS)") from None


def get_choice(f: Mapping[str, Any], name: str) -> str:
    value = str(get_field(f, name))
    if value not in CHOICES[name]:
        raise DatasetError(f"factor {name}={value!r} is not one of {', '.join(CHOICES[name])}")
    return value


def get_number(f: Mapping[str, Any], name: str) -> float:
    try:
        return float(get_field(f, name))
    except (TypeError, ValueError):
        raise DatasetError(f"factor {name}={f[name]!r} must be a number") from None


def get_color(f: Mapping[str, Any], name: str) -> np.ndarray:
    value = get_field(f, name)
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", str(value)):
        raise DatasetError(f"factor {name}={value!r}: a colour must be written '#rrggbb'")
    return np.array(list(bytes.fromhex(str(value)[1:])), dtype=np.float32)


def swap_factors(appearance_from: Mapping[str, Any], structure_from: Mapping[str, Any]) -> dict[str, Any]:
    """The factor record of 'the clothing of appearance_from, everything else of structure_from'."""
    out = {k: get_field(structure_from, k) for k in STRUCTURE_FIELDS}
    out.update({k: get_field(appearance_from, k) for k in APPEARANCE_FIELDS})
    return out


def market_name(person_id: int, camera_id: int, frame: int, k: int = 1) -> str:
    """Market-1501 file name: `0007_c3s1_000451_01.jpg`; junk (-1) is written `-1_c3s1_...`."""
    pid = "-1" if person_id == JUNK_ID else f"{person_id:04d}"
    return f"{pid}_c{camera_id}s1_{frame:06d}_{k:02d}.jpg"


# Sampling: one numpy Generator, the order of its draws is the dataset (do not reorder them).
def _hex(rgb: Sequence[float]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(np.clip(round(c), 0, 255)) for c in rgb))


def _r4(x: float) -> float:
    # Factors are rounded to 4 decimals so factors.csv stays readable and parses back exactly.
    return round(float(x), 4)


def _pick(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    return items[int(rng.choice(len(items), p=p))]


def _cloth_color(rng: np.random.Generator, names: Sequence[str], spread: float = 14) -> str:
    return _hex(np.array(CLOTHING_COLORS[_pick(rng, names)]) + rng.uniform(-spread, spread, 3))


def _choose(rng: np.random.Generator, name: str) -> str:
    return _pick(rng, CHOICES[name], _CHOICE_P[name])


def _sample_clothing(rng: np.random.Generator) -> dict[str, Any]:
    names = list(CLOTHING_COLORS)
    top = _pick(rng, names)
    # The pattern's second colour must stand out from the first, or the texture is invisible.
    contrast = [n for n in names if np.abs(np.subtract(CLOTHING_COLORS[n], CLOTHING_COLORS[top])).sum() > 200]
    return {"top_color": _cloth_color(rng, [top]), "top_texture": _choose(rng, "top_texture"),
            "top_color2": _cloth_color(rng, contrast), "sleeves": _choose(rng, "sleeves"),
            "bottom_color": _cloth_color(rng, BOTTOM_COLORS), "bottom_style": _choose(rng, "bottom_style"),
            "shoe_color": _cloth_color(rng, SHOE_COLORS, 10)}


def _sample_body(rng: np.random.Generator) -> dict[str, Any]:
    return {"body_height": _r4(rng.uniform(0.86, 1.0)), "body_width": _r4(rng.uniform(0.85, 1.2)),
            "skin_color": _hex(_pick(rng, SKIN_COLORS)),
            "hair_color": _hex(HAIR_COLORS[_pick(rng, list(HAIR_COLORS))]),
            "hair_length": _choose(rng, "hair_length"), "hat": _choose(rng, "hat"),
            "hat_color": _cloth_color(rng, list(CLOTHING_COLORS)), "bag": _choose(rng, "bag"),
            "bag_color": _cloth_color(rng, BAG_COLORS)}


def _sample_person(rng: np.random.Generator) -> dict[str, Any]:
    return {**_sample_clothing(rng), **_sample_body(rng)}


def _sample_camera(rng: np.random.Generator, scene: str) -> dict[str, Any]:
    warmth = rng.uniform(-1.0, 1.0)  # white balance: warm (reddish) to cold (bluish)
    return {"scene": scene, "scene_seed": int(rng.integers(2**31)),
            "light_r": _r4(1.0 + 0.14 * warmth + rng.uniform(-0.03, 0.03)),
            "light_g": _r4(1.0 + rng.uniform(-0.05, 0.05)),
            "light_b": _r4(1.0 - 0.14 * warmth + rng.uniform(-0.03, 0.03)),
            "brightness": _r4(rng.uniform(0.78, 1.12)), "saturation": _r4(rng.uniform(0.7, 1.1)),
            "blur": _r4(rng.uniform(0.0, 0.9)), "noise_sigma": _r4(rng.uniform(1.5, 6.0))}


_CUES = ("hair_color", "hair_length", "hat", "bag")  # what tells apart people in the same clothes


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
        people[pid], group_of[pid] = _sample_person(rng), 0
    return people, group_of


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r}: must be an integer from {low} to {high}")
    return int(value)


def sample_factors(*, seed: int = 0, num_ids: int = 120, num_cameras: int = 6,
                   shared_clothing_fraction: float = 0.3, num_distractors: int | None = None,
                   num_junk: int | None = None) -> pd.DataFrame:
    """The factors table of a dataset (no rendering): one row per image, columns COLUMNS. Ids
    1..num_ids//2 are train, the rest test; each is seen by 2-4 cameras, a train id 2-5 times per
    camera, a test id once as a query and 1-3 times in the gallery. Distractors (id 0) default to
    num_ids//3, junk (id -1) to num_ids//6 (at least 2 each)."""
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    num_ids = _check_int("num_ids", num_ids, 4, 9999)
    num_cameras = _check_int("num_cameras", num_cameras, 2, 99)
    if not isinstance(shared_clothing_fraction, int | float) or not 0 <= shared_clothing_fraction <= 1:
        raise ConfigError(f"shared_clothing_fraction={shared_clothing_fraction!r}: must be between 0 and 1")
    num_distractors = _check_int(
        "num_distractors", max(2, num_ids // 3) if num_distractors is None else num_distractors, 0, 100_000)
    num_junk = _check_int("num_junk", max(2, num_ids // 6) if num_junk is None else num_junk, 0, 100_000)

    rng = np.random.default_rng(seed)
    kinds = [CHOICES["scene"][i] for i in rng.permutation(len(CHOICES["scene"]))]
    cameras = {c: _sample_camera(rng, kinds[(c - 1) % len(kinds)]) for c in range(1, num_cameras + 1)}
    n_train = num_ids // 2
    train_ids, test_ids = list(range(1, n_train + 1)), list(range(n_train + 1, num_ids + 1))
    people, group_of = _sample_people(rng, train_ids, shared_clothing_fraction, 1)
    test_people, test_groups = _sample_people(
        rng, test_ids, shared_clothing_fraction, max(group_of.values(), default=0) + 1)
    people.update(test_people)
    group_of.update(test_groups)
    next_frame = {c: int(rng.integers(50, 500)) for c in cameras}
    rows: list[dict[str, Any]] = []

    def track(pid: int, person: dict[str, Any], group: int, cam: int, splits: Sequence[str]) -> None:
        """A person walking through one camera's view: consecutive frames, a steady direction."""
        view0 = _choose(rng, "viewpoint")
        phase0, offset0 = rng.uniform(0, 2 * math.pi), rng.uniform(8, BG_W - W - 8)
        frame0 = frame = next_frame[cam] + int(rng.integers(5, 60))
        for split in splits:
            frame += int(rng.integers(3, 13))
            view = view0 if rng.random() > 0.2 else _pick(rng, CHOICES["viewpoint"])  # now and then, a turn
            image = {"viewpoint": view, "pose_phase": _r4((phase0 + 0.21 * (frame - frame0)) % (2 * math.pi)),
                     "dx": _r4(rng.uniform(-3.5, 3.5)), "dy": _r4(rng.uniform(-2.5, 2.5)),
                     "scale": _r4(rng.uniform(0.93, 1.05)),
                     "bg_offset": int(np.clip(round(offset0 + rng.uniform(-6, 6)), 0, BG_W - W)),
                     "noise_seed": int(rng.integers(2**31))}  # pose_phase: a ~30-frame gait
            name = market_name(pid, cam, frame)
            meta = {"file_name": name, "path": f"{SPLIT_DIRS[split]}/{name}", "split": split,
                    "person_id": pid, "camera_id": cam, "frame": frame, "k": 1, "clothing_group": group}
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
        track(DISTRACTOR_ID, _sample_person(rng), 0, int(rng.integers(1, num_cameras + 1)), ["gallery"])
    for _ in range(num_junk):  # bad detections, id -1: cut off, too close, or too far
        track(JUNK_ID, _sample_person(rng), 0, int(rng.integers(1, num_cameras + 1)), ["gallery"])
        mode, row = _pick(rng, ("cut", "close", "far")), rows[-1]
        if mode == "cut":
            row["dx"] = _r4(rng.choice([-1, 1]) * rng.uniform(22, 32))
        elif mode == "close":
            row["scale"], row["dy"] = _r4(rng.uniform(1.5, 2.1)), _r4(rng.uniform(30, 80))
        else:
            row["scale"], row["dy"] = _r4(rng.uniform(0.42, 0.55)), _r4(rng.uniform(-30, -12))

    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {"train": 0, "query": 1, "gallery": 2}
    table = table.sort_values(["split", "file_name"], key=lambda s: s.map(order) if s.name == "split" else s)
    return table.reset_index(drop=True)
