"""Market-1501, DukeMTMC-reID and MSMT17 parsed into one manifest DataFrame, one row per image, columns
`COLUMNS`: person_id as the file name gives it (Market/Duke: -1 junk, 0 distractor; MSMT17 test ids
shifted by `MSMT_TEST_ID_OFFSET`), width and height from the header (0 when unreadable: rule
images_decode reports it), label the train ids numbered 0..C-1 (-1 elsewhere). frame.attrs: format,
root, label_map."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dgnet.errors import DataRuleError, DatasetError
from dgnet.io import atomic_path

FORMATS = ("market1501", "dukemtmc", "msmt17")
NUM_CAMERAS = {"market1501": 6, "dukemtmc": 8, "msmt17": 15}
COLUMNS = ("path", "file_name", "person_id", "camera_id", "split", "width", "height", "label")
INT_COLUMNS = ("person_id", "camera_id", "width", "height", "label")
STR_COLUMNS = ("path", "file_name", "split")
SPLITS = ("train", "query", "gallery")
MAX_LISTED = 5  # offending items named in an error message

# MSMT17 numbers its test identities 0..3059 independently of its train identities 0..1040.
# Test ids are shifted by this offset so that the two sets stay disjoint; the original test id
# is person_id - MSMT_TEST_ID_OFFSET on query/gallery rows (file_name keeps it as written).
MSMT_TEST_ID_OFFSET = 100_000

# Camera fields are matched as whole numbers, never as one digit: MSMT17 has cameras 10..15.
# Range checks (camera 1..NUM_CAMERAS) belong to validation, not to parsing.
PATTERNS = {
    # 0002_c1s1_000451_03.jpg, -1_c3s2_012345_01.jpg (junk), 0000_c1s1_000151_01.jpg (distractor)
    "market1501": re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)s\d+_\d+_\d+\.jpg$", re.IGNORECASE),
    # 0001_c2_f0046182.jpg
    "dukemtmc": re.compile(r"^(?P<pid>-1|\d+)_c(?P<cam>\d+)_f\d+\.jpg$", re.IGNORECASE),
    # 0000_000_01_0303morning_0015_0.jpg: id, index, two-digit camera, date+time of day, frame, n
    "msmt17": re.compile(r"^(?P<pid>\d+)_\d+_(?P<cam>\d{2})_\d+[a-z]+_\d+_\d+\.jpg$", re.IGNORECASE),
}
PATTERN_EXAMPLES = {
    "market1501": "PPPP_cCsS_FFFFFF_BB.jpg, e.g. 0002_c1s1_000451_03.jpg (PPPP may be -1)",
    "dukemtmc": "PPPP_cC_fFFFFFFF.jpg, e.g. 0001_c2_f0046182.jpg",
    "msmt17": "PPPP_NNN_CC_DDDDtime_FFFF_N.jpg, e.g. 0000_000_01_0303morning_0015_0.jpg",
}

_MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MSMT_DIRS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}
_MSMT_LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
               "gallery": "list_gallery.txt"}
_MARKET_LAYOUT = "bounding_box_train/, bounding_box_test/, query/ (Market: optional gt_bbox/)"
_MSMT_LAYOUT = (
    "train/ and test/ (or mask_train_v2/ and mask_test_v2/) beside list_train.txt, list_val.txt, "
    "list_query.txt, list_gallery.txt"
)
_LAYOUTS = (
    f"market1501: {_MARKET_LAYOUT} with names like 0002_c1s1_000451_03.jpg; "
    "dukemtmc: the same folders with names like 0001_c2_f0046182.jpg; "
    f"msmt17: {_MSMT_LAYOUT}"
)


def listed(items: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """The first `limit` items, comma-separated, and how many more there are."""
    more = f", ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(map(str, items[:limit])) + more


def check_format(fmt: str | None) -> str:
    """`fmt`, or DatasetError when it is not one of FORMATS."""
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def parse_file_name(name: str, fmt: str, where: str | os.PathLike | None = None) -> tuple[int, int]:
    """(person_id, camera_id) from an image file name of format `fmt`; `where` (the full path, a
    list line) names the file in the error."""
    match = PATTERNS[check_format(fmt)].match(name)
    if match is None:
        raise DatasetError(f"{where or name}: file name does not follow the {fmt} pattern "
                           f"{PATTERN_EXAMPLES[fmt]}")
    return int(match["pid"]), int(match["cam"])


def _jpg_names(folder: Path) -> list[str]:
    """Sorted .jpg file names in `folder`; other files (Thumbs.db, README) are ignored."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.name.lower().endswith(".jpg") and e.is_file())
    except OSError as exc:  # a symlink loop
        raise DatasetError(f"{exc.filename or folder}: cannot be read ({exc.strerror or exc})") from exc


