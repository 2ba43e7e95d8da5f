"""Validation rules: the pandas engine and the Great Expectations stage must agree, rule by rule."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ImageFile

from dgnet.data.manifest import COLUMNS, build_manifest
from dgnet.data.validation import (
    MEASURED_COLUMNS,
    RULES,
    ValidationReport,
    measure_files,
    rule_tables,
    validate,
)
from dgnet_pipeline import validate as stage
from tests.fixtures import make_duke, make_market, make_msmt, truncate, write_jpeg

REPO = Path(__file__).resolve().parents[1]
GOOD_MAKERS = {"market1501": make_market, "dukemtmc": make_duke, "msmt17": make_msmt}


# --- fixtures: one good tree per format, one bad Market tree breaking every rule ------------------

@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{format: (manifest, measured) of the three good trees."""
    out = {}
    for fmt, make in GOOD_MAKERS.items():
        frame = build_manifest(make(tmp_path_factory.mktemp(fmt)))
        out[fmt] = (frame, measure_files(frame, fmt))
    return out


class Bad:
    """A Market tree with one fault per rule, and the files expected to be reported."""

    def __init__(self, root: Path) -> None:
        make_market(root, gt_bbox=False)
        self.truncated = write_jpeg(root / "bounding_box_test" / "0011_c5s1_002401_01.jpg")
        truncate(self.truncated)
        self.random = root / "bounding_box_train" / "0002_c3s1_000601_01.jpg"
        self.random.write_bytes(np.random.default_rng(0).bytes(500))
        self.camera9 = write_jpeg(root / "bounding_box_train" / "0007_c9s1_001201_01.jpg")
        write_jpeg(root / "bounding_box_test" / "0007_c2s1_003001_01.jpg")  # train id 7 in the gallery
        self.lonely_query = write_jpeg(root / "query" / "0020_c1s1_004001_00.jpg")
        write_jpeg(root / "bounding_box_test" / "0020_c1s1_004101_01.jpg")  # same camera only
        self.tiny = write_jpeg(root / "bounding_box_train" / "0002_c4s1_000701_01.jpg", size=(3, 3))
        frame = build_manifest(root)
        self.missing = root / "bounding_box_train" / "0007_c6s1_001101_01.jpg"
        self.missing.unlink()
        # A name that breaks the pattern would stop build_manifest: break it in the frame instead.
        self.renamed = root / "bounding_box_test" / "-1_c2s1_000201_03.jpg"
        frame.loc[frame["path"] == str(self.renamed.resolve()), "file_name"] = "junk-box.jpg"
        self.negative_id = root / "bounding_box_test" / "0000_c1s1_000151_01.jpg"
        frame.loc[frame["path"] == str(self.negative_id.resolve()), "person_id"] = -5
        # schema: width and height must be int64 (two problems: both engines list them alike)
        frame[["width", "height"]] = frame[["width", "height"]].astype("float64")
        self.frame = frame
        self.measured = measure_files(frame, "market1501")
        # What each rule must report (a path, an id, a column).
        self.expected = {
            "schema": "column width",
            "files_exist": str(self.missing.resolve()),
            "images_decode": str(self.truncated.resolve()),
            "file_names_follow_pattern": str(self.renamed.resolve()),
            "camera_ids_in_range": str(self.camera9.resolve()),
            "person_ids_in_range": str(self.negative_id.resolve()),
            "image_sizes_plausible": str(self.tiny.resolve()),
            "train_test_ids_disjoint": "7",
            "query_has_cross_camera_gallery": str(self.lonely_query.resolve()),
        }


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Bad:
    return Bad(tmp_path_factory.mktemp("bad"))


