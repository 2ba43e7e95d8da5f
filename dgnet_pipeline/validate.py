"""DVC stage and `dgnet validate`: check a re-ID dataset with Great Expectations, then write its manifest.

GX decides the expectations of `dgnet.data.validation.expectations`, tagged with their rule in
`meta`; the pandas engine there decides the same list and must agree (tests/test_validation.py).
Data Docs are built over the results, then made to work offline (`dgnet_pipeline.offline_docs`).

Exit codes: 0 valid (report, docs and manifest CSV written, the manifest's record in the report),
1 a rule failed (report and docs written, no manifest, message on stderr), 2 the dataset could not
be read at all or an output cannot be written (the message names the path).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from dgnet.config import DataConfig, ValidateConfig, section_config
from dgnet.data.manifest import FORMATS, build_manifest
from dgnet.data.validated import publish
from dgnet.data.validation import (
    RULES,
    TABLE_INDEX,
    Expectation,
    RuleResult,
    ValidationReport,
    expectations,
    rule_results,
    table_problems,
    validate,
)
from dgnet.errors import EXIT_DATA_RULE, EXIT_USAGE, ConfigError, DgnetError
from dgnet.io import atomic_dir, check_writable
from dgnet_pipeline.common import load_params, repo_root, resolve, section
from dgnet_pipeline.offline_docs import make_docs_offline

DEFAULTS = ValidateConfig()  # params `validate`: report, docs, manifest
DOCS_SITE = "dgnet"


def _gx_outcome(expectation: Expectation, result: Any) -> tuple[bool, list[str]]:
    """(passed, offending items) of one GX result, in the pandas engine's wording."""
    info = result.exception_info if isinstance(result.exception_info, dict) else {}
    # flat, or keyed by metric when a metric failed (a missing column, say)
    for value in (info, *info.values()):
        if isinstance(value, dict) and value.get("raised_exception"):
            return False, [f"error: {value.get('exception_message')}"]
    if result.success:
        return True, []
    details = result.result or {}
    if "unexpected_index_list" in details:
        column = TABLE_INDEX[expectation.table]
        return False, [str(row[column]) for row in details["unexpected_index_list"]]
    observed = details.get("observed_value")
    if expectation.type == "expect_column_distinct_values_to_contain_set":
        missing = set(details.get("partial_missing_list", []))
        observed = [v for v in expectation.kwargs["value_set"] if v not in missing]
    return False, table_problems(expectation, observed)


def run_gx(tables: dict[str, pd.DataFrame], fmt: str, docs_dir: str | os.PathLike | None = None
           ) -> list[RuleResult]:
    """Decide `expectations(fmt)` on the tables of `rule_tables` with GX, one suite and validation
    definition per table; Data Docs into `docs_dir`."""
    every = expectations(fmt)
    outcomes: dict[int, tuple[Expectation, bool, list[str]]] = {}  # by number in `every`
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with warnings.catch_warnings():  # GX's pandas deprecations and the like
        warnings.simplefilter("ignore")
        import great_expectations as gx  # here: its import takes ~2.5 s
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        source = context.data_sources.add_pandas("dgnet")
        for table in dict.fromkeys(e.table for e in every):
            suite = context.suites.add(gx.ExpectationSuite(name=f"dgnet_{table}", expectations=[
                getattr(gx.expectations, e.type.title().replace("_", ""))(
                    **e.kwargs, meta={"rule": e.rule, "number": number},
                    notes=f"dgnet rule `{e.rule}`: {RULES[e.rule]}")
                for number, e in enumerate(every) if e.table == table]))
            batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("whole")
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(name=f"dgnet_{table}", data=batch, suite=suite))
            # COMPLETE: every offending row, so that a rule of several expectations counts each row once
            run = definition.run(batch_parameters={"dataframe": tables[table]}, result_format={
                "result_format": "COMPLETE", "unexpected_index_column_names": [TABLE_INDEX[table]]})
            for result in run.results:
                number = result.expectation_config.meta["number"]
                outcomes[number] = (every[number], *_gx_outcome(every[number], result))
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
    return rule_results(tables, [outcomes[n] for n in sorted(outcomes)])  # GX has its own order


def gx_validate(frame: pd.DataFrame, fmt: str | None = None, *, measured: pd.DataFrame | None = None,
                docs_dir: str | os.PathLike | None = None, workers: int | None = None) -> ValidationReport:
    """`dgnet.data.validation.validate` with Great Expectations as the engine, and a progress bar."""
    return validate(frame, fmt, measured=measured, workers=workers, progress=True,
                    engine="great_expectations", decide=lambda tables, fmt: run_gx(tables, fmt, docs_dir))


def run_validation(data: str | os.PathLike, fmt: str | None = None, *,
                   report: str | os.PathLike = DEFAULTS.report, docs: str | os.PathLike = DEFAULTS.docs,
                   manifest: str | os.PathLike = DEFAULTS.manifest, include_gt_bbox: bool = False,
                   msmt_include_val: bool = True, workers: int | None = None) -> int:
    """Build, validate and (if valid) publish the manifest of the dataset at `data`; return the exit
    code. The published manifest's record goes into the report (`dgnet.data.validated`)."""
    index = Path(docs) / "index.html"
    try:
        frame = build_manifest(data, fmt, include_gt_bbox=include_gt_bbox, msmt_include_val=msmt_include_val)
        for option, path in {"--report": report, "--manifest": manifest, "--docs": docs}.items():
            check_writable(path, option)
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
    parser.add_argument("--report", type=Path, default=Path(DEFAULTS.report), help="JSON report path")
    parser.add_argument("--docs", type=Path, default=Path(DEFAULTS.docs), help="Data Docs folder")
    parser.add_argument("--manifest", type=Path, default=Path(DEFAULTS.manifest),
                        help="manifest CSV, written only when every rule passes")
    parser.add_argument("--include-gt-bbox", action="store_true",
                        help="add Market's gt_bbox/ as split gt_bbox (outside the standard protocol)")
    parser.add_argument("--no-msmt-val", action="store_true", help="MSMT17: leave list_val.txt out of train")
    parser.add_argument("--workers", type=int, default=None, help="threads decoding images")
    parser.set_defaults(func=lambda args: run_validation(
        args.data, args.format, report=args.report, docs=args.docs, manifest=args.manifest,
        include_gt_bbox=args.include_gt_bbox, msmt_include_val=not args.no_msmt_val, workers=args.workers))
    return parser


def main(argv: list[str] | None = None) -> int:
    """DVC stage: read params.yaml sections `data` and `validate`; paths are relative to the repo root."""
    parser = argparse.ArgumentParser(prog="python -m dgnet_pipeline.validate", description=main.__doc__)
    parser.parse_args(argv)
    try:
        root = repo_root()
        params = load_params(root)
        if "root" not in section(params, "data"):
            raise ConfigError(f"{root / 'params.yaml'}: section data needs a `root`")
        data = section_config(DataConfig, params, "data")
        stage = section_config(ValidateConfig, params, "validate")
    except ConfigError as err:
        print(f"dgnet_pipeline.validate: {err}", file=sys.stderr)
        return 2
    return run_validation(resolve(root, data.root), data.format, report=resolve(root, stage.report),
                          docs=resolve(root, stage.docs), manifest=resolve(root, stage.manifest),
                          include_gt_bbox=data.include_gt_bbox, msmt_include_val=data.msmt_include_val,
                          workers=stage.workers)


if __name__ == "__main__":
    sys.exit(main())
