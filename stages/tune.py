"""DVC stage `tune` of tuning/dvc.yaml (and `dgnet tune`): the Optuna study of DG-Net's loss weights
(params `tune`), every trial tracked in MLflow; dgnet_pipeline/tune.py says what it does and writes.

    python stages/tune.py                                   # run or resume the study (params tune.*)
    python stages/tune.py --storage postgresql+psycopg://user:password@host/db   # one of many workers
    python stages/tune.py --apply params/tuned.yaml         # copy the tuned weights into params.yaml

Exit codes: 0 done; 1 a test image in a trial's data; 2 bad params, data, storage or tracking store, a
study resumed with other settings, too many failed trials; 130 interrupted (re-run to go on).
"""

import argparse
import sys

from dgnet_pipeline.tune import add_arguments, command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python stages/tune.py", description=__doc__.splitlines()[0])
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    return command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
