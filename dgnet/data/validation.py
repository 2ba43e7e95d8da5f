"""Dataset validation: measured columns, every rule's checks as Great Expectations expectations (GX 1.x
types and kwargs), and the pandas engine that decides them here (the GPU machines lack GX); it must
agree with GX itself (`dgnet_pipeline/validate.py`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm.auto import tqdm

from dgnet.data.manifest import (
    COLUMNS,
    MSMT_TEST_ID_OFFSET,
    NUM_CAMERAS,
    PATTERNS,
    SPLITS,
    STR_COLUMNS,
    check_format,
)

# Plausible person crops: Market images are 128x64, Duke and MSMT17 crops vary, but a crop a few
# pixels tall, wider than twice its height or a whole 4K frame means a broken file or box.
MIN_HEIGHT, MAX_HEIGHT = 16, 2000
MIN_WIDTH, MAX_WIDTH = 8, 1000
MIN_ASPECT, MAX_ASPECT = 0.5, 10.0  # height / width

# name_person_id / name_camera_id: the ids the file name gives (NaN when it does not parse), in the
# manifest's numbering (MSMT17 test ids with their offset).
MEASURED_COLUMNS = ("exists", "decodes", "name_person_id", "name_camera_id", "aspect")
# Market/Duke person ids outside the identity protocol: junk (-1) and distractors (0) may appear in
# any split. MSMT17 has neither: its id 0 is a real person.
NON_IDENTITY_IDS = {"market1501": (-1, 0), "dukemtmc": (-1, 0), "msmt17": ()}
MAX_OFFENDING = 20  # offending items kept per rule in a report
# The column naming a table's offending rows.
TABLE_INDEX = {"files": "path", "queries": "path", "ids": "person_id"}

RULES: dict[str, str] = {
    "schema": f"manifest columns are {', '.join(COLUMNS)} in this order (then the measured columns "
              f"{', '.join(MEASURED_COLUMNS)}), with string, int64, bool and float64 dtypes",
    "split_counts": "the train, query and gallery splits each hold at least one image",
    "files_exist": "every image file listed in the manifest exists",
    "images_decode": "every image decodes fully with PIL (no truncated, corrupt, non-image or missing file)",
    "file_names_follow_pattern": "every file name follows the dataset's naming pattern and agrees with its "
                                 "person_id and camera_id",
    "camera_ids_in_range": "every camera id lies in 1..number of cameras of the dataset (Market 6, Duke 8, "
                           "MSMT17 15)",
    "person_ids_in_range": "every person id is at least -1 (Market/Duke: -1 junk, 0 distractor) or 0 "
                           "(MSMT17)",
    "image_sizes_plausible": f"every image is {MIN_HEIGHT}..{MAX_HEIGHT} px tall, {MIN_WIDTH}..{MAX_WIDTH} "
                             f"px wide, with height/width in {MIN_ASPECT}..{MAX_ASPECT}",
    "train_test_ids_disjoint": "no person id is in both train and query/gallery (Market/Duke junk -1 and "
                               "distractor 0 aside)",
    "query_has_cross_camera_gallery": "every query id has at least one gallery image of the same id from "
                                      "another camera",
}
# What the offending items of each rule are, for messages (every other rule lists file paths).
OFFENDING_KIND = {"schema": "", "split_counts": "split ", "train_test_ids_disjoint": "person id "}
# The dtype pandas gives a string column: "str" on pandas 3, "object" before.
_STR_DTYPE = "str" if isinstance(pd.Series(["a"]).dtype, pd.StringDtype) else "object"
EXPECTED_DTYPES: dict[str, str] = {
    **{c: (_STR_DTYPE if c in STR_COLUMNS else "int64") for c in COLUMNS},
    "exists": "bool", "decodes": "bool", "name_person_id": "float64", "name_camera_id": "float64",
    "aspect": "float64",
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
        return next(result for result in self.rules if result.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "engine": self.engine, "format": self.format, "root": self.root,
                "counts": self.counts, "rules": [asdict(rule) for rule in self.rules]}

    def to_markdown(self, limit: int = 5) -> str:
        """A page a person reads: verdict, counts per split, one table row per rule."""
        lines = [f"# Dataset validation: {'PASSED' if self.ok else 'FAILED'}", "",
                 f"{self.format} at `{self.root}` (engine: {self.engine})", "",
                 "| split | images | ids |", "| --- | ---: | ---: |"]
        lines += [f"| {split} | {c['images']} | {c['ids']} |" for split, c in self.counts.items()]
        lines += ["", "| rule | result | failing | what it checks |", "| --- | --- | ---: | --- |"]
        lines += [f"| `{r.name}` | {'pass' if r.passed else '**FAIL**'} | {r.num_failed} | {r.description} |"
                  for r in self.rules]
        for rule in (r for r in self.rules if not r.passed):
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


def measure_files(frame: pd.DataFrame, fmt: str, *, workers: int | None = None,
                  progress: bool = False) -> pd.DataFrame:
    """The manifest plus the `MEASURED_COLUMNS`, decoded on a thread pool (file reads and libjpeg release
    the GIL); the progress bar is updated from this thread only (tqdm is not thread-safe)."""
    check_format(fmt)
    # A truncated JPEG only fails to load while this PIL global is False; some training code sets it
    # True to survive bad files, so force it off for the check and restore it after.
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with ThreadPoolExecutor(max_workers=workers or min(16, 4 * (os.cpu_count() or 1))) as pool:
            results = list(tqdm(pool.map(_check_file, frame["path"].astype(str).tolist()), total=len(frame),
                                desc="decoding images", dynamic_ncols=True, disable=not progress))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    out = frame.copy()
    out[["exists", "decodes"]] = np.array(results, dtype=bool).reshape(-1, 2)
    parts = frame["file_name"].astype(str).str.extract(PATTERNS[fmt])
    out["name_person_id"] = pd.to_numeric(parts["pid"], errors="coerce").astype("float64")
    if fmt == "msmt17":  # the file name has the original test id, the manifest the offset one
        out["name_person_id"] += np.where(frame["split"].isin(["query", "gallery"]), MSMT_TEST_ID_OFFSET, 0)
    out["name_camera_id"] = pd.to_numeric(parts["cam"], errors="coerce").astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["aspect"] = frame["height"].to_numpy(dtype=np.float64) / frame["width"].to_numpy(dtype=np.float64)
    out.attrs = {**frame.attrs, "format": fmt}
    return out


def split_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{split: {"images": n, "ids": k}} for train, query, gallery (and any other split present)."""
    present = sorted(s for s in frame["split"].unique().tolist() if s not in SPLITS)
    return {split: {"images": int((rows := frame.loc[frame["split"] == split, "person_id"]).size),
                    "ids": int(rows.nunique())} for split in [*SPLITS, *present]}


