"""Dataset manifests: Market-1501, DukeMTMC-reID and MSMT17 layouts, ids, cameras, errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dgnet.data.manifest import (
    COLUMNS,
    FORMATS,
    MSMT_TEST_ID_OFFSET,
    NUM_CAMERAS,
    build_manifest,
    detect_format,
    parse_file_name,
    read_manifest,
    train_label_map,
    write_manifest,
)
from dgnet.errors import DatasetError
from tests import fixtures
from tests.fixtures import DUKE, MARKET, make_duke, make_market, make_msmt

MSMT_TRAIN, MSMT_VAL = fixtures.MSMT_TRAIN, fixtures.MSMT_VAL
MSMT_QUERY, MSMT_GALLERY = fixtures.MSMT_QUERY, fixtures.MSMT_GALLERY


@pytest.fixture(scope="module")
def market_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_market(tmp_path_factory.mktemp("market"))


@pytest.fixture(scope="module")
def msmt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_msmt(tmp_path_factory.mktemp("msmt"))


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


# --- file names ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "fmt", "expected"), [
    ("0002_c1s1_000451_03.jpg", "market1501", (2, 1)),
    ("-1_c3s2_012345_01.jpg", "market1501", (-1, 3)),
    ("0000_c6s4_002202_01.jpg", "market1501", (0, 6)),
    ("1501_c5s3_065887_02.jpg", "market1501", (1501, 5)),
    ("0001_c2_f0046182.jpg", "dukemtmc", (1, 2)),
    ("7140_c8_f0103457.jpg", "dukemtmc", (7140, 8)),
    ("0000_000_01_0303morning_0015_0.jpg", "msmt17", (0, 1)),
    # Two-digit cameras: the published code read one digit and turned camera 12 into camera 1.
    ("0123_004_12_0113noon_0871_1.jpg", "msmt17", (123, 12)),
    ("3059_017_15_0302afternoon_1501_2.jpg", "msmt17", (3059, 15)),
    ("0042_001_10_0303morning_0003_0.jpg", "msmt17", (42, 10)),
])
def test_parse_file_name(name: str, fmt: str, expected: tuple[int, int]) -> None:
    assert parse_file_name(name, fmt) == expected


@pytest.mark.parametrize(("name", "fmt"), [
    ("foo.jpg", "market1501"),
    ("0002_c1_f0046182.jpg", "market1501"),  # a Duke name in Market
    ("0002_c1s1_000451_03.png", "market1501"),
    ("0001_c2s1_000451_03.jpg", "dukemtmc"),
    ("0000_000_1_0303morning_0015_0.jpg", "msmt17"),  # one-digit camera field
    ("0000_c1_f0046182.jpg", "msmt17"),
])
def test_parse_file_name_rejects(name: str, fmt: str) -> None:
    with pytest.raises(DatasetError) as err:
        parse_file_name(name, fmt)
    assert name in str(err.value) and "pattern" in str(err.value)


def test_parse_file_name_unknown_format() -> None:
    with pytest.raises(DatasetError, match="unknown dataset format"):
        parse_file_name("0002_c1s1_000451_03.jpg", "cuhk03")


def test_constants() -> None:
    assert FORMATS == ("market1501", "dukemtmc", "msmt17")
    assert NUM_CAMERAS == {"market1501": 6, "dukemtmc": 8, "msmt17": 15}


# --- Market-1501 / Duke -------------------------------------------------------------------------

def test_market_columns_dtypes_values(market_root: Path) -> None:
    frame = build_manifest(market_root)
    assert tuple(frame.columns) == COLUMNS
    for column in ("person_id", "camera_id", "width", "height", "label"):
        assert frame[column].dtype == np.int64, column
    for column in ("path", "file_name", "split"):
        assert pd.api.types.is_string_dtype(frame[column].dtype), column
    assert frame.attrs["format"] == "market1501"
    assert frame.attrs["root"] == str(market_root.resolve())
    # Thumbs.db ignored, gt_bbox left out unless asked for.
    expected = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, folder in expected.items():
        rows = frame[frame["split"] == split]
        assert sorted(rows["file_name"]) == sorted(MARKET[folder])
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in rows["path"])
        assert all(Path(p).parent.name == folder for p in rows["path"])
    assert len(frame) == 11 and set(frame["split"]) == {"train", "query", "gallery"}
    assert (frame["width"] == 16).all() and (frame["height"] == 32).all()
    row = frame.set_index("file_name").loc["0007_c6s1_001101_01.jpg"]
    assert (row["person_id"], row["camera_id"], row["split"]) == (7, 6, "train")
    gallery = frame[frame["split"] == "gallery"]
    assert {-1, 0} <= set(gallery["person_id"])  # junk and distractor ids kept as they are


def test_market_relabel(market_root: Path) -> None:
    frame = build_manifest(market_root)
    train = frame[frame["split"] == "train"]
    assert train_label_map(frame) == {2: 0, 7: 1} == frame.attrs["label_map"]
    assert (train["label"] == train["person_id"].map({2: 0, 7: 1})).all()
    assert (frame.loc[frame["split"] != "train", "label"] == -1).all()


def test_relabel_sorted_by_person_id() -> None:
    frame = pd.DataFrame({"person_id": [30, 5, 12, 5, 99], "split": ["train"] * 4 + ["query"]})
    assert train_label_map(frame) == {5: 0, 12: 1, 30: 2}


def test_market_gt_bbox(market_root: Path) -> None:
    frame = build_manifest(market_root, include_gt_bbox=True)
    gt = frame[frame["split"] == "gt_bbox"]
    assert list(gt["file_name"]) == MARKET["gt_bbox"] and (gt["label"] == -1).all()


def test_duke(tmp_path: Path) -> None:
    frame = build_manifest(make_duke(tmp_path))
    assert frame.attrs["format"] == "dukemtmc" and tuple(frame.columns) == COLUMNS
    assert sorted(frame["file_name"]) == sorted(n for names in DUKE.values() for n in names)
    row = frame.set_index("file_name").loc["0005_c8_f0061111.jpg"]
    assert (row["person_id"], row["camera_id"], row["label"]) == (5, 8, 1)


def test_detect_format(market_root: Path, msmt_root: Path, tmp_path: Path) -> None:
    assert detect_format(market_root) == "market1501"
    assert detect_format(msmt_root) == "msmt17"
    assert detect_format(make_duke(tmp_path / "duke")) == "dukemtmc"
    assert detect_format(make_msmt(tmp_path / "v2", v2=True)) == "msmt17"
    (tmp_path / "other" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        detect_format(tmp_path / "other")
    message = str(err.value)
    assert str(tmp_path / "other") in message
    assert "bounding_box_train" in message and "list_train.txt" in message


def test_header_unreadable_gives_zero_size(market_root: Path, tmp_path: Path) -> None:
    root = _copy(market_root, tmp_path)
    bad = root / "query" / "0010_c1s1_002001_00.jpg"
    bad.write_bytes(os.urandom(300))
    frame = build_manifest(root).set_index("file_name")
    assert tuple(frame.loc[bad.name, ["width", "height"]]) == (0, 0)


# --- MSMT17 ------------------------------------------------------------------------------------

def test_msmt(msmt_root: Path) -> None:
    frame = build_manifest(msmt_root)
    assert frame.attrs["format"] == "msmt17" and tuple(frame.columns) == COLUMNS
    train = frame[frame["split"] == "train"]
    assert sorted(train["file_name"]) == sorted(Path(r).name for r in [*MSMT_TRAIN, *MSMT_VAL])
    assert sorted(set(frame["camera_id"])) == [1, 3, 5, 10, 12, 15]
    row = frame.set_index("file_name").loc["0000_001_12_0303noon_0020_0.jpg"]
    assert (row["person_id"], row["camera_id"], row["label"]) == (0, 12, 0)
    # Test ids restart at 0 in MSMT17: offset so that they never meet the train ids.
    test = frame[frame["split"].isin(["query", "gallery"])]
    assert set(test["person_id"]) == {MSMT_TEST_ID_OFFSET, MSMT_TEST_ID_OFFSET + 1}
    assert not set(test["person_id"]) & set(train["person_id"])
    original = {Path(r).name: pid for r, pid in {**MSMT_QUERY, **MSMT_GALLERY}.items()}
    assert all(original[n] == p - MSMT_TEST_ID_OFFSET for n, p in zip(test["file_name"], test["person_id"],
                                                                        strict=True))
    assert train_label_map(frame) == {0: 0, 1: 1}
    assert all(Path(p).is_file() for p in frame["path"])


def test_msmt_without_val(msmt_root: Path) -> None:
    frame = build_manifest(msmt_root, msmt_include_val=False)
    train = frame.loc[frame["split"] == "train", "file_name"]
    assert sorted(train) == sorted(Path(r).name for r in MSMT_TRAIN)


def test_msmt_v2_folders(tmp_path: Path) -> None:
    frame = build_manifest(make_msmt(tmp_path, v2=True), "msmt17")
    assert len(frame) == 9 and frame["path"].str.contains("mask_test_v2").sum() == 5


# --- errors ------------------------------------------------------------------------------------

def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        build_manifest(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.parametrize("fmt", ["market1501", None])
def test_missing_split_folder(market_root: Path, tmp_path: Path, fmt: str | None) -> None:
    root = _copy(market_root, tmp_path)
    shutil.rmtree(root / "query")
    with pytest.raises(DatasetError) as err:
        build_manifest(root, fmt)
    message = str(err.value)
    assert str(root / "query" if fmt else root) in message and "bounding_box_test" in message


def test_an_empty_split_is_left_to_validation(market_root: Path, tmp_path: Path) -> None:
    """No gallery rows, no error here: validation's split_counts rule reports it (exit 1, a report)."""
    root = _copy(market_root, tmp_path)
    for image in (root / "bounding_box_test").glob("*.jpg"):
        image.unlink()
    frame = build_manifest(root, "market1501")
    assert "gallery" not in set(frame["split"]) and {"train", "query"} <= set(frame["split"])


