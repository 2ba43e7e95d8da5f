"""Tiny dataset trees in the Market-1501, DukeMTMC-reID and MSMT17 layouts, for tests.

Images are 16x32 JPEGs (width x height) with a colour derived from the file name, so every file
differs and decodes. Each tree passes every validation rule unless a test breaks it on purpose.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

SIZE = (16, 32)  # width, height: the smallest plausible person crop is 8 x 16

# Market: split folder -> file names. Train ids 0002, 0007; test ids 0010, 0011; gallery also
# holds a distractor (0000) and a junk box (-1); 0010 also has a same-camera gallery image.
MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                           "0007_c3s2_001001_02.jpg", "0007_c6s1_001101_01.jpg"],
    "query": ["0010_c1s1_002001_00.jpg", "0011_c2s1_002101_00.jpg"],
    "bounding_box_test": ["0010_c1s1_002051_01.jpg", "0010_c3s1_002201_01.jpg",
                          "0011_c4s1_002301_02.jpg", "0000_c1s1_000151_01.jpg",
                          "-1_c2s1_000201_03.jpg"],
    "gt_bbox": ["0010_c1s1_002001_00.jpg"],
}
DUKE = {
    "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051231.jpg", "0005_c8_f0061111.jpg"],
    "query": ["0010_c1_f0012345.jpg"],
    "bounding_box_test": ["0010_c3_f0023456.jpg", "0010_c7_f0034567.jpg", "0012_c6_f0045678.jpg"],
}
# MSMT17: relative path under train/ or test/ -> person id. Test ids 0 and 1 reuse the train
# numbers on purpose (MSMT numbers them independently); cameras 12 and 15 need two digits.
MSMT_TRAIN = {"0000/0000_000_01_0303morning_0015_0.jpg": 0, "0000/0000_001_12_0303noon_0020_0.jpg": 0,
              "0001/0001_000_05_0113afternoon_0031_1.jpg": 1}
MSMT_VAL = {"0001/0001_001_15_0113morning_0042_0.jpg": 1}
MSMT_QUERY = {"0000/0000_000_12_0302morning_0101_0.jpg": 0, "0001/0001_000_03_0302noon_0202_1.jpg": 1}
MSMT_GALLERY = {"0000/0000_001_15_0302noon_0303_0.jpg": 0, "0001/0001_001_10_0302noon_0404_0.jpg": 1,
                "0000/0000_002_12_0302noon_0505_0.jpg": 0}


def write_jpeg(path: str | Path, size: tuple[int, int] = SIZE) -> Path:
    """Write a small solid-colour JPEG (colour from the file name) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5(path.name.encode()).digest()
    Image.new("RGB", size, tuple(digest[:3])).save(path, "JPEG", quality=90)
    return path


def truncate(path: str | Path) -> None:
    """Cut a JPEG inside its scan data: the header (and so the size) still reads, decoding fails."""
    path = Path(path)
    data = path.read_bytes()
    sos = data.find(b"\xff\xda")  # start-of-scan marker, then a 2-byte segment length
    assert sos > 0, f"{path}: not a baseline JPEG"
    scan = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    path.write_bytes(data[: scan + (len(data) - 2 - scan) // 2])


def make_market(root: str | Path, spec: dict[str, list[str]] | None = None, *, gt_bbox: bool = True) -> Path:
    """A Market-1501 tree (or Duke's, with `spec=DUKE`) with a Thumbs.db to be ignored."""
    root = Path(root)
    for folder, names in (spec or MARKET).items():
        if folder == "gt_bbox" and not gt_bbox:
            continue
        for name in names:
            write_jpeg(root / folder / name)
        (root / folder / "Thumbs.db").write_bytes(b"\x00not an image")
    return root


def make_duke(root: str | Path) -> Path:
    """A DukeMTMC-reID tree."""
    return make_market(root, DUKE)


def _write_list(path: Path, entries: dict[str, int]) -> None:
    path.write_text("".join(f"{rel} {pid}\n" for rel, pid in entries.items()))


def make_msmt(root: str | Path, *, v2: bool = False) -> Path:
    """An MSMT17 tree (V1 folder names, or V2's mask_train_v2 / mask_test_v2) with its four lists."""
    root = Path(root)
    train, test = ("mask_train_v2", "mask_test_v2") if v2 else ("train", "test")
    for rel in [*MSMT_TRAIN, *MSMT_VAL]:
        write_jpeg(root / train / rel)
    for rel in [*MSMT_QUERY, *MSMT_GALLERY]:
        write_jpeg(root / test / rel)
    _write_list(root / "list_train.txt", MSMT_TRAIN)
    _write_list(root / "list_val.txt", MSMT_VAL)
    _write_list(root / "list_query.txt", MSMT_QUERY)
    _write_list(root / "list_gallery.txt", MSMT_GALLERY)
    return root


def publish_manifest(data_root: str | Path, workspace: str | Path):
    """Validate the dataset at `data_root` (pandas engine) and publish it as the validate stage does:
    workspace/data/manifest.csv, with its record in workspace/reports/validation.json. Returns the
    manifest frame."""
    from dgnet.data.validated import validate_dataset

    workspace = Path(workspace)
    return validate_dataset(data_root, report=workspace / "reports" / "validation.json",
                            manifest=workspace / "data" / "manifest.csv")