def rule_tables(files: pd.DataFrame, fmt: str) -> dict[str, pd.DataFrame]:
    """The tables the expectations read: files (`measure_files`' output), queries (per query image its
    gallery images of the same id from another camera) and ids (each identity once per side, train or
    test: an id in both is exactly a duplicated person_id)."""
    split = files["split"]
    query = files.loc[split == "query", ["path", "person_id", "camera_id"]].reset_index(drop=True)
    gallery = files.loc[split == "gallery"]
    same_id = query["person_id"].map(gallery["person_id"].value_counts()).fillna(0)
    pairs = pd.MultiIndex.from_frame(query[["person_id", "camera_id"]])
    same_camera = gallery.groupby(["person_id", "camera_id"]).size().reindex(pairs, fill_value=0).to_numpy()
    query["cross_camera_gallery_images"] = (same_id.to_numpy() - same_camera).astype(np.int64)

    identity = ~files["person_id"].isin(NON_IDENTITY_IDS[fmt])
    sides = {"train": split == "train", "test": split.isin(["query", "gallery"])}
    ids = pd.concat([pd.DataFrame({"person_id": np.unique(files.loc[identity & rows, "person_id"]),
                                   "side": side}) for side, rows in sides.items()])
    ids = ids.astype({"person_id": np.int64, "side": str}).sort_values(["person_id", "side"], kind="stable")
    return {"files": files, "queries": query, "ids": ids.reset_index(drop=True)}


