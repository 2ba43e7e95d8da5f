"""DVC stage `evaluate`: benchmark every trained model (params `evaluate`, `ablations`,
`train.seeds`) and write the report, the metrics, the CMC plot and the figures; tracked in MLflow.
dgnet_pipeline/evaluate.py says what each output holds. Paths not given are dvc.yaml's."""

import argparse
import dataclasses
import sys
from pathlib import Path

from dgnet.profiles import read_params
from dgnet_pipeline.evaluate import Paths, evaluate_models
from dgnet_pipeline.tracking import workspace_root
from dgnet_pipeline.workspace import stage_main


def build_parser() -> argparse.ArgumentParser:
    defaults = Paths.of_dvc(__file__)
    parser = argparse.ArgumentParser(prog="python stages/evaluate.py", description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Paths):
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name}", type=Path, default=default, metavar="PATH",
                            help=f"default: {default}")
    return parser


@stage_main("evaluate", interrupted="re-run to evaluate again")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace = workspace_root()
    return evaluate_models(workspace, read_params(workspace / "params.yaml"), Paths(**vars(args)))


if __name__ == "__main__":
    sys.exit(main())
