"""`dgnet` command line: thin sub-commands over the library.

Sub-commands that need the MLOps stack (Great Expectations, MLflow, Optuna) are registered by
the `dgnet_pipeline` package through the `dgnet.commands` entry-point group, so `dgnet/` never imports
that stack and stays usable on machines that only have torch.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from dgnet.errors import DgnetError
from dgnet.inference.cli import add_inference_commands
from dgnet.training.cli import add_setting_options, add_train_commands


def _cmd_synth(args: argparse.Namespace) -> int:
    from dgnet.data.synthetic import generate_dataset

    factors = generate_dataset(args.out, seed=args.seed, num_ids=args.ids, num_cameras=args.cameras)
    counts = factors.groupby("split").size().to_dict()
    print(f"wrote {len(factors)} images to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from dgnet.models.summary import summarize
    from dgnet.profiles import get_profile

    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    print(summarize(get_profile(args.profile, **overrides)))
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    import json

    import yaml

    from dgnet.profiles import DEFAULT_PROFILE, resolve_cli_params, resolved_config, set_iterations

    path = args.params
    if path is None and args.profile is None and Path("params.yaml").is_file():
        path = Path("params.yaml")  # in a workspace: what `dvc repro` trains
    params = resolve_cli_params(path, args.assignments, args.profile, default=DEFAULT_PROFILE)
    if args.iterations is not None:  # as `dgnet train-teacher` / `dgnet train --iterations N` do
        for section in ("teacher", "train"):
            set_iterations(params, section, args.iterations)
    shown = resolved_config(params)
    print(json.dumps(shown, indent=2) if args.format == "json" else
          yaml.safe_dump(shown, sort_keys=False).removesuffix("\n"))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, the pipeline's plug-in commands other than that one are
    listed without loading them (they import the MLOps stack: seconds before any option is read)."""
    parser = argparse.ArgumentParser(prog="dgnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="generate the synthetic re-ID dataset (Market-1501 layout)")
    synth.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--ids", type=int, default=120, help="number of identities (half train, half test)")
    synth.add_argument("--cameras", type=int, default=6)
    synth.set_defaults(func=_cmd_synth)

    summary = sub.add_parser("summary", help="parameter counts and code shapes of a model profile")
    summary.add_argument("--profile", default="paper", help="model profile: paper, cpu, tiny")
    summary.add_argument("--num-classes", type=int, default=None, help="identities of the id heads")
    summary.set_defaults(func=_cmd_summary)

    config = sub.add_parser("config", help="the resolved training configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser(
        "show", help="print every model, teacher and train setting a run gets (profile + params + --set)",
        description="Print the fully resolved configuration in params.yaml's key names: the model's "
                    "fields, the teacher's and DG-Net's after the schedule is scaled to the run's length. "
                    "Default: ./params.yaml when there is one (what `dvc repro` trains), else the cpu "
                    "profile.")
    show.add_argument("--profile", default=None, help="paper, cpu or tiny (default: the params' `profile:`)")
    show.add_argument("--params", type=Path, default=None, metavar="FILE",
                      help="a params file (default: ./params.yaml unless --profile is given)")
    add_setting_options(show)
    show.add_argument("--format", choices=("json", "yaml"), default="yaml")
    show.set_defaults(func=_cmd_config_show)
    add_train_commands(sub)
    add_inference_commands(sub)

    for ep in entry_points(group="dgnet.commands"):
        if command is not None and ep.name != command:
            sub.add_parser(ep.name, help=f"see `dgnet {ep.name} --help`")
            continue
        try:
            ep.load()(sub)
        except ImportError as exc:  # the MLOps stack is absent (e.g. a GPU box with torch only)
            sub.add_parser(ep.name, help=f"unavailable: {exc}").set_defaults(
                func=lambda _args, exc=exc, name=ep.name: _unavailable(name, exc))
    return parser


def _unavailable(name: str, exc: ImportError) -> int:
    print(f"error: `dgnet {name}` needs the pipeline's packages (pip install 'dgnet[pipeline]'): {exc}",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DgnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
