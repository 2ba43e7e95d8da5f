"""The manifest training may read: validated, unchanged since, and cheaply re-checked at load. Its
`manifest_record` (SHA-256, per split and column counts and hashes) in the validation report names
what changed when `read_validated_manifest` refuses it; `check_invariants` re-checks the cheap rules
just before training, whether it validated first (`--data DIR`) or read a manifest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dgnet.data.manifest import (
    FORMATS,
    build_manifest,
    listed,
    mislabelled_train_rows,
    read_manifest,
    write_manifest,
)
from dgnet.data.validation import ValidationReport, expectations, pandas_outcome, rule_tables, validate
from dgnet.errors import DataRuleError, DatasetError
from dgnet.io import atomic_path, output_errors, write_json

RECORD_KEY = "manifest_record"
DEFAULT_REPORT = Path("reports") / "validation.json"


def _sha256(lines: Iterable[str]) -> str:
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def manifest_record(path: str | os.PathLike) -> dict[str, Any]:
    """What validation vouches for: the file's SHA-256, its rows, and per split and column a hash. Read
    as text, as stored (relative paths stay relative), so a checkout moved elsewhere still matches."""
    with open(path, "rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    splits = {}
    if "split" in table.columns:
        for split, rows in table.groupby("split", sort=True):
            ids = rows["person_id"].nunique() if "person_id" in rows.columns else 0
            splits[str(split)] = {"images": len(rows), "ids": int(ids),
                                  "sha256": _sha256(",".join(r) for r in rows.itertuples(index=False))}
    return {"sha256": sha256, "rows": len(table),
            "columns": {c: _sha256(table[c].tolist()) for c in table.columns}, "splits": splits}


def record_differences(validated: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two manifest records, in words (empty when the files are identical)."""
    if validated.get("sha256") == current.get("sha256"):
        return []
    found = []
    if validated.get("rows") != current.get("rows"):
        found.append(f"{current.get('rows')} rows, validated {validated.get('rows')}")
    old_splits, new_splits = validated.get("splits", {}), current.get("splits", {})
    for split in sorted(set(old_splits) | set(new_splits)):
        old, new = old_splits.get(split), new_splits.get(split)
        if old is None:
            found.append(f"split {split!r} is new ({new['images']} images)")
        elif new is None:
            found.append(f"split {split!r} is gone (validated with {old['images']} images)")
        elif old != new:
            counts = [f"{new[k]} {k} (validated {old[k]})" for k in ("images", "ids") if old[k] != new[k]]
            found.append(f"split {split!r}: " + (", ".join(counts) if counts else "same counts, rows differ"))
    old_columns, new_columns = validated.get("columns", {}), current.get("columns", {})
    if list(old_columns) != list(new_columns):
        found.append(f"columns {list(new_columns)}, validated {list(old_columns)}")
    if changed := [c for c in new_columns if c in old_columns and old_columns[c] != new_columns[c]]:
        found.append("values changed in column(s) " + ", ".join(changed))
    return found or ["the file's bytes differ (same rows and values: formatting only)"]