def detect_format(root: str | os.PathLike) -> str:
    """Guess the dataset format from the folders and files under `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    if (root / _MSMT_LISTS["train"]).is_file() and any((root / d).is_dir() for d in _MSMT_DIRS["train"]):
        return "msmt17"
    if all((root / d).is_dir() for d in _MARKET_DIRS.values()):
        # Market and Duke share the folder layout: the file names tell them apart.
        for split in ("train", "gallery", "query"):
            folder = root / _MARKET_DIRS[split]
            for name in _jpg_names(folder)[:1]:
                for fmt in ("market1501", "dukemtmc"):
                    if PATTERNS[fmt].match(name):
                        return fmt
                raise DatasetError(f"{folder / name}: cannot tell the dataset format from this file name; "
                                   f"expected {PATTERN_EXAMPLES['market1501']} or "
                                   f"{PATTERN_EXAMPLES['dukemtmc']}")
        raise DatasetError(f"{root}: the split folders hold no .jpg images; expected layouts: {_LAYOUTS}")
    present = sorted(p.name for p in root.iterdir())[:20]
    raise DatasetError(f"{root}: no known dataset layout found (present: {', '.join(present) or 'nothing'}); "
                       f"expected one of: {_LAYOUTS}")


def _read_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header (PIL decodes no pixels); (0, 0) if unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # any unreadable header: reported later by the "images decode" rule
        return 0, 0


def _market_like_rows(root: Path, fmt: str, include_gt_bbox: bool) -> list[tuple]:
    if include_gt_bbox and fmt != "market1501":
        raise DatasetError(f"{root}: gt_bbox exists only in market1501, not in {fmt}")
    folders = {**_MARKET_DIRS, **({"gt_bbox": "gt_bbox"} if include_gt_bbox else {})}
    rows, offending = [], []  # an empty split is reported by validation's split_counts rule
    for split, folder_name in folders.items():
        folder = root / folder_name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {split} folder missing; a {fmt} root holds {_MARKET_LAYOUT}")
        for name in _jpg_names(folder):
            match = PATTERNS[fmt].match(name)
            if match is None:
                offending.append(str(folder / name))
            else:
                rows.append((str(folder / name), name, int(match["pid"]), int(match["cam"]), split))
    if offending:  # every split's bad names in one report
        raise DataRuleError(f"rule file_names_follow_pattern: {len(offending)} file name(s) do not follow "
                            f"the {fmt} pattern {PATTERN_EXAMPLES[fmt]}: {listed(offending, 10)}")
    return rows


def _msmt_list_rows(root: Path, list_name: str, image_dir: Path, existing: set[str], split: str,
                    id_offset: int) -> list[tuple]:
    list_path = root / list_name
    if not list_path.is_file():
        raise DatasetError(f"{list_path}: MSMT17 list file missing; expected layout: {_MSMT_LAYOUT}")
    rows = []  # an empty list is reported by validation's split_counts rule
    with open(list_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(f"{list_path}, line {line_no}: malformed line {line.strip()!r}; expected "
                                   "'<id folder>/<file name>.jpg <person id>', "
                                   "e.g. '0000/0000_000_01_0303morning_0015_0.jpg 0'")
            rel, label = fields[0], int(fields[1])
            name = rel.rsplit("/", 1)[-1]
            where = f"{list_path}, line {line_no}: {image_dir / rel}"
            if rel not in existing:
                raise DatasetError(f"{where}: listed image does not exist")
            pid, cam = parse_file_name(name, "msmt17", where)
            if pid != label:
                raise DatasetError(f"{where}: the listed person id {label} differs from the id {pid} "
                                   "in the file name")
            rows.append((str(image_dir / rel), name, pid + id_offset, cam, split))
    return rows


def _msmt_rows(root: Path, include_val: bool) -> list[tuple]:
    dirs, existing = {}, {}  # existing: the relative paths under each folder, one walk, not a stat per line
    for kind, names in _MSMT_DIRS.items():
        folder = dirs[kind] = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            raise DatasetError(f"{root / names[0]}: MSMT17 {kind} folder missing (also looked for "
                               f"{names[1]}/); expected layout: {_MSMT_LAYOUT}")
        existing[kind] = {os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/")
                          for dirpath, _, files in os.walk(folder) for f in files}
    # list_val holds further images of the train identities (same id space as list_train).
    lists = [("train", "train", 0), *([("val", "train", 0)] if include_val else []),
             ("query", "query", MSMT_TEST_ID_OFFSET), ("gallery", "gallery", MSMT_TEST_ID_OFFSET)]
    rows = []
    for key, split, offset in lists:
        kind = "train" if split == "train" else "test"
        rows += _msmt_list_rows(root, _MSMT_LISTS[key], dirs[kind], existing[kind], split, offset)
    return rows


def build_manifest(root: str | os.PathLike, fmt: str | None = None, *, include_gt_bbox: bool = False,
                   msmt_include_val: bool = True) -> pd.DataFrame:
    """The manifest of the dataset at `root` (`fmt` detected when None). `include_gt_bbox` adds Market's
    hand-drawn boxes as split "gt_bbox" (outside the train/query/gallery protocol); `msmt_include_val`
    adds MSMT17's list_val.txt to the training split (the usual protocol)."""
    try:
        root = Path(root).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError on a symlink loop
        raise DatasetError(f"{root}: dataset root cannot be resolved ({exc})") from exc
    if not root.is_dir():
        raise DatasetError(
            f"{root}: dataset root does not exist or is not a folder; expected one of: {_LAYOUTS}")
    fmt = check_format(detect_format(root) if fmt is None else fmt)
    rows = (_msmt_rows(root, msmt_include_val) if fmt == "msmt17"
            else _market_like_rows(root, fmt, include_gt_bbox))
    frame = pd.DataFrame(rows, columns=list(COLUMNS[:5])).astype(
        {**dict.fromkeys(STR_COLUMNS, str), "person_id": "int64", "camera_id": "int64"})
    sizes = np.array([_read_size(p) for p in frame["path"]], dtype=np.int64).reshape(-1, 2)
    frame["width"], frame["height"] = sizes[:, 0], sizes[:, 1]
    label_map = train_label_map(frame)
    frame["label"] = frame["person_id"].map(label_map).where(frame["split"] == "train", -1).astype("int64")
    frame.attrs.update(format=fmt, root=str(root), label_map=label_map)
    return frame