def test_unparsable_name(market_root: Path, tmp_path: Path) -> None:
    root = _copy(market_root, tmp_path)
    shutil.copy(root / "query" / "0010_c1s1_002001_00.jpg", root / "query" / "img_0001.jpg")
    with pytest.raises(DatasetError) as err:
        build_manifest(root)
    assert str(root / "query" / "img_0001.jpg") in str(err.value) and "pattern" in str(err.value)


def test_unknown_format(market_root: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset format"):
        build_manifest(market_root, "viper")


def test_msmt_missing_file(msmt_root: Path, tmp_path: Path) -> None:
    root = _copy(msmt_root, tmp_path)
    gone = "0001/0001_001_10_0302noon_0404_0.jpg"
    (root / "test" / gone).unlink()
    with pytest.raises(DatasetError) as err:
        build_manifest(root)
    message = str(err.value)
    line = list(MSMT_GALLERY).index(gone) + 1
    assert str(root / "list_gallery.txt") in message and f"line {line}" in message
    assert str(root / "test" / gone) in message


@pytest.mark.parametrize("bad_line", ["0000/0000_000_01_0303morning_0015_0.jpg",
                                      "0000/0000_000_01_0303morning_0015_0.jpg zero",
                                      "a b c"])
def test_msmt_malformed_line(msmt_root: Path, tmp_path: Path, bad_line: str) -> None:
    root = _copy(msmt_root, tmp_path)
    lines = (root / "list_train.txt").read_text().splitlines()
    lines.insert(1, bad_line)
    (root / "list_train.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        build_manifest(root)
    message = str(err.value)
    assert str(root / "list_train.txt") in message and "line 2" in message and "malformed" in message


def test_msmt_label_disagrees_with_name(msmt_root: Path, tmp_path: Path) -> None:
    root = _copy(msmt_root, tmp_path)
    text = (root / "list_query.txt").read_text()
    text = text.replace("0302morning_0101_0.jpg 0", "0302morning_0101_0.jpg 7")
    (root / "list_query.txt").write_text(text)
    with pytest.raises(DatasetError) as err:
        build_manifest(root)
    assert str(root / "list_query.txt") in str(err.value) and "line 1" in str(err.value)


def test_msmt_missing_list_or_folder(msmt_root: Path, tmp_path: Path) -> None:
    root = _copy(msmt_root, tmp_path)
    (root / "list_gallery.txt").unlink()
    with pytest.raises(DatasetError) as err:
        build_manifest(root, "msmt17")
    assert str(root / "list_gallery.txt") in str(err.value)
    shutil.rmtree(root / "test")
    with pytest.raises(DatasetError) as err:
        build_manifest(root, "msmt17")
    assert str(root / "test") in str(err.value) and "mask_test_v2" in str(err.value)


def test_manifest_paths_survive_moving_the_checkout(market_root: Path, tmp_path: Path) -> None:
    # Images under the manifest's folder are stored relative to it; others stay absolute.
    checkout = tmp_path / "checkout"
    shutil.copytree(market_root, checkout / "data" / "market")
    frame = build_manifest(checkout / "data" / "market")
    manifest = write_manifest(frame, checkout / "data" / "manifest.csv")
    stored = pd.read_csv(manifest)["path"]
    assert not any(os.path.isabs(p) for p in stored) and stored.iloc[0].startswith("market/")
    moved = tmp_path / "moved"
    checkout.rename(moved)
    again = read_manifest(moved / "data" / "manifest.csv", "how")
    assert all(Path(p).is_file() and Path(p).is_relative_to(moved) for p in again["path"])
    assert again.drop(columns="path").equals(frame.drop(columns="path"))
    elsewhere = write_manifest(build_manifest(moved / "data" / "market"), tmp_path / "lists" / "m.csv")
    assert all(os.path.isabs(p) for p in pd.read_csv(elsewhere)["path"])
