"""DVC stage `data`: generate the embedded synthetic re-ID dataset from params.yaml `data.synthetic`."""

from __future__ import annotations

import sys

from dgnet.data.synthetic import generate_dataset
from dgnet.errors import DgnetError
from dgnet_pipeline.common import load_params, repo_root, resolve, section


def main() -> int:
    root = repo_root()
    try:
        cfg = section(section(load_params(root), "data"), "synthetic")
        out = resolve(root, cfg["out"])
        factors = generate_dataset(out, seed=int(cfg["seed"]), num_ids=int(cfg["ids"]),
                                   num_cameras=int(cfg["cameras"]))
    except DgnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = factors.groupby("split").size().to_dict()
    print(f"synthetic dataset: {len(factors)} images in {out} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