def train_label_map(frame: pd.DataFrame) -> dict[int, int]:
    """{person_id: label}: the train split's ids numbered 0..C-1 in sorted person_id order."""
    ids = np.unique(frame.loc[frame["split"] == "train", "person_id"].to_numpy())
    return {int(pid): label for label, pid in enumerate(ids)}


TRAIN_DATA_KEY = "train_data"  # the `train_fingerprint` of a model file's training data, in its extra


def train_fingerprint(frame: pd.DataFrame) -> str:
    """The SHA-256 of the train split's sorted (file name, person id) pairs: which data a model learnt
    from (model files keep it, so a teacher of other data is not taken for this data's)."""
    train = frame[frame["split"] == "train"]
    pairs = sorted(zip(train["file_name"].astype(str), train["person_id"].astype(int), strict=True))
    return hashlib.sha256("".join(f"{name}\t{pid}\n" for name, pid in pairs).encode()).hexdigest()


def mislabelled_train_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The train rows whose `label` is not their id's number in `train_label_map` (empty when all are)."""
    train = frame[frame["split"] == "train"]
    expected = train["person_id"].map(train_label_map(frame)).to_numpy()
    return train[train["label"].to_numpy() != expected]


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `frame` as a manifest CSV, atomically, images inside its folder as paths relative to it
    (so the file and DVC's hash survive moving or cloning the checkout), others absolute."""
    path = Path(path)
    base = path.parent.resolve()
    images = [Path(p).resolve() for p in frame["path"]]
    stored = [p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p) for p in images]
    with atomic_path(path) as tmp:
        frame.assign(path=stored).to_csv(tmp, index=False)
    return path


def read_manifest(path: str | os.PathLike, how_to_make: str) -> pd.DataFrame:
    """A manifest CSV, ids and sizes int64, image paths absolute (relative ones against its folder);
    DatasetError naming the file and `how_to_make` it when it is missing, unreadable or lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} does not exist; {how_to_make}")
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(INT_COLUMNS, "int64"))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"manifest {path} cannot be read ({str(exc)[:300]}); {how_to_make}") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetError(f"manifest {path}: missing column(s) {missing}; {how_to_make}")
    base = path.parent.resolve()
    frame["path"] = [p if os.path.isabs(p) else str(base / p) for p in frame["path"].astype(str)]
    return frame