def read_validated_manifest(manifest: str | os.PathLike, report: str | os.PathLike | None = None
                            ) -> pd.DataFrame:
    """The manifest (paths absolute, the report's format in frame.attrs, its invariants checked) once
    it matches the record of its validation report (by default reports/validation.json in its folder
    or the nearest above). DatasetError (exit 2) when there is no usable report, DataRuleError (exit
    1) naming what changed since validation."""
    manifest = Path(manifest)
    how = "run `dgnet validate --data DIR --manifest ...` (or `dvc repro validate`), or train with --data DIR"
    if not manifest.is_file():
        raise DatasetError(f"manifest {manifest} does not exist; {how}")
    above = (folder / DEFAULT_REPORT for folder in manifest.resolve().parents)
    report_path = Path(report) if report is not None else next((p for p in above if p.is_file()), None)
    if report_path is None:
        raise DatasetError(f"manifest {manifest}: no validation report found ({DEFAULT_REPORT} in its folder "
                           f"or above; name one with --validation-report); {how}")
    if not report_path.is_file():
        raise DatasetError(f"validation report {report_path} does not exist; {how}")
    try:
        content = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"validation report {report_path} cannot be read ({exc}); {how}") from exc
    record = content.get(RECORD_KEY) if isinstance(content, dict) else None
    if not isinstance(record, dict) or not content.get("ok"):
        raise DatasetError(f"validation report {report_path} records no validated manifest (the dataset "
                           f"failed validation, or an older dgnet wrote it); {how}")
    if differences := record_differences(record, manifest_record(manifest)):
        raise DataRuleError(
            f"manifest {manifest} changed since validation (report {report_path}, manifest "
            f"{content.get('manifest')}): " + "; ".join(differences) + f"; nothing trains on data that "
            f"has not passed validation: {how}")
    frame = read_manifest(manifest, "run `dgnet validate`")
    if content.get("format") in FORMATS:
        frame.attrs["format"] = content["format"]
    check_invariants(frame)
    return frame


def check_invariants(frame: pd.DataFrame, fmt: str | None = None) -> None:
    """DataRuleError naming the rule and its first offenders unless every image file is present, no id
    is in both train and query/gallery, and the train labels are the ids numbered 0..C-1 in order."""
    fmt = fmt or frame.attrs.get("format") or "market1501"  # unknown: Market/Duke's junk and distractors

    def stop(rule: str, what: str, items: list[str]) -> None:
        if items:
            raise DataRuleError(f"manifest rule {rule}: {len(items)} {what}: {listed(items)}")

    tables = rule_tables(frame.assign(exists=frame["path"].astype(str).map(os.path.isfile)), fmt)
    what = {"files_exist": "listed image file(s) do not exist",
            "train_test_ids_disjoint": "person id(s) in both train and query/gallery"}
    for expectation in expectations(fmt):
        if expectation.rule in what:
            offending = pandas_outcome(expectation, tables)[1]
            stop(expectation.rule, what[expectation.rule], list(dict.fromkeys(offending)))
    stop("labels", "train label(s) are not the person ids numbered 0..C-1 in sorted order",
         mislabelled_train_rows(frame)["path"].astype(str).tolist())
    not_train = frame.loc[(frame["split"] != "train") & (frame["label"].to_numpy() != -1), "path"]
    stop("labels", "query/gallery rows must have label -1", not_train.astype(str).tolist())


def publish(frame: pd.DataFrame, result: ValidationReport, report: str | os.PathLike,
            manifest: str | os.PathLike | None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the report (JSON and .md beside it) and, when every rule passed, the manifest first with
    its record in the report. OutputError names a path that cannot be written."""
    content = {**result.to_dict(), **(extra or {}),
               "manifest": str(manifest) if result.ok and manifest is not None else None}
    with output_errors("validation", report):
        if result.ok and manifest is not None:
            write_manifest(frame, manifest)
            content[RECORD_KEY] = manifest_record(manifest)
        write_json(report, content)
        with atomic_path(Path(report).with_suffix(".md")) as tmp:
            tmp.write_text(result.to_markdown())
    return content


def validate_dataset(data: str | os.PathLike, fmt: str | None = None, *, report: str | os.PathLike,
                     manifest: str | os.PathLike | None = None, workers: int | None = None) -> pd.DataFrame:
    """Build the manifest of the dataset at `data`, check every rule (pandas engine), write the report
    (and the manifest when given), return the manifest; DataRuleError listing the failed rules."""
    frame = build_manifest(data, fmt)
    result = validate(frame, frame.attrs["format"], workers=workers)
    publish(frame, result, report, manifest)
    if not result.ok:
        raise DataRuleError(f"{result.failure_message()}\nreport: {report}; nothing was trained")
    check_invariants(frame)
    return frame

