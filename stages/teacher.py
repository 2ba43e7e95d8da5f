"""DVC stage `teacher`: the re-ID teacher of every seed of params `teacher.seeds` (with `model` and
`mlflow`), tracked in MLflow; dgnet_pipeline/teacher.py says what it writes.

    python stages/teacher.py --out outputs/teacher --metrics reports/metrics/teacher.json

Paths not given are dvc.yaml's (`vars: paths`). Exit codes: 0 done; 2 bad params, missing manifest,
unreachable tracking store, or a training error (MLflow run FAILED, outputs untouched); 130 interrupted.
"""

import argparse
import sys
from pathlib import Path

from dgnet.config import TeacherTrainConfig, build_train_config
from dgnet_pipeline.common import section, stage_paths
from dgnet_pipeline.teacher import train_teachers
from dgnet_pipeline.workspace import open_inputs, read_params, stage_main


def build_parser() -> argparse.ArgumentParser:
    paths = stage_paths(__file__)
    parser = argparse.ArgumentParser(prog="python stages/teacher.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=paths["teacher"], help="the models and teachers.json")
    parser.add_argument("--metrics", type=Path, default=paths["metrics"] / "teacher.json", help="dvc metrics")
    return parser


@stage_main("teacher")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace, params = read_params()
    values = section(params, "teacher")
    stage = build_train_config(TeacherTrainConfig, values, "teacher")[1]
    configs = {seed: build_train_config(TeacherTrainConfig, values, "teacher", fixed={"seed": seed})[0]
               for seed in stage.seeds}
    return train_teachers(open_inputs(workspace, params), args, configs)


if __name__ == "__main__":
    sys.exit(main())
