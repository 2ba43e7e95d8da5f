"""The validation split carved from the training identities, and the guard against test images."""

from __future__ import annotations

import pandas as pd
import pytest

from dgnet.data.manifest import COLUMNS, mislabelled_train_rows
from dgnet.data.splits import (
    SPLIT_ATTR,
    benchmark_rows,
    check_no_test_images,
    queryable_ids,
    validation_split,
)
from dgnet.errors import ConfigError, DataRuleError


def manifest(train_ids: int = 20, test_ids: int = 4) -> pd.DataFrame:
    """A Market-like manifest (no files: the split only reads the columns). Train id p is seen by
    2 + p % 3 cameras, 1 + (p + c) % 3 images each; every 5th id has one camera only, every 7th
    has one image per camera: neither can be queried."""
    rows = []

    def add(pid: int, camera: int, index: int, split: str) -> None:
        name = f"{pid:04d}_c{camera}s1_{index:06d}_00.jpg"
        rows.append((f"/data/{split}/{name}", name, pid, camera, split, 64, 128, -1))

    for pid in range(2, 2 + train_ids):
        cameras = 1 if pid % 5 == 0 else 2 + pid % 3
        for camera in range(1, cameras + 1):
            for index in range(1 if pid % 7 == 0 else 1 + (pid + camera) % 3):
                add(pid, camera, index, "train")
    for pid in range(100, 100 + test_ids):
        add(pid, 1, 0, "query")
        add(pid, 2, 1, "gallery")
        add(pid, 3, 2, "gallery")
    add(0, 4, 3, "gallery")  # a distractor, as in Market
    add(-1, 5, 4, "gallery")  # a junk box
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    train = frame["split"] == "train"
    ids = sorted(frame.loc[train, "person_id"].unique())
    frame.loc[train, "label"] = frame.loc[train, "person_id"].map({p: i for i, p in enumerate(ids)})
    frame.attrs["format"] = "market1501"
    return frame


def test_held_out_ids_are_disjoint_from_training_ids_and_labels_contiguous():
    source = manifest()
    split = validation_split(source, 0.25, seed=0)
    train = split[split["split"] == "train"]
    held = split[split["split"].isin(["query", "gallery"])]
    assert set(train["person_id"]).isdisjoint(held["person_id"])
    assert set(split["path"]) == set(source.loc[source["split"] == "train", "path"])  # train rows only
    assert round(0.25 * 20) == held["person_id"].nunique() == 5
    assert sorted(train["label"].unique()) == list(range(train["person_id"].nunique()))
    assert mislabelled_train_rows(split).empty  # numbered as build_manifest numbers them
    assert (held["label"] == -1).all()
    assert set(held["person_id"]) <= set(queryable_ids(source[source["split"] == "train"]))
    summary = split.attrs[SPLIT_ATTR]
    assert summary["validation_ids"] == 5 and summary["train_ids"] == 15
    assert summary["query_images"] + summary["gallery_images"] == len(held)
    assert list(split.columns) == list(COLUMNS)


def test_every_query_has_a_true_match_in_another_camera_and_one_query_per_camera():
    split = validation_split(manifest(), 0.4, seed=3)
    query, gallery = split[split["split"] == "query"], split[split["split"] == "gallery"]
    assert not query.duplicated(["person_id", "camera_id"]).any()
    for row in query.itertuples():
        same_id = gallery[gallery["person_id"] == row.person_id]
        assert (same_id["camera_id"] != row.camera_id).any(), row.file_name
    # Every camera of a held-out id keeps a gallery image (a query's camera too: junk for it).
    held = split[split["split"] != "train"]
    cameras = held.groupby("person_id")["camera_id"].nunique()
    assert (gallery.groupby("person_id")["camera_id"].nunique() == cameras).all()


def test_split_is_deterministic_in_its_seed_and_not_in_row_order():
    source = manifest()
    first = validation_split(source, 0.25, seed=0)
    shuffled = validation_split(source.sample(frac=1.0, random_state=1), 0.25, seed=0)
    pd.testing.assert_frame_equal(first, shuffled)
    other = validation_split(source, 0.25, seed=1)
    assert first.attrs[SPLIT_ATTR]["held_out_ids"] != other.attrs[SPLIT_ATTR]["held_out_ids"]


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2", True, None])
def test_fraction_outside_zero_one_is_refused_naming_the_key(fraction):
    with pytest.raises(ConfigError, match=r"tune\.validation_fraction: must be a number with 0 <"):
        validation_split(manifest(), fraction, seed=0)


@pytest.mark.parametrize("fraction, rule", [
    (0.05, "holds out 1, leaving 19"),  # one validation id: a gallery without negatives
    (0.95, "holds out 19, leaving 1"),  # one class to train on
    (0.85, "only 13 can be queried"),   # 17 asked; single-camera and single-image ids cannot be queried
])
def test_fraction_must_leave_enough_ids_on_both_sides(fraction, rule):
    with pytest.raises(ConfigError, match=rf"tune\.validation_fraction: .*{rule}"):
        validation_split(manifest(), fraction, seed=0)


def test_guard_refuses_test_images_and_test_identities():
    source = manifest()
    test = benchmark_rows(source)
    split = validation_split(source, 0.25, seed=0)
    check_no_test_images(split, test)  # the carved split passes
    leaked = pd.concat([split, test.iloc[[0]]], ignore_index=True)  # one query image of the benchmark
    with pytest.raises(DataRuleError, match=r"tuning_never_reads_test_split: .*1 test image\(s\): "
                                            r"/data/query/0100_c1s1"):
        check_no_test_images(leaked, test)
    copied = test.iloc[[1]].assign(path="/elsewhere/copy.jpg")  # a test identity under another path
    with pytest.raises(DataRuleError, match=r"1 test identity: 100"):
        check_no_test_images(pd.concat([split, copied], ignore_index=True), test)
