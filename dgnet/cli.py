"""`dgnet` command line: thin sub-commands over the library.

Sub-commands that need the MLOps stack (Great Expectations, MLflow, Optuna) are registered by
the `stages` package through the `dgnet.commands` entry-point group, so `dgnet/` never imports
that stack and stays usable on machines that only have torch.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path

from dgnet.errors import DgnetError


def _cmd_synth(args: argparse.Namespace) -> int:
    from dgnet.data.synthetic import generate_dataset

    factors = generate_dataset(args.out, seed=args.seed, num_ids=args.ids, num_cameras=args.cameras)
    counts = factors.groupby("split").size().to_dict()
    print(f"wrote {len(factors)} images to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from dgnet.models.config import get_profile
    from dgnet.models.summary import summarize

    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    print(summarize(get_profile(args.profile, **overrides)))
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    from dgnet.training.cli import add_train_commands

    add_train_commands(sub)

    from dgnet.inference.cli import add_inference_commands

    add_inference_commands(sub)

    for ep in entry_points(group="dgnet.commands"):
        try:
            add_command = ep.load()
        except ImportError as exc:  # the MLOps stack is absent (e.g. a GPU box with torch only)
            sub.add_parser(ep.name, help=f"unavailable: {exc}").set_defaults(
                func=lambda _args, exc=exc, name=ep.name: _unavailable(name, exc))
            continue
        add_command(sub)
    return parser


def _unavailable(name: str, exc: ImportError) -> int:
    print(f"error: `dgnet {name}` needs the full install (pip install dgnet): {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
