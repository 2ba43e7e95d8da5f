"""DVC stage `data`: draw the embedded synthetic re-ID dataset of params `data.synthetic`."""

import argparse
import sys

from dgnet.config import DataConfig, section_config
from dgnet.data.synthetic import generate_dataset
from dgnet.errors import DgnetError
from dgnet_pipeline.common import load_params, repo_root, resolve


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python stages/data.py", description=__doc__).parse_args(argv)
    root = repo_root()
    try:
        cfg = section_config(DataConfig, load_params(root), "data").synthetic
        out = resolve(root, cfg.out)
        factors = generate_dataset(out, seed=cfg.seed, num_ids=cfg.ids, num_cameras=cfg.cameras)
    except DgnetError as exc:
        print(f"stages/data.py: error: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = factors.groupby("split").size().to_dict()
    print(f"synthetic dataset: {len(factors)} images in {out} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