def _without(pair: tuple[pd.DataFrame, pd.DataFrame], split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    keep = pair[0]["split"] != split
    return pair[0][keep].reset_index(drop=True), pair[1][keep].reset_index(drop=True)


def _edited(pair: tuple[pd.DataFrame, pd.DataFrame], fmt: str, row: int, **values: object
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pair[0].copy()
    for column, value in values.items():
        frame.loc[row, column] = value
    return frame, measure_files(frame, fmt)


@pytest.fixture(scope="module")
def bad_datasets(good: dict, bad: Bad, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every bad dataset of this module: {name: (format, manifest, measured)}."""
    duke = make_duke(tmp_path_factory.mktemp("duke9"))
    write_jpeg(duke / "bounding_box_train" / "0005_c9_f0061112.jpg")  # Duke has 8 cameras
    duke_frame = build_manifest(duke)
    query = good["market1501"][0].index[good["market1501"][0]["split"] == "query"][0]
    corrupt = good["market1501"][0].copy()
    corrupt.loc[query, "path"] = str(bad.truncated.resolve())  # a query whose file does not decode
    msmt_query = good["msmt17"][0].index[good["msmt17"][0]["split"] == "query"][0]
    datasets = {
        "every_rule": ("market1501", bad.frame, bad.measured),
        "no_gallery": ("market1501", *_without(good["market1501"], "gallery")),
        "no_query": ("market1501", *_without(good["market1501"], "query")),
        "truncated_query": ("market1501", corrupt, measure_files(corrupt, "market1501")),
        "duke_camera_9": ("dukemtmc", duke_frame, measure_files(duke_frame, "dukemtmc")),
        # the list gives id 1 where the file name says 0: the name disagrees
        "msmt_name_disagrees": ("msmt17", *_edited(good["msmt17"], "msmt17", 0, person_id=1)),
        # a query id without the test offset is a train id: leaked, and its name disagrees
        "msmt_leaked_id": ("msmt17", *_edited(good["msmt17"], "msmt17", msmt_query, person_id=0)),
        "camera_0": ("market1501", *_edited(good["market1501"], "market1501", 0, camera_id=0)),
    }
    return datasets


@pytest.fixture(scope="module")
def gx_reports(good: dict, bad_datasets: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every Great Expectations run of this module, done once (GX costs ~2.5 s to import)."""
    docs = tmp_path_factory.mktemp("docs")
    reports = {fmt: stage.gx_validate(frame, fmt, measured=measured)
               for fmt, (frame, measured) in good.items()}
    for name, (fmt, frame, measured) in bad_datasets.items():
        reports[name] = stage.gx_validate(frame, fmt, measured=measured,
                                          docs_dir=docs / "bad" if name == "every_rule" else None)
    reports["docs"] = docs
    return reports


# --- measured columns and rule tables ------------------------------------------------------------

def test_measured_columns(good: dict) -> None:
    frame, measured = good["market1501"]
    assert list(measured.columns) == [*COLUMNS, *MEASURED_COLUMNS]
    assert measured["exists"].all() and measured["decodes"].all()
    assert (measured["name_person_id"] == frame["person_id"]).all()
    assert (measured["name_camera_id"] == frame["camera_id"]).all()
    assert measured.attrs["format"] == "market1501"
    pd.testing.assert_frame_equal(measured[list(COLUMNS)], frame)


def test_measured_columns_show_each_fault(bad: Bad) -> None:
    measured = bad.measured.set_index("path")
    resolved = {name: str(getattr(bad, name).resolve())
                for name in ("missing", "truncated", "random", "renamed")}
    assert set(measured.index[~measured["exists"]]) == {resolved["missing"]}
    assert set(measured.index[~measured["decodes"]]) == {resolved["missing"], resolved["truncated"],
                                                         resolved["random"]}
    assert set(measured.index[measured["name_person_id"].isna()]) == {resolved["renamed"]}
    assert measured.loc[str(bad.tiny.resolve()), "aspect"] == 1.0


def test_truncated_jpeg_caught_even_if_pil_allows_it(bad: Bad) -> None:
    row = bad.frame[bad.frame["path"] == str(bad.truncated.resolve())]
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as a lenient training loader might leave it
    try:
        measured = measure_files(row, "market1501", workers=1)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert not measured["decodes"].iloc[0] and measured["exists"].iloc[0]


def test_name_ids_know_msmt_offset(good: dict) -> None:
    frame, measured = good["msmt17"]
    assert (measured["name_person_id"] == frame["person_id"]).all()
    moved = frame.copy()
    moved.loc[moved["split"] == "query", "person_id"] -= 100_000  # the original, un-offset id
    report = validate(moved, "msmt17")
    assert report.rule("file_names_follow_pattern").num_failed == int((moved["split"] == "query").sum())


def test_rule_tables(good: dict) -> None:
    tables = rule_tables(good["market1501"][1], "market1501")
    assert list(tables["queries"]["cross_camera_gallery_images"]) == [1, 1]  # 0010: one of two is c1
    assert list(tables["ids"]["person_id"]) == [2, 7, 10, 11]  # 0 and -1 left out
    msmt = rule_tables(good["msmt17"][1], "msmt17")
    assert 0 in set(msmt["ids"]["person_id"])  # MSMT17 id 0 is a real person


# --- the pandas engine -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(GOOD_MAKERS))
def test_good_dataset_passes(good: dict, fmt: str) -> None:
    frame, checks = good[fmt]
    report = validate(frame, fmt, measured=checks)
    assert [r.name for r in report.rules] == list(RULES)
    assert report.ok, report.failure_message()
    assert report.failure_message() == ""
    assert set(report.counts) >= {"train", "query", "gallery"}
    assert all(report.counts[s]["images"] > 0 for s in ("train", "query", "gallery"))


def test_validate_decodes_by_itself(good: dict) -> None:
    frame, _ = good["dukemtmc"]
    assert validate(frame).ok  # format from frame.attrs, checks computed here


@pytest.mark.parametrize("rule", [r for r in RULES if r != "split_counts"])
def test_bad_dataset_fails_each_rule(bad: Bad, rule: str) -> None:
    report = validate(bad.frame, "market1501", measured=bad.measured)
    result = report.rule(rule)
    assert not result.passed and result.num_failed >= 1
    assert bad.expected[rule] in " ".join(result.first_offending)
    message = report.failure_message()
    assert f"rule {rule}:" in message and bad.expected[rule] in message


def test_empty_split_fails(bad_datasets: dict) -> None:
    _, frame, measured = bad_datasets["no_gallery"]
    report = validate(frame, "market1501", measured=measured)
    result = report.rule("split_counts")
    assert not result.passed and result.first_offending == ["gallery"]
    assert report.counts["gallery"] == {"images": 0, "ids": 0}
    assert "rule split_counts:" in report.failure_message() and "split gallery" in report.failure_message()


def test_missing_columns_reported_not_crashed(good: dict) -> None:
    frame = good["market1501"][0].drop(columns=["camera_id"])
    report = validate(frame, "market1501")
    assert not report.ok and "camera_id" in report.rule("schema").first_offending[0]
    assert all(not r.passed for r in report.rules)


def test_report_to_dict_is_json(bad: Bad) -> None:
    report = validate(bad.frame, "market1501", measured=bad.measured)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and [r["name"] for r in data["rules"]] == list(RULES)
    assert set(data["rules"][0]) == {"name", "description", "passed", "num_failed", "first_offending"}


# --- Great Expectations decides, and the pandas engine agrees ------------------------------------

@pytest.mark.parametrize("fmt", list(GOOD_MAKERS))
def test_gx_good_dataset_passes_and_agrees(good: dict, gx_reports: dict, fmt: str) -> None:
    frame, measured = good[fmt]
    gx_report = gx_reports[fmt]
    assert gx_report.ok, gx_report.failure_message()
    assert gx_report.engine == "great_expectations"
    assert gx_report.to_dict()["rules"] == validate(frame, fmt, measured=measured).to_dict()["rules"]


# Which rules each bad dataset breaks (the others pass).
BROKEN = {
    "every_rule": set(RULES) - {"split_counts"},
    "no_gallery": {"split_counts", "query_has_cross_camera_gallery"},
    "no_query": {"split_counts"},
    "truncated_query": {"images_decode"},
    "duke_camera_9": {"camera_ids_in_range"},
    "msmt_name_disagrees": {"file_names_follow_pattern"},
    "msmt_leaked_id": {"file_names_follow_pattern", "train_test_ids_disjoint",
                       "query_has_cross_camera_gallery"},
    "camera_0": {"camera_ids_in_range", "file_names_follow_pattern"},
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_both_engines_give_the_same_verdicts_and_offenders(bad_datasets: dict, gx_reports: dict,
                                                           name: str) -> None:
    fmt, frame, measured = bad_datasets[name]
    pure, gx_report = validate(frame, fmt, measured=measured), gx_reports[name]
    assert gx_report.to_dict()["rules"] == pure.to_dict()["rules"]
    assert {r.name for r in gx_report.rules if not r.passed} == BROKEN[name]
    assert all(r.first_offending for r in gx_report.rules if not r.passed)


def test_gx_names_each_fault(bad: Bad, gx_reports: dict) -> None:
    gx_report: ValidationReport = gx_reports["every_rule"]
    for rule, item in bad.expected.items():
        assert item in " ".join(gx_report.rule(rule).first_offending)
        assert f"rule {rule}:" in gx_report.failure_message()
    # renamed: no match and no ids from its name, counted once
    assert gx_report.rule("file_names_follow_pattern").first_offending.count(bad.expected[
        "file_names_follow_pattern"]) == 1
    assert gx_report.rule("train_test_ids_disjoint").first_offending == ["7"]
    assert gx_reports["no_gallery"].rule("split_counts").first_offending == ["gallery"]


def test_gx_broken_table_fails_not_passes(good: dict) -> None:
    tables = rule_tables(good["market1501"][1], "market1501")
    tables["files"] = tables["files"].drop(columns=["decodes"])
    results = {r.name: r for r in stage.run_gx(tables, "market1501")}
    assert not results["schema"].passed
    decode = results["images_decode"]  # GX could not compute it: reported, never passed
    assert not decode.passed and decode.first_offending[0].startswith("error:")


def test_gx_data_docs(gx_reports: dict) -> None:
    site = gx_reports["docs"] / "bad"
    assert (site / "index.html").is_file()
    pages = {p.relative_to(site / "validations").parts[0] for p in (site / "validations").rglob("*.html")}
    assert pages == {"dgnet_files", "dgnet_queries", "dgnet_ids"}
    assert not list(gx_reports["docs"].glob(".*.tmp"))  # the atomic temp folder is gone


# --- the stage: CLI, DVC entry point -----------------------------------------------------------

@pytest.fixture(scope="module")
def cli_runs(good: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run `dgnet validate` (the registered function) on a good tree, a corrupted copy, a broken one."""
    base = tmp_path_factory.mktemp("cli")
    good_root = Path(good["market1501"][0].attrs["root"])
    corrupt_root = Path(shutil.copytree(good_root, base / "corrupt"))
    corrupted = corrupt_root / "bounding_box_test" / "0011_c4s1_002301_02.jpg"
    truncate(corrupted)
    broken_root = Path(shutil.copytree(good_root, base / "broken"))
    shutil.rmtree(broken_root / "bounding_box_train")
    empty_query_root = Path(shutil.copytree(good_root, base / "empty_query"))
    for image in (empty_query_root / "query").glob("*.jpg"):
        image.unlink()

    parser = argparse.ArgumentParser(prog="dgnet")
    stage.add_command(parser.add_subparsers(dest="command"))
    runs = {"corrupted": corrupted}
    for name, root in {"good": good_root, "corrupt": corrupt_root, "broken": broken_root,
                       "empty_query": empty_query_root}.items():
        out = base / name
        args = parser.parse_args(["validate", "--data", str(root), "--report", str(out / "validation.json"),
                                  "--docs", str(out / "gx_docs"), "--manifest", str(out / "manifest.csv")])
        runs[name] = (args.func(args), out)
    return runs


def test_cli_good(cli_runs: dict, good: dict) -> None:
    code, out = cli_runs["good"]
    assert code == 0
    report = json.loads((out / "validation.json").read_text())
    assert report["ok"] and [r["name"] for r in report["rules"]] == list(RULES)
    assert report["counts"]["train"] == {"images": 4, "ids": 2}
    assert (out / "gx_docs" / "index.html").is_file()
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns) == list(COLUMNS)
    assert list(manifest["path"]) == list(good["market1501"][0]["path"])


def test_cli_corrupt_image(cli_runs: dict) -> None:
    code, out = cli_runs["corrupt"]
    assert code == 1
    assert not (out / "manifest.csv").exists()
    report = json.loads((out / "validation.json").read_text())
    assert not report["ok"] and report["manifest"] is None
    decode = next(r for r in report["rules"] if r["name"] == "images_decode")
    assert decode["first_offending"] == [str(cli_runs["corrupted"].resolve())]
    assert (out / "gx_docs" / "index.html").is_file()


def test_cli_empty_split_is_a_data_rule_with_its_report(cli_runs: dict) -> None:
    code, out = cli_runs["empty_query"]
    assert code == 1 and not (out / "manifest.csv").exists()
    report = json.loads((out / "validation.json").read_text())
    split_rule = next(r for r in report["rules"] if r["name"] == "split_counts")
    assert not split_rule["passed"] and split_rule["first_offending"] == ["query"]
    assert report["counts"]["query"] == {"images": 0, "ids": 0}
    assert (out / "gx_docs" / "index.html").is_file()


def test_cli_messages(good: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = Path(shutil.copytree(good["market1501"][0].attrs["root"], tmp_path / "data"))
    corrupted = root / "query" / "0011_c2s1_002101_00.jpg"
    truncate(corrupted)
    code = stage.run_validation(root, report=tmp_path / "r.json", docs=tmp_path / "docs",
                                manifest=tmp_path / "m.csv")
    err = capsys.readouterr().err
    assert code == 1 and "rule images_decode" in err and str(corrupted) in err
    assert not (tmp_path / "m.csv").exists()
    (root / "query" / "0011_c2s1_002101_00.jpg").unlink()
    (root / "query" / "0011.jpg").write_bytes(b"")
    code = stage.run_validation(root, "market1501", report=tmp_path / "r2.json", docs=tmp_path / "d2",
                                manifest=tmp_path / "m2.csv")
    err = capsys.readouterr().err
    # a file name that does not parse breaks rule file_names_follow_pattern: exit 1, a data rule
    assert code == 1 and "rule file_names_follow_pattern: 1 file name(s)" in err
    assert str(root / "query" / "0011.jpg") in err
    assert not (tmp_path / "r2.json").exists() and not (tmp_path / "m2.csv").exists()


def test_cli_missing_folder(cli_runs: dict) -> None:
    code, out = cli_runs["broken"]
    assert code == 2 and not (out / "manifest.csv").exists() and not (out / "validation.json").exists()


def _params_repo(tmp_path: Path, good_root: Path) -> Path:
    shutil.copytree(good_root, tmp_path / "data" / "synthetic")
    (tmp_path / "params.yaml").write_text(
        "data:\n  root: data/synthetic\n  format: market1501\n"
        "validate:\n  report: reports/validation.json\n  docs: reports/gx_docs\n"
        "  manifest: data/manifest.csv\n")
    return tmp_path


def test_stage_main_reads_params(good: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _params_repo(tmp_path, Path(good["market1501"][0].attrs["root"]))
    monkeypatch.chdir(repo)
    assert stage.main([]) == 0
    assert (repo / "reports" / "validation.json").is_file()
    assert (repo / "reports" / "gx_docs" / "index.html").is_file()
    assert (repo / "data" / "manifest.csv").is_file()
    (repo / "params.yaml").write_text("data:\n  format: market1501\n")
    assert stage.main([]) == 2


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_python_m_stages_validate(good: dict, tmp_path: Path) -> None:
    repo = _params_repo(tmp_path, Path(good["market1501"][0].attrs["root"]))
    truncate(repo / "data" / "synthetic" / "query" / "0010_c1s1_002001_00.jpg")
    done = subprocess.run([sys.executable, "-m", "dgnet_pipeline.validate"], cwd=repo, env=_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "0010_c1s1_002001_00.jpg" in done.stderr and "images_decode" in done.stderr
    assert not (repo / "data" / "manifest.csv").exists()
    assert (repo / "reports" / "validation.json").is_file()
    page = (repo / "reports" / "validation.md").read_text()
    assert "FAIL" in page and "0010_c1s1_002001_00.jpg" in page and "images_decode" in page


@pytest.mark.skipif(not (REPO / "dgnet" / "cli.py").exists(), reason="dgnet/cli.py not wired yet")
def test_dgnet_cli_validate(good: dict, tmp_path: Path) -> None:
    root = good["market1501"][0].attrs["root"]
    done = subprocess.run(
        [sys.executable, "-m", "dgnet.cli", "validate", "--data", root, "--report", str(tmp_path / "r.json"),
         "--docs", str(tmp_path / "docs"), "--manifest", str(tmp_path / "m.csv")],
        cwd=tmp_path, env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m.csv").is_file() and (tmp_path / "docs" / "index.html").is_file()
