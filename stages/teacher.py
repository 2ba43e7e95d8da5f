"""DVC stage `teacher`: the re-ID teacher of every seed of params `teacher.seeds` (with `model` and
`mlflow`), tracked in MLflow; dgnet_pipeline/teacher.py says what it writes.

    python stages/teacher.py --out outputs/teacher --metrics reports/metrics/teacher.json

Paths not given are dvc.yaml's (`vars: paths`). Exit codes: 0 done; 2 bad params, missing manifest,
unreachable tracking store, or a training error (MLflow run FAILED, outputs untouched); 130 interrupted.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from dgnet.profiles import read_params
from dgnet_pipeline.common import stage_paths
from dgnet_pipeline.teacher import train_teachers
from dgnet_pipeline.tracking import workspace_root
from dgnet_pipeline.workspace import open_inputs, stage_main


def build_parser() -> argparse.ArgumentParser:
    paths = stage_paths(__file__)
    parser = argparse.ArgumentParser(prog="python stages/teacher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=paths["teacher"], help="the models and teachers.json")
    parser.add_argument("--metrics", type=Path, default=paths["metrics"] / "teacher.json", help="dvc metrics")
    return parser


@stage_main("teacher")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace = workspace_root()
    params = read_params(workspace / "params.yaml")
    configs = {seed: dataclasses.replace(params.teacher, seed=seed) for seed in params.teacher_stage.seeds}
    return train_teachers(open_inputs(workspace, params), args, configs)


if __name__ == "__main__":
    sys.exit(main())
