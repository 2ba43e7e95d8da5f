"""DVC stages `warmup`, `train` and `ablation`: one seed of one DG-Net variant (params `train`,
`ablations`, `model`, `mlflow`), tracked in MLflow; dgnet_pipeline/train.py says what it writes.

    python stages/train.py --warmup --seed 0 --teachers outputs/teacher --out outputs/warmup/seed0
    python stages/train.py --seed 0 --fork outputs/warmup/seed0 --out outputs/dgnet/seed0 ...
    python stages/train.py --ablation no_fine --seed 0 --fork outputs/warmup/seed0 ...

Paths not given are dvc.yaml's (`vars: paths`). Exit codes: 0 done; 2 bad params, missing manifest,
teacher or warm-up, unreachable tracking store, or a training error such as a NaN loss (MLflow run
FAILED, outputs untouched); 130 interrupted.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from dgnet.errors import ConfigError
from dgnet.profiles import read_params
from dgnet_pipeline.common import stage_paths
from dgnet_pipeline.tracking import workspace_root
from dgnet_pipeline.train import train_variant, warmup_config
from dgnet_pipeline.workspace import open_inputs, stage_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python stages/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--ablation", metavar="NAME", help="train ablation NAME of params `ablations`")
    parser.add_argument("--seed", type=int, help="the run's seed (default: the first of train.seeds)")
    parser.add_argument("--warmup", action="store_true", help="train the warm-up the variants share")
    parser.add_argument("--fork", type=Path, metavar="DIR", help="start from the warm-up checkpoint in DIR")
    parser.add_argument("--variant", help="the `dgnet.variant` tag of the MLflow run")
    parser.add_argument("--teachers", type=Path, help="the teacher stage's output folder")
    parser.add_argument("--out", type=Path, help="model folder (replaced)")
    parser.add_argument("--metrics", type=Path, help="final metrics JSON (dvc metrics)")
    parser.add_argument("--swap-grid", type=Path, help="where the last swap grid goes")
    parser.add_argument("--registered-model", help="registry name (default: params mlflow.model; '': none)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of params `train` (dotted, YAML value); repeatable")
    parser.set_defaults(section="train")  # the MLflow record's `stage.section`
    return parser


def with_defaults(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """The unset options: dvc.yaml's paths for the warm-up, the full model or an ablation of `seed`."""
    name, paths = args.ablation, stage_paths(__file__)
    if args.warmup and name:
        raise ConfigError("--warmup trains what every variant shares: it takes no --ablation")
    variant = "warmup" if args.warmup else name or "dgnet"
    stem = f"ablation_{name}_seed{seed}" if name else f"{variant}_seed{seed}"
    folder = paths["ablations"] / name if name else paths[variant]
    defaults = {"variant": variant, "out": folder / f"seed{seed}", "teachers": paths["teacher"],
                "metrics": None if args.warmup else paths["metrics"] / f"{stem}.json",
                "swap_grid": paths["figures"] / f"{stem}_swap_grid.png",
                "registered_model": "" if name or args.warmup else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


@stage_main("train")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workspace = workspace_root()
    params = read_params(workspace / "params.yaml", args.ablation, [f"train.{a}" for a in args.assignments])
    seed = params.train_stage.seeds[0] if args.seed is None else args.seed
    args = with_defaults(args, seed)
    cfg = dataclasses.replace(params.train, seed=seed)
    if args.warmup:  # the run up to schedule.warmup_start, which every variant shares
        cfg = warmup_config(cfg)
    return train_variant(open_inputs(workspace, params), args, cfg, params.train_stage)


if __name__ == "__main__":
    sys.exit(main())
