"""Dataset validation rules, computed once as columns and facts, checked by an engine.

`compute_file_checks` adds one boolean column per per-file rule to a manifest; `build_rule_frames`
turns that into the four small tables every rule reads (files, queries, ids, splits). Two engines
check the same tables and must agree: `validate` here (plain pandas: what the GPU machines
without Great Expectations use) and the Great Expectations suite of `dgnet_pipeline/validate.py`.

Rules (names shared by both engines; see `RULES`): schema, split_counts, files_exist,
images_decode, file_names_follow_pattern, camera_ids_in_range, image_sizes_plausible,
train_test_ids_disjoint, query_has_cross_camera_gallery.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from dgnet.data.manifest import (
    COLUMNS,
    FORMATS,
    MSMT_TEST_ID_OFFSET,
    NUM_CAMERAS,
    PATTERNS,
    SPLITS,
    STR_COLUMNS,
)
from dgnet.errors import DatasetError

# Plausible person crops: Market images are 128x64, Duke and MSMT17 crops vary, but a crop a few
# pixels tall, wider than twice its height or a whole 4K frame means a broken file or box.
MIN_HEIGHT, MAX_HEIGHT = 16, 2000
MIN_WIDTH, MAX_WIDTH = 8, 1000
MIN_ASPECT, MAX_ASPECT = 0.5, 10.0  # height / width

CHECK_COLUMNS = ("exists", "decodes", "name_ok", "camera_ok", "size_ok")
# Market/Duke person ids outside the identity protocol: junk (-1) and distractors (0) may appear in
# any split. MSMT17 has neither: its id 0 is a real person.
NON_IDENTITY_IDS = {"market1501": (-1, 0), "dukemtmc": (-1, 0), "msmt17": ()}
MAX_OFFENDING = 20  # offending items kept per rule in a report

RULES: dict[str, str] = {
    "schema": "manifest columns are " + ", ".join(COLUMNS) + " in this order (then the check columns "
              + ", ".join(CHECK_COLUMNS) + "), with string, int64 and bool dtypes",
    "split_counts": "the train, query and gallery splits each hold at least one image",
    "files_exist": "every image file listed in the manifest exists",
    "images_decode": "every image decodes fully with PIL (no truncated, corrupt, non-image or missing "
                     "file)",
    "file_names_follow_pattern": "every file name follows the dataset's naming pattern and agrees with "
                                 "its person_id and camera_id",
    "camera_ids_in_range": "every camera id lies in 1..number of cameras of the dataset "
                           "(Market 6, Duke 8, MSMT17 15)",
    "image_sizes_plausible": f"every image is {MIN_HEIGHT}..{MAX_HEIGHT} px tall, "
                             f"{MIN_WIDTH}..{MAX_WIDTH} px wide, "
                             f"with height/width in {MIN_ASPECT}..{MAX_ASPECT}",
    "train_test_ids_disjoint": "no person id is in both train and query/gallery (Market/Duke junk -1 "
                               "and distractor 0 aside)",
    "query_has_cross_camera_gallery": "every query id has at least one gallery image of the same id from "
                                      "another camera",
}
# Which boolean column of the files table carries each per-file rule.
FILE_RULE_COLUMNS = {
    "files_exist": "exists",
    "images_decode": "decodes",
    "file_names_follow_pattern": "name_ok",
    "camera_ids_in_range": "camera_ok",
    "image_sizes_plausible": "size_ok",
}

# What the offending items of each rule are, for messages (every other rule lists file paths).
OFFENDING_KIND = {"schema": "", "split_counts": "split ", "train_test_ids_disjoint": "person id "}


def string_dtype_name() -> str:
    """Name of the dtype pandas gives a string column: "str" on pandas 3, "object" before."""
    return "str" if isinstance(pd.Series(["a"]).dtype, pd.StringDtype) else "object"


# Expected dtype name per column of the files table (the manifest columns, then the checks).
EXPECTED_DTYPES: dict[str, str] = {
    **{c: (string_dtype_name() if c in STR_COLUMNS else "int64") for c in COLUMNS},
    **dict.fromkeys(CHECK_COLUMNS, "bool"),
}


@dataclass
class RuleResult:
    """The outcome of one rule: offending = file paths, or ids / split names for id / split rules."""

    name: str
    description: str
    passed: bool
    num_failed: int = 0
    first_offending: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """Every rule's result plus images and ids per split."""

    rules: list[RuleResult]
    counts: dict[str, dict[str, int]]
    format: str = ""
    root: str = ""
    engine: str = "pandas"

    @property
    def ok(self) -> bool:
        return all(rule.passed for rule in self.rules)

    def rule(self, name: str) -> RuleResult:
        """The result of rule `name`."""
        for result in self.rules:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "engine": self.engine,
            "format": self.format,
            "root": self.root,
            "counts": self.counts,
            "rules": [asdict(rule) for rule in self.rules],
        }

    def to_markdown(self, limit: int = 5) -> str:
        """A page a person reads: verdict, counts per split, one table row per rule."""
        verdict = "PASSED" if self.ok else "FAILED"
        lines = [f"# Dataset validation: {verdict}", "",
                 f"{self.format} at `{self.root}` (engine: {self.engine})", "",
                 "| split | images | ids |", "| --- | ---: | ---: |"]
        lines += [f"| {split} | {c['images']} | {c['ids']} |" for split, c in self.counts.items()]
        lines += ["", "| rule | result | failing | what it checks |", "| --- | --- | ---: | --- |"]
        lines += [f"| `{r.name}` | {'pass' if r.passed else '**FAIL**'} | {r.num_failed} | {r.description} |"
                  for r in self.rules]
        failed = [r for r in self.rules if not r.passed]
        for rule in failed:
            lines += ["", f"## `{rule.name}`: first offending items", ""]
            lines += [f"- `{item}`" for item in rule.first_offending[:limit]]
        return "\n".join(lines) + "\n"

    def failure_message(self, limit: int = 5) -> str:
        """One paragraph per failed rule, naming it and its first `limit` offending items."""
        failed = [rule for rule in self.rules if not rule.passed]
        if not failed:
            return ""
        where = f" ({self.format} at {self.root})" if self.root else ""
        lines = [f"dataset validation failed{where}: {len(failed)} of {len(self.rules)} rules broken"]
        for rule in failed:
            lines.append(f"- rule {rule.name}: {rule.description}; {rule.num_failed} failing")
            kind = OFFENDING_KIND.get(rule.name, "file ")
            lines += [f"    {kind}{item}" for item in rule.first_offending[:limit]]
            if rule.num_failed > limit:
                lines.append(f"    ... and {rule.num_failed - limit} more")
        return "\n".join(lines)