class Expectation(NamedTuple):
    """One Great Expectations expectation (its snake_case type and kwargs) of one rule on one table."""

    rule: str
    table: str
    type: str
    kwargs: dict[str, Any]


def expectations(fmt: str) -> list[Expectation]:
    """Every rule's expectations, in the order of `RULES`."""
    values, pair = "expect_column_values_to_be_", "expect_column_pair_values_to_be_equal"

    def between(rule: str, column: str, low: float, high: float | None = None, table: str = "files") -> tuple:
        return rule, table, values + "between", {"column": column, "min_value": low, "max_value": high}

    columns = [*COLUMNS, *MEASURED_COLUMNS]
    found = [("schema", "files", "expect_table_columns_to_match_ordered_list", {"column_list": columns})]
    found += [("schema", "files", values + "of_type", {"column": c, "type_": t})
              for c, t in EXPECTED_DTYPES.items()]
    found += [
        ("split_counts", "files", "expect_column_distinct_values_to_contain_set",
         {"column": "split", "value_set": list(SPLITS)}),
        ("files_exist", "files", values + "in_set", {"column": "exists", "value_set": [True]}),
        ("images_decode", "files", values + "in_set", {"column": "decodes", "value_set": [True]}),
        ("file_names_follow_pattern", "files", "expect_column_values_to_match_regex",
         {"column": "file_name", "regex": "(?i)" + PATTERNS[fmt].pattern}),
        ("file_names_follow_pattern", "files", pair, {"column_A": "name_person_id", "column_B": "person_id"}),
        ("file_names_follow_pattern", "files", pair, {"column_A": "name_camera_id", "column_B": "camera_id"}),
        between("camera_ids_in_range", "camera_id", 1, NUM_CAMERAS[fmt]),
        between("person_ids_in_range", "person_id", min((*NON_IDENTITY_IDS[fmt], 0))),
        between("image_sizes_plausible", "height", MIN_HEIGHT, MAX_HEIGHT),
        between("image_sizes_plausible", "width", MIN_WIDTH, MAX_WIDTH),
        between("image_sizes_plausible", "aspect", MIN_ASPECT, MAX_ASPECT),
        ("train_test_ids_disjoint", "ids", values + "unique", {"column": "person_id"}),
        between("query_has_cross_camera_gallery", "cross_camera_gallery_images", 1, table="queries"),
    ]
    return [Expectation(*item) for item in found]


def _between(column: pd.Series, kw: dict[str, Any]) -> pd.Series:
    low, high = kw.get("min_value"), kw.get("max_value")
    inside = (column >= (-np.inf if low is None else low)) & (column <= (np.inf if high is None else high))
    return column.notna() & ~inside


# Per row-level expectation type: the rows it fails, as GX computes them (missing values are not
# checked, except by the pair expectation, which skips only rows missing both).
ROW_CHECKS: dict[str, Callable[[pd.DataFrame, dict[str, Any]], pd.Series]] = {
    "expect_column_values_to_be_in_set": lambda t, kw: t[kw["column"]].notna() & ~t[kw["column"]].isin(
        kw["value_set"]),
    "expect_column_values_to_be_between": lambda t, kw: _between(t[kw["column"]], kw),
    "expect_column_values_to_match_regex": lambda t, kw: t[kw["column"]].notna() & t[kw["column"]].astype(
        str).map(re.compile(kw["regex"]).search).isna(),
    "expect_column_pair_values_to_be_equal": lambda t, kw: ~(t[kw["column_A"]] == t[kw["column_B"]]) & ~(
        t[kw["column_A"]].isna() & t[kw["column_B"]].isna()),
    "expect_column_values_to_be_unique": lambda t, kw: t[kw["column"]].notna() & t[kw["column"]].duplicated(
        keep=False),
}


