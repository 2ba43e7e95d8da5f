"""DVC stage and `dgnet validate`: check a re-ID dataset with Great Expectations, then write its manifest.

The rules are computed once by `dgnet.data.validation` (per-file check columns and three small
tables); here they become one Great Expectations 1.x suite per table, each expectation tagged
with its rule name in `meta["rule"]`, so this engine reports exactly the rules of the pandas engine.

A Checkpoint feeds the same `batch_parameters` (hence the same dataframe) to all its validation
definitions, so each table gets its own Checkpoint; Data Docs are built once, over all four
results, into a filesystem site at the chosen folder, then made to work offline (their CDN assets
copied from pinned packages beside them: `dgnet_pipeline.offline_docs`).

Exit codes: 0 valid (report, docs and manifest CSV written, the manifest's record in the report),
1 a rule failed (report and docs written, no manifest, message on stderr), 2 the dataset could not
be read at all or an output cannot be written (the message names the path).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from dgnet.data.manifest import FORMATS, build_manifest
from dgnet.data.validated import publish
from dgnet.data.validation import (
    CHECK_COLUMNS,
    COLUMNS,
    EXPECTED_DTYPES,
    FILE_RULE_COLUMNS,
    MAX_OFFENDING,
    RULES,
    RuleResult,
    ValidationReport,
    build_rule_frames,
    compute_file_checks,
    split_counts,
)
from dgnet.errors import EXIT_DATA_RULE, EXIT_USAGE, ConfigError, DatasetError, DgnetError, OutputError
from dgnet.io import atomic_dir
from dgnet_pipeline.common import load_params, repo_root, resolve, section
from dgnet_pipeline.offline_docs import make_docs_offline

DEFAULT_REPORT = "reports/validation.json"
DEFAULT_DOCS = "reports/gx_docs"
DEFAULT_MANIFEST = "data/manifest.csv"
DOCS_SITE = "dgnet"

# The column GX names offending rows by, per table (see dgnet.data.validation.build_rule_frames).
TABLE_INDEX = {"files": "path", "queries": "path", "ids": "person_id", "splits": "split"}


def _import_gx() -> Any:
    """Import Great Expectations quietly: it is slow (~2.5 s), so only when a validation runs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute GX's warnings (pandas 3 deprecations and the like) while it runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _suites(gx: Any) -> dict[str, Any]:
    """One ExpectationSuite per table; every expectation carries its rule name in meta."""
    gxe = gx.expectations

    def tag(rule: str) -> dict[str, Any]:
        return {"meta": {"rule": rule}, "notes": f"dgnet rule `{rule}`: {RULES[rule]}"}

    columns = [*COLUMNS, *CHECK_COLUMNS]
    files = [gxe.ExpectTableColumnsToMatchOrderedList(column_list=columns, **tag("schema"))]
    files += [gxe.ExpectColumnValuesToBeOfType(column=column, type_=dtype, **tag("schema"))
              for column, dtype in EXPECTED_DTYPES.items()]
    files += [gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True], **tag(rule))
              for rule, column in FILE_RULE_COLUMNS.items()]
    expectations = {
        "files": files,
        "queries": [gxe.ExpectColumnValuesToBeInSet(column="has_cross_camera_gallery", value_set=[True],
                                                    **tag("query_has_cross_camera_gallery"))],
        # One row per id and side: an id in both train and test is a duplicated person_id.
        "ids": [gxe.ExpectColumnValuesToBeUnique(column="person_id", **tag("train_test_ids_disjoint"))],
        "splits": [gxe.ExpectColumnValuesToBeBetween(column="images", min_value=1, **tag("split_counts"))],
    }
    suites = {}
    for table, items in expectations.items():
        suite = gx.ExpectationSuite(name=f"dgnet_{table}")
        for order, expectation in enumerate(items):
            # GX returns results in its own order: keep ours, so that both engines list problems alike
            expectation.meta["order"] = order
            suite.add_expectation(expectation)
        suites[table] = suite
    return suites


def _exception_message(info: Any) -> str | None:
    """The message of an exception GX caught, if any: `info` is flat, or keyed by metric when a
    metric failed (a missing column, say)."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _offending(rule: str, table: str, config: Any, result: Any) -> list[str]:
    """Offending items of one failed expectation, in the pandas engine's wording."""
    error = _exception_message(result.exception_info)
    if error is not None:
        return [f"error: {error}"]
    details = result.result or {}
    kwargs, observed = config.kwargs, details.get("observed_value")
    if rule == "schema":
        if "column_list" in kwargs:
            return [f"columns: expected {list(kwargs['column_list'])}, got {observed}"]
        return [f"column {kwargs['column']}: expected dtype {kwargs['type_']}, got {observed}"]
    if rule == "train_test_ids_disjoint":
        return [str(v) for v in dict.fromkeys(details.get("partial_unexpected_list", []))]
    return [str(row[TABLE_INDEX[table]]) for row in details.get("partial_unexpected_index_list", [])]


