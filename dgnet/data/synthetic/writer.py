"""Writing a synthetic dataset in Market-1501 layout (replacing a previous one atomically), and
reading its factors back."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from dgnet.data.synthetic.factors import COLUMNS, SPLIT_DIRS, sample_factors
from dgnet.data.synthetic.render import render
from dgnet.errors import DatasetError
from dgnet.io import atomic_dir, check_replaceable

JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4, always the same, so re-encoding a render gives identical bytes


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of an HxWx3 uint8 image, with the dataset's fixed quality and subsampling."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def decode_jpeg(data: bytes | str | os.PathLike) -> np.ndarray:
    """Decode JPEG bytes or a file into an HxWx3 uint8 array."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data) as im:
        return np.asarray(im.convert("RGB"))


def generate_dataset(out_dir: str | os.PathLike, **sampling: Any) -> pd.DataFrame:
    """Render the dataset of `sample_factors(**sampling)` into `out_dir`, replacing it atomically;
    returns the factors table, also written to `out_dir/factors.csv`."""
    table = sample_factors(**sampling)
    out = Path(out_dir)
    check_replaceable(out, "factors.csv", "synth")
    with atomic_dir(out) as tmp:
        for folder in SPLIT_DIRS.values():
            (tmp / folder).mkdir()
        for row in table.to_dict("records"):
            (tmp / row["path"]).write_bytes(encode_jpeg(render(row)[0]))
        table.to_csv(tmp / "factors.csv", index=False)
    return table


def read_factors(root: str | os.PathLike) -> pd.DataFrame:
    """Read `root/factors.csv` back, exactly as written (floats round-trip, 'none' stays a string)."""
    path = Path(root) / "factors.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a synthetic dataset folder holds factors.csv")
    table = pd.read_csv(path, float_precision="round_trip", keep_default_na=False)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"{path}: lacks the columns {', '.join(missing)}")
    return table