def table_problems(expectation: Expectation, observed: Any) -> list[str]:
    """The offending items of a failed table-level expectation, from what was observed."""
    kw = expectation.kwargs
    if expectation.type == "expect_table_columns_to_match_ordered_list":
        return [f"columns: expected {kw['column_list']}, got {observed}"]
    if expectation.type == "expect_column_values_to_be_of_type":
        return [f"column {kw['column']}: expected dtype {kw['type_']}, got {observed}"]
    return [str(value) for value in kw["value_set"] if value not in set(observed)]  # distinct values ⊇ set


def pandas_outcome(expectation: Expectation, tables: dict[str, pd.DataFrame]) -> tuple[bool, list[str]]:
    """(passed, offending items) of one expectation, decided by pandas."""
    table, kw = tables[expectation.table], expectation.kwargs
    if expectation.type in ROW_CHECKS:
        bad = ROW_CHECKS[expectation.type](table, kw).to_numpy(dtype=bool)
        offending = table.loc[bad, TABLE_INDEX[expectation.table]].astype(str).tolist()
        return not offending, offending
    if expectation.type == "expect_table_columns_to_match_ordered_list":
        observed: Any = list(table.columns)
        passed = observed == kw["column_list"]
    elif expectation.type == "expect_column_values_to_be_of_type":
        observed = str(table[kw["column"]].dtype) if kw["column"] in table else "no such column"
        passed = observed == kw["type_"]
    else:
        observed = table[kw["column"]].unique().tolist()
        passed = set(kw["value_set"]) <= set(observed)
    return passed, [] if passed else table_problems(expectation, observed)


def rule_results(tables: dict[str, pd.DataFrame], outcomes: list[tuple[Expectation, bool, list[str]]]
                 ) -> list[RuleResult]:
    """Each rule's result from its expectations' outcomes (either engine's): offenders once, in order."""
    results = []
    for name, description in RULES.items():
        parts = [(e, passed, items) for e, passed, items in outcomes if e.rule == name]
        if not parts:  # an engine that checked nothing for a rule must not report it as passed
            results.append(RuleResult(name, description, False, 0, ["not checked"]))
            continue
        offending = list(dict.fromkeys(item for _, _, items in parts for item in items))
        if len(offending) > 1 and parts[0][0].type in ROW_CHECKS:
            index = tables[parts[0][0].table][TABLE_INDEX[parts[0][0].table]].astype(str)
            position = dict(zip(reversed(index.tolist()), reversed(range(len(index))), strict=True))
            offending.sort(key=lambda item: position.get(item, -1))
        results.append(RuleResult(name, description, all(p for _, p, _ in parts), len(offending),
                                  offending[:MAX_OFFENDING]))
    return results


def validate(frame: pd.DataFrame, fmt: str | None = None, *, measured: pd.DataFrame | None = None,
             workers: int | None = None, progress: bool = False, engine: str = "pandas",
             decide: Callable[[dict[str, pd.DataFrame], str], list[RuleResult]] | None = None
             ) -> ValidationReport:
    """Check a manifest against every rule: with pandas, or with `decide` (rule tables, format) ->
    results, the engine named `engine`. Pass `measured` (from `measure_files`) to reuse decoded
    results instead of decoding again."""
    fmt = check_format(fmt or frame.attrs.get("format"))
    root = str(frame.attrs.get("root", ""))
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:  # without these columns no other rule can be computed: report them as not checked
        schema = RuleResult("schema", RULES["schema"], False, len(missing),
                            [f"column {c} missing" for c in missing])
        rest = [RuleResult(n, d, False, 0, ["not checked: the manifest schema is broken"])
                for n, d in RULES.items() if n != "schema"]
        return ValidationReport([schema, *rest], {}, fmt, root, engine)
    if measured is None:
        measured = measure_files(frame, fmt, workers=workers, progress=progress)
    tables = rule_tables(measured, fmt)
    results = (decide(tables, fmt) if decide is not None
               else rule_results(tables, [(e, *pandas_outcome(e, tables)) for e in expectations(fmt)]))
    return ValidationReport(results, split_counts(frame), fmt, root, engine)