def _num_failed(rule: str, result: Any, offending: list[str]) -> int:
    if rule == "schema" or "unexpected_count" not in (result.result or {}):
        return len(offending)
    if rule == "train_test_ids_disjoint":
        return int(result.result["unexpected_count"]) // 2  # each shared id is one train + one test row
    return int(result.result["unexpected_count"])


def run_gx(frames: dict[str, pd.DataFrame], docs_dir: str | os.PathLike | None = None) -> list[RuleResult]:
    """Check the tables of `build_rule_frames` with GX; build Data Docs into `docs_dir` if given."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with _quiet():
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas("dgnet")
        rule_results: dict[str, list[tuple[bool, list[str], int]]] = {name: [] for name in RULES}
        for table, suite in _suites(gx).items():
            batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
            suite = context.suites.add(suite)
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"dgnet_{table}", data=batch, suite=suite))
            result_format = {
                "result_format": "SUMMARY",
                "unexpected_index_column_names": [TABLE_INDEX[table]],
                # the ids table lists each shared id twice
                "partial_unexpected_count": 2 * MAX_OFFENDING if table == "ids" else MAX_OFFENDING,
            }
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=f"dgnet_{table}", validation_definitions=[definition], result_format=result_format))
            outcome = checkpoint.run(batch_parameters={"dataframe": frames[table]})
            for suite_result in outcome.run_results.values():
                for result in sorted(suite_result.results, key=lambda r: r.expectation_config.meta["order"]):
                    rule = result.expectation_config.meta["rule"]
                    offending = [] if result.success else _offending(
                        rule, table, result.expectation_config, result)
                    rule_results[rule].append((bool(result.success), offending,
                                               0 if result.success else _num_failed(rule, result, offending)))
        if docs_dir is not None:
            with atomic_dir(docs_dir) as tmp:
                context.add_data_docs_site(site_name=DOCS_SITE, site_config={
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                      "base_directory": str(Path(tmp).resolve())},
                })
                context.build_data_docs(site_names=[DOCS_SITE])
                make_docs_offline(tmp)

    results = []
    for name, description in RULES.items():
        parts = rule_results[name]
        if not parts:  # an engine that checked nothing for a rule must not report it as passed
            results.append(RuleResult(name, description, False, 0, ["not checked by Great Expectations"]))
            continue
        offending = [item for _, items, _ in parts for item in items]
        results.append(RuleResult(name, description, all(ok for ok, _, _ in parts),
                                  sum(n for _, _, n in parts), offending[:MAX_OFFENDING]))
    return results


def gx_validate(frame: pd.DataFrame, fmt: str | None = None, *, checks: pd.DataFrame | None = None,
                docs_dir: str | os.PathLike | None = None, workers: int | None = None) -> ValidationReport:
    """Like `dgnet.data.validation.validate`, with Great Expectations as the engine."""
    fmt = fmt or frame.attrs.get("format")
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if checks is None:
        checks = _compute_checks(frame, fmt, workers)
    results = run_gx(build_rule_frames(checks, fmt), docs_dir)
    return ValidationReport(results, split_counts(frame), fmt, str(frame.attrs.get("root", "")),
                            engine="great_expectations")


def _compute_checks(frame: pd.DataFrame, fmt: str, workers: int | None) -> pd.DataFrame:
    """compute_file_checks with a progress bar: a full decode of Market takes a few seconds."""
    with tqdm(total=len(frame), desc="decoding images", dynamic_ncols=True) as bar:
        return compute_file_checks(frame, fmt, workers=workers, progress=bar.update)


def run_validation(data: str | os.PathLike, fmt: str | None = None, *,
                   report: str | os.PathLike = DEFAULT_REPORT, docs: str | os.PathLike = DEFAULT_DOCS,
                   manifest: str | os.PathLike = DEFAULT_MANIFEST, include_gt_bbox: bool = False,
                   msmt_include_val: bool = True, workers: int | None = None) -> int:
    """Build, validate and (if valid) publish the manifest of the dataset at `data`; return an exit code
    (see `dgnet.errors`: 1 a rule failed, 2 the dataset cannot be read or an output cannot be written).

    A published manifest's record (hash, per-split counts) goes into the report, and training
    refuses a manifest that no longer matches it (`dgnet.data.validated`)."""
    index = Path(docs) / "index.html"
    try:
        frame = build_manifest(data, fmt, include_gt_bbox=include_gt_bbox, msmt_include_val=msmt_include_val)
        _check_writable(report, manifest, docs)
        result = gx_validate(frame, frame.attrs["format"], docs_dir=docs, workers=workers)
        publish(frame, result, report, manifest, extra={"data_docs": str(index)})
    except DgnetError as err:
        print(f"dgnet validate: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a symlink loop, a folder that vanished: name the path, no traceback
        print(f"dgnet validate: cannot read or write {err.filename or data}: {err.strerror or err}",
              file=sys.stderr)
        return EXIT_USAGE
    if not result.ok:
        print(result.failure_message(), file=sys.stderr)
        print(f"report: {report}; data docs: {index}; manifest {manifest} not written", file=sys.stderr)
        return EXIT_DATA_RULE
    sizes = ", ".join(f"{split} {c['images']} images / {c['ids']} ids" for split, c in result.counts.items())
    print(f"dataset valid ({result.format}: {sizes}); {len(result.rules)} rules passed")
    print(f"manifest: {manifest}; report: {report}; data docs: {index}")
    return 0


def _check_writable(*paths: str | os.PathLike) -> None:
    """OutputError naming the first path whose folder cannot be created or written, before any work."""
    for path in paths:
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the folder {folder} of {path}: {exc.strerror or exc}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write {path}: its folder {folder} is not writable; "
                              "choose a folder you can write to")


def _command(args: argparse.Namespace) -> int:
    return run_validation(args.data, args.format, report=args.report, docs=args.docs, manifest=args.manifest,
                          include_gt_bbox=args.include_gt_bbox, msmt_include_val=not args.no_msmt_val,
                          workers=args.workers)


def add_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `dgnet validate` on the CLI's sub-parsers (entry point group `dgnet.commands`)."""
    parser = subparsers.add_parser(
        "validate", help="check a re-ID dataset with Great Expectations and write its manifest",
        description="Parse a Market-1501 / DukeMTMC-reID / MSMT17 folder, check every rule with Great "
                    "Expectations, write a JSON report and Data Docs, and the manifest CSV if all rules "
                    "pass. "
                    "Exit 0 valid, 1 a rule failed, 2 the dataset cannot be read.")
    parser.add_argument("--data", required=True, type=Path, help="dataset root folder")
    parser.add_argument("--format", choices=FORMATS, default=None, help="dataset format (default: detect)")
    parser.add_argument("--report", type=Path, default=Path(DEFAULT_REPORT), help="JSON report path")
    parser.add_argument("--docs", type=Path, default=Path(DEFAULT_DOCS), help="Data Docs folder")
    parser.add_argument("--manifest", type=Path, default=Path(DEFAULT_MANIFEST),
                        help="manifest CSV, written only when every rule passes")
    parser.add_argument("--include-gt-bbox", action="store_true",
                        help="add Market's gt_bbox/ as split gt_bbox (outside the standard protocol)")
    parser.add_argument("--no-msmt-val", action="store_true", help="MSMT17: leave list_val.txt out of train")
    parser.add_argument("--workers", type=int, default=None, help="threads decoding images")
    parser.set_defaults(func=_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """DVC stage: read params.yaml sections `data` and `validate`; paths are relative to the repo root."""
    parser = argparse.ArgumentParser(prog="python -m dgnet_pipeline.validate", description=main.__doc__)
    parser.parse_args(argv)
    try:
        root = repo_root()
        params = load_params(root)
        data, stage = section(params, "data"), params.get("validate") or {}
        if "root" not in data:
            raise ConfigError(f"{root / 'params.yaml'}: section data needs a `root`")
    except ConfigError as err:
        print(f"dgnet_pipeline.validate: {err}", file=sys.stderr)
        return 2
    fmt = data.get("format")
    return run_validation(
        resolve(root, data["root"]), None if fmt in (None, "", "auto") else fmt,
        report=resolve(root, stage.get("report", DEFAULT_REPORT)),
        docs=resolve(root, stage.get("docs", DEFAULT_DOCS)),
        manifest=resolve(root, stage.get("manifest", DEFAULT_MANIFEST)),
        include_gt_bbox=bool(data.get("include_gt_bbox", False)),
        msmt_include_val=bool(data.get("msmt_include_val", True)), workers=stage.get("workers"))


if __name__ == "__main__":
    sys.exit(main())
