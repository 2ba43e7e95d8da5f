"""The embedded synthetic dataset: layout, determinism, exact re-rendering, swaps, shared clothes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dgnet.data import synthetic as syn
from dgnet.data.synthetic import canvas, factors, scenes
from dgnet.errors import ConfigError, DatasetError, OutputError
from dgnet.evaluation.pictures import synthetic_contact_sheet, synthetic_swap_sheet

NAME = re.compile(r"^(-1|\d{4})_c(\d+)s1_(\d{6})_(\d{2})\.jpg$")
SMALL = {"num_ids": 12, "num_cameras": 4}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("syn") / "data"
    table = syn.generate_dataset(root, seed=0, **SMALL)
    return root, table


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rgb(hex_color: str) -> np.ndarray:
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], float)


def test_field_groups_partition_the_columns(small):
    _, table = small
    assert not set(syn.APPEARANCE_FIELDS) & set(syn.STRUCTURE_FIELDS)
    assert set(syn.META_FIELDS) | set(syn.APPEARANCE_FIELDS) | set(syn.STRUCTURE_FIELDS) == set(syn.COLUMNS)
    assert list(table.columns) == list(syn.COLUMNS)
    for cue in ("body_height", "body_width", "hair_color", "hair_length", "hat", "bag", "viewpoint", "scene"):
        assert cue in syn.STRUCTURE_FIELDS
    for cloth in ("top_color", "top_texture", "top_color2", "bottom_color", "shoe_color"):
        assert cloth in syn.APPEARANCE_FIELDS


def test_market_layout(small):
    root, table = small
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert on_disk == set(table["path"])
    folders = ["bounding_box_test", "bounding_box_train", "factors.csv", "query"]
    assert sorted(p.name for p in root.iterdir()) == folders
    for row in table.itertuples():
        m = NAME.match(row.file_name)
        assert m, row.file_name
        assert int(m.group(1)) == row.person_id and int(m.group(2)) == row.camera_id
        assert row.path == f"{syn.SPLIT_DIRS[row.split]}/{row.file_name}"
    with Image.open(root / table["path"].iloc[0]) as im:
        assert (im.format, im.size, im.mode) == ("JPEG", (64, 128), "RGB")

    train, query, gallery = (table[table["split"] == s] for s in ("train", "query", "gallery"))
    assert set(train["person_id"]) == set(range(1, 7)) and set(query["person_id"]) == set(range(7, 13))
    assert (train.groupby("person_id")["camera_id"].nunique() >= 2).all()
    assert (query.groupby(["person_id", "camera_id"]).size() == 1).all()  # one query per camera
    assert {0, -1} <= set(gallery["person_id"])
    assert set(table.loc[table["person_id"] <= 0, "split"]) == {"gallery"}
    for q in query.itertuples():  # every query has a true match seen by another camera
        match = gallery[(gallery["person_id"] == q.person_id) & (gallery["camera_id"] != q.camera_id)]
        assert len(match), q.file_name


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    root, table = small
    again = syn.generate_dataset(tmp_path / "again", seed=0, **SMALL)
    pd.testing.assert_frame_equal(table, again)
    pd.testing.assert_frame_equal(syn.read_factors(root), syn.read_factors(tmp_path / "again"))
    assert _files(root) == _files(tmp_path / "again")

    other = syn.generate_dataset(tmp_path / "other", seed=1, **SMALL)
    assert not table.equals(other)
    assert _files(root) != _files(tmp_path / "other")


def test_rows_rerender_exactly(small):
    root, _ = small
    table = syn.read_factors(root)
    junk = int(table.index[table["person_id"] == -1][0])
    picks = [*range(0, len(table), max(1, len(table) // 8)), junk]
    for i in picks:
        row = table.iloc[i].to_dict()
        image, mask = syn.render(row)
        assert image.shape == (128, 64, 3) and image.dtype == np.uint8 and mask.shape == (128, 64)
        data = (root / row["path"]).read_bytes()
        assert syn.encode_jpeg(image) == data
        assert np.array_equal(syn.decode_jpeg(data), syn.decode_jpeg(syn.encode_jpeg(image)))


def test_render_reads_only_factors(small):
    _, table = small
    row = table.iloc[3].to_dict()
    image, mask = syn.render(row)
    moved = {**row, "file_name": "x.jpg", "person_id": 99, "camera_id": 9, "split": "query"}
    image2, mask2 = syn.render(moved)
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
    assert 0.05 < mask.mean() < 0.6  # a person, not an empty frame nor a wall


def test_swap_with_itself_is_the_image(small):
    _, table = small
    for i in (0, 7, 30):
        row = table.iloc[i].to_dict()
        a, b = syn.render_swap(row, row), syn.render(row)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_swap_takes_structure_from_j_and_clothes_from_i(small):
    _, table = small
    plain = table[(table["top_texture"] == "plain") & (table["person_id"] > 0)].reset_index(drop=True)
    tops = np.stack([_rgb(c) for c in plain["top_color"]])
    dist = np.abs(tops[:, None] - tops[None]).sum(-1)
    i, j = np.unravel_index(np.argmax(dist), dist.shape)  # the two most different plain tops
    ri, rj = plain.iloc[i].to_dict(), plain.iloc[j].to_dict()

    image, mask = syn.render_swap(ri, rj)
    assert np.array_equal(mask, syn.render(rj)[1])  # j's pose, body, hair, hat and bag
    assert not np.array_equal(image, syn.render(rj)[0])
    parts_swap, parts_j = syn.part_labels(syn.swap_factors(ri, rj)), syn.part_labels(rj)
    for part in ("hair", "hat", "bag", "shoes"):
        assert np.array_equal(parts_swap == part, parts_j == part), part
    torso = np.median(image[parts_swap == "top"].astype(float), axis=0)
    top_i, top_j = _rgb(ri["top_color"]), _rgb(rj["top_color"])
    assert np.abs(torso - top_i).sum() < np.abs(torso - top_j).sum()
    assert np.abs(torso - top_i).sum() < 150  # i's colour, under j's camera light


def test_shared_clothing_groups():
    table = syn.sample_factors(seed=0)  # sampling only, the default size
    people = table[table["person_id"] > 0].drop_duplicates("person_id")
    grouped = people[people["clothing_group"] > 0]
    assert 0.2 <= len(grouped) / len(people) <= 0.4
    cues = ["hat", "bag", "hair_length", "hair_color", "body_height", "body_width"]
    for _, members in grouped.groupby("clothing_group"):
        assert 2 <= len(members) <= 3
        assert len(members.drop_duplicates(list(syn.APPEARANCE_FIELDS))) == 1  # the very same clothes
        assert len(members.drop_duplicates(cues)) == len(members)  # told apart by structure cues
        assert len({pid <= 60 for pid in members["person_id"]}) == 1  # within train, or within test


def test_default_counts():
    table = syn.sample_factors()
    counts = table["split"].value_counts()
    assert 1000 <= len(table) <= 2000
    assert table.loc[table["split"] == "train", "person_id"].nunique() == 60
    assert table.loc[table["split"] == "query", "person_id"].nunique() == 60
    assert counts["query"] < counts["gallery"] and counts["train"] > counts["gallery"]
    assert table["camera_id"].nunique() == 6 and table["scene"].nunique() == 6
    assert table["file_name"].is_unique


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_ids": 3},
        {"num_ids": 12.5},
        {"num_cameras": 1},
        {"num_cameras": True},
        {"seed": -1},
        {"shared_clothing_fraction": 1.5},
        {"num_junk": -2},
    ],
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        syn.generate_dataset(tmp_path / "out", **{**SMALL, **kwargs})
    assert not (tmp_path / "out").exists()


def test_a_previous_output_is_replaced_whole_a_foreign_folder_never(tmp_path):
    out = tmp_path / "data"
    syn.generate_dataset(out, seed=3, num_ids=4, num_cameras=2, num_distractors=1, num_junk=1)
    (out / "stale.txt").write_text("old")
    syn.generate_dataset(out, seed=3, num_ids=4, num_cameras=2, num_distractors=1, num_junk=1)
    assert not (out / "stale.txt").exists() and (out / "factors.csv").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        syn.generate_dataset(tmp_path / "file", num_ids=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="did not write"):
        syn.generate_dataset(tmp_path / "mine", num_ids=4)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_bad_factors_raise_dataset_error(small):
    _, table = small
    row = table.iloc[0].to_dict()
    with pytest.raises(DatasetError, match="viewpoint"):
        syn.render({**row, "viewpoint": "upside-down"})
    with pytest.raises(DatasetError, match="top_color"):
        syn.render({**row, "top_color": "red"})
    with pytest.raises(DatasetError, match="hat"):
        syn.render({k: v for k, v in row.items() if k != "hat"})
    with pytest.raises(DatasetError, match=r"factors\.csv"):
        syn.read_factors(Path("/nonexistent"))


def test_pictures(small, tmp_path):
    root, _ = small
    sheet = synthetic_contact_sheet(root, num_ids=4, per_id=4)
    swaps = synthetic_swap_sheet(root, num=3)
    assert sheet.width > 4 * 128 and sheet.height > 4 * 256
    assert swaps.width > 4 * 128 and swaps.height > 4 * 256


def test_scenes_are_dull_and_out_of_focus_next_to_the_painted_scene():
    kind, seed = "street", 7
    painted = Image.new("RGB", (factors.BG_W * canvas.SS, factors.H * canvas.SS))
    scenes.SCENE_PAINTERS[kind](canvas.Pen(painted), np.random.default_rng(seed))
    sharp = np.asarray(painted, dtype=np.float32)
    dull, _ = scenes.scene(kind, seed)

    def saturation(x):
        return float((x.max(axis=2) - x.min(axis=2)).mean())

    def detail(x):
        return float(np.abs(np.diff(x, axis=1)).mean())

    assert saturation(dull) < 0.6 * saturation(sharp)
    assert detail(dull) < 0.5 * detail(sharp)
    assert abs(dull.mean() - sharp.mean()) < 2.0  # the same scene, only dulled: brightness kept


@pytest.mark.slow  # ~7 s of CPU, over 20 s on a busy machine
def test_the_dvc_data_stage_output_is_reproduced(tmp_path):
    """params.yaml's data.synthetic settings give exactly the `data/synthetic` that dvc.lock records."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("dvc_data")
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "params.yaml").read_text())["data"]["synthetic"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["data"]
    expected = next(o for o in lock["outs"] if o["path"] == cfg["out"])
    syn.generate_dataset(tmp_path / "data", seed=cfg["seed"], num_ids=cfg["ids"], num_cameras=cfg["cameras"])
    fs = LocalFileSystem()
    _, meta, tree = build(LocalHashFileDB(fs, str(tmp_path / "odb")), str(tmp_path / "data"), fs, "md5")
    assert tree.hash_info.value == expected["md5"]
    assert (meta.nfiles, meta.size) == (expected["nfiles"], expected["size"])