def _check_file(path: str) -> tuple[bool, bool]:
    """(exists, decodes) for one image; the full decode is what catches truncated JPEGs."""
    if not os.path.isfile(path):
        return False, False
    try:
        with Image.open(path) as image:
            image.load()
        return True, True
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        return True, False


def _name_ok(names: pd.Series, pids: pd.Series, cams: pd.Series, splits: pd.Series, fmt: str) -> np.ndarray:
    """True where the name matches the pattern and its id and camera agree with the columns."""
    parts = names.astype(str).str.extract(PATTERNS[fmt])
    matched = parts["pid"].notna().to_numpy()
    name_pid = pd.to_numeric(parts["pid"], errors="coerce").to_numpy()
    name_cam = pd.to_numeric(parts["cam"], errors="coerce").to_numpy()
    pid = pids.to_numpy(dtype=np.float64)
    if fmt == "msmt17":  # test ids carry the manifest's offset; the file name has the original
        pid = pid - np.where(splits.isin(["query", "gallery"]).to_numpy(), MSMT_TEST_ID_OFFSET, 0)
    return matched & (name_pid == pid) & (name_cam == cams.to_numpy(dtype=np.float64))


def compute_file_checks(frame: pd.DataFrame, fmt: str, *, workers: int | None = None,
                        progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """The manifest plus one bool column per per-file rule: exists, decodes, name_ok, camera_ok, size_ok.

    Decoding runs on a thread pool (file reads and libjpeg release the GIL). `progress`, if given,
    is called with 1 after each file, from the calling thread.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    needed = ("path", "file_name", "person_id", "camera_id", "split", "width", "height")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DatasetError(f"manifest lacks the columns {', '.join(missing)}; expected {', '.join(COLUMNS)}")

    paths = frame["path"].astype(str).tolist()
    workers = workers or min(16, 4 * (os.cpu_count() or 1))

    # A truncated JPEG only fails to load while this PIL global is False; some training code sets it
    # True to survive bad files, so force it off for the check and restore it after.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    results = []
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map yields in order; progress is reported from this thread, as progress bars are not
            # thread-safe
            for result in pool.map(_check_file, paths):
                results.append(result)
                if progress is not None:
                    progress(1)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    exists_decodes = np.array(results, dtype=bool).reshape(-1, 2)

    out = frame.copy()
    out["exists"] = exists_decodes[:, 0]
    out["decodes"] = exists_decodes[:, 1]
    out["name_ok"] = _name_ok(frame["file_name"], frame["person_id"], frame["camera_id"], frame["split"], fmt)
    cams = frame["camera_id"].to_numpy(dtype=np.float64)
    out["camera_ok"] = (cams >= 1) & (cams <= NUM_CAMERAS[fmt])
    height = frame["height"].to_numpy(dtype=np.float64)
    width = frame["width"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = height / width
    out["size_ok"] = ((height >= MIN_HEIGHT) & (height <= MAX_HEIGHT) & (width >= MIN_WIDTH)
                      & (width <= MAX_WIDTH) & (aspect >= MIN_ASPECT) & (aspect <= MAX_ASPECT))
    out.attrs = {**frame.attrs, "format": fmt}
    return out


def split_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {"images": n, "ids": k}} for train, query, gallery (and any other split present)."""
    present = [s for s in frame["split"].unique().tolist() if s not in SPLITS]
    counts = {}
    for split in [*SPLITS, *sorted(present)]:
        rows = frame.loc[frame["split"] == split, "person_id"]
        counts[split] = {"images": len(rows), "ids": int(rows.nunique())}
    return counts


def build_rule_frames(checks: pd.DataFrame, fmt: str) -> dict[str, pd.DataFrame]:
    """The four tables every engine checks.

    files:   the output of `compute_file_checks` (one row per image)
    queries: path, person_id, camera_id, has_cross_camera_gallery (one row per query image)
    ids:     person_id, side ("train" / "test"): each identity once per side, so an id shared by
             train and test is exactly a duplicated person_id
    splits:  split, images, ids for train, query and gallery
    """
    split = checks["split"]
    query = checks.loc[split == "query", ["path", "person_id", "camera_id"]].reset_index(drop=True)
    gallery = checks.loc[split == "gallery", ["person_id", "camera_id"]].drop_duplicates()
    pairs = query.reset_index().merge(gallery, on="person_id", how="inner", suffixes=("", "_gallery"))
    cross = pairs.loc[pairs["camera_id_gallery"] != pairs["camera_id"], "index"].unique()
    query["has_cross_camera_gallery"] = query.index.isin(cross)

    identity = ~checks["person_id"].isin(NON_IDENTITY_IDS[fmt])
    train_ids = np.unique(checks.loc[identity & (split == "train"), "person_id"].to_numpy())
    test_ids = np.unique(checks.loc[identity & split.isin(["query", "gallery"]), "person_id"].to_numpy())
    ids = pd.DataFrame({
        "person_id": np.concatenate([train_ids, test_ids]).astype(np.int64),
        "side": pd.Series(["train"] * len(train_ids) + ["test"] * len(test_ids), dtype=str),
    }).sort_values(["person_id", "side"], kind="stable").reset_index(drop=True)

    counts = split_counts(checks)
    splits = pd.DataFrame({
        "split": pd.Series(list(SPLITS), dtype=str),
        "images": np.array([counts[s]["images"] for s in SPLITS], dtype=np.int64),
        "ids": np.array([counts[s]["ids"] for s in SPLITS], dtype=np.int64),
    })
    return {"files": checks, "queries": query, "ids": ids, "splits": splits}


def _result(name: str, offending: list[str], num_failed: int | None = None) -> RuleResult:
    count = len(offending) if num_failed is None else num_failed
    return RuleResult(name, RULES[name], count == 0, count, offending[:MAX_OFFENDING])


def schema_problems(files: pd.DataFrame) -> list[str]:
    """What is wrong with the columns of the files table: order, names and dtypes."""
    expected = [*COLUMNS, *CHECK_COLUMNS]
    problems = []
    if list(files.columns) != expected:
        problems.append(f"columns: expected {expected}, got {list(files.columns)}")
    for column, dtype in EXPECTED_DTYPES.items():
        if column in files.columns and str(files[column].dtype) != dtype:
            problems.append(f"column {column}: expected dtype {dtype}, got {files[column].dtype}")
    return problems


def evaluate_rules(frames: dict[str, pd.DataFrame]) -> list[RuleResult]:
    """The pandas engine: every rule of `RULES`, in that order, over `build_rule_frames` tables."""
    files, queries, ids, splits = frames["files"], frames["queries"], frames["ids"], frames["splits"]
    results = {"schema": _result("schema", schema_problems(files))}
    results["split_counts"] = _result("split_counts", splits.loc[splits["images"] < 1, "split"].tolist())
    for name, column in FILE_RULE_COLUMNS.items():
        bad = ~files[column].astype(bool)
        results[name] = _result(name, files.loc[bad, "path"].astype(str).tolist())
    shared = ids.loc[ids["person_id"].duplicated(keep=False), "person_id"].drop_duplicates()
    results["train_test_ids_disjoint"] = _result("train_test_ids_disjoint", [str(i) for i in shared])
    lonely = queries.loc[~queries["has_cross_camera_gallery"].astype(bool), "path"].astype(str).tolist()
    results["query_has_cross_camera_gallery"] = _result("query_has_cross_camera_gallery", lonely)
    return [results[name] for name in RULES]


def validate(frame: pd.DataFrame, fmt: str | None = None, *, checks: pd.DataFrame | None = None,
             workers: int | None = None) -> ValidationReport:
    """Check a manifest against every rule with plain pandas (no Great Expectations).

    Pass `checks` (from `compute_file_checks`) to reuse decoded results instead of decoding again.
    """
    fmt = fmt or frame.attrs.get("format")
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    root = str(frame.attrs.get("root", ""))
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        # Without these columns no other rule can be computed: report them as not checked.
        schema = _result("schema", [f"column {c} missing" for c in missing])
        rest = [RuleResult(n, d, False, 0, ["not checked: the manifest schema is broken"])
                for n, d in RULES.items() if n != "schema"]
        return ValidationReport([schema, *rest], {}, fmt, root)
    if checks is None:
        checks = compute_file_checks(frame, fmt, workers=workers)
    frames = build_rule_frames(checks, fmt)
    return ValidationReport(evaluate_rules(frames), split_counts(frame), fmt, root)
