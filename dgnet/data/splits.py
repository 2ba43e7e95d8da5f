"""A validation split carved from the training identities, and the guard that keeps the test split out
of whatever is tuned (tuning that scores on query/gallery fits the test set). Held-out ids are laid out
as Market-1501's: per id, each camera with 2+ images gives one query and keeps the rest in the gallery
(a one-image camera: gallery only); the evaluator takes same-id same-camera gallery images for junk,
so every query has a match in each other camera."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import numpy as np
import pandas as pd

from dgnet.data.manifest import listed, train_label_map
from dgnet.data.validation import NON_IDENTITY_IDS
from dgnet.errors import ConfigError, DataRuleError

# A gallery of one identity ranks only its own images: mAP 1 whatever the model. Two ids at least
# on the validation side; two classes at least for the identity losses on the training side.
MIN_VALIDATION_IDS = 2
MIN_TRAIN_IDS = 2
SPLIT_ATTR = "validation_split"  # frame.attrs key of `validation_split`'s summary


def check_fraction(value: Any, where: str = "tune.validation_fraction") -> float:
    """`value` as a float in (0, 1), or ConfigError naming `where` and the rule."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"{where}: must be a number with 0 < {where.rsplit('.', 1)[-1]} < 1 (the share of "
                          f"the training identities held out for validation), got {value!r}")
    return float(value)


def queryable_ids(train: pd.DataFrame) -> list[int]:
    """The ids of `train` (sorted) that can be queried: seen by 2+ cameras, one of them 2+ times."""
    per_camera = train.groupby(["person_id", "camera_id"]).size()
    stats = per_camera.groupby(level="person_id").agg(["size", "max"])
    return sorted(int(pid) for pid in stats.index[(stats["size"] >= 2) & (stats["max"] >= 2)])


def validation_split(manifest: pd.DataFrame, fraction: float, seed: int,
                     where: str = "tune.validation_fraction") -> pd.DataFrame:
    """A manifest-shaped frame of `manifest`'s train rows: round(fraction x ids), seeded, of the
    `queryable_ids` (the others always train) as query and gallery (label -1), the rest as train
    (labels numbered as `build_manifest` does); deterministic in (rows, fraction, seed) whatever the
    row order, frame.attrs[SPLIT_ATTR] its `split_summary`. ConfigError naming `where` when the
    fraction is out of (0, 1) or leaves fewer than MIN_VALIDATION_IDS or MIN_TRAIN_IDS ids."""
    fraction = check_fraction(fraction, where)
    fmt = manifest.attrs.get("format")
    train = manifest[manifest["split"] == "train"].sort_values("path", kind="stable")
    num_ids = int(train["person_id"].nunique())
    eligible = [pid for pid in queryable_ids(train) if pid not in NON_IDENTITY_IDS.get(fmt, (-1, 0))]
    held_count = math.floor(fraction * num_ids + 0.5)  # rounded half up
    if held_count < MIN_VALIDATION_IDS or num_ids - held_count < MIN_TRAIN_IDS:
        raise ConfigError(f"{where}: {fraction} of the {num_ids} training identities holds out "
                          f"{held_count}, leaving {num_ids - held_count} to train on; both sides need "
                          f"at least {MIN_VALIDATION_IDS} (validation) and {MIN_TRAIN_IDS} (training)")
    if held_count > len(eligible):
        raise ConfigError(f"{where}: {fraction} of the {num_ids} training identities is {held_count}, but "
                          f"only {len(eligible)} can be queried (2+ cameras, one with 2+ images); "
                          f"lower the fraction")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    held = {int(pid) for pid in rng.choice(np.asarray(eligible, dtype=np.int64), held_count, replace=False)}
    is_held = train["person_id"].isin(held)
    rest = train[~is_held].copy()
    query_paths = set()
    for (pid, camera), rows in train[is_held].groupby(["person_id", "camera_id"], sort=True):
        if len(rows) >= 2:  # the camera keeps a gallery image: junk for this query, a match for others
            # Seeded per (seed, id, camera): an id's queries do not depend on which others are held out.
            pick = np.random.default_rng(np.random.SeedSequence([seed, 1, int(pid), int(camera)]))
            query_paths.add(rows["path"].iloc[int(pick.integers(len(rows)))])
    evaluation = train[is_held].copy()
    evaluation["split"] = np.where(evaluation["path"].isin(query_paths), "query", "gallery")
    evaluation["label"] = np.int64(-1)
    label_map = train_label_map(rest)
    rest["label"] = rest["person_id"].map(label_map).astype("int64")
    frame = pd.concat([rest, evaluation.sort_values(["split", "path"], ascending=[False, True])],
                      ignore_index=True)
    frame = frame.astype({"split": manifest["split"].dtype})
    frame.attrs = {**manifest.attrs, "label_map": label_map}
    frame.attrs[SPLIT_ATTR] = split_summary(frame, fraction, seed)
    return frame


def split_summary(frame: pd.DataFrame, fraction: float, seed: int) -> dict[str, Any]:
    """What a validation split is, for reports and a study's settings: fraction, seed, id and image
    counts per side, the held-out ids, and a hash of the query file names (which images were drawn)."""
    query, gallery, train = (frame[frame["split"] == s] for s in ("query", "gallery", "train"))
    names = "\n".join(sorted(query["file_name"].astype(str)))
    return {"fraction": fraction, "seed": seed,
            "train_ids": int(train["person_id"].nunique()), "train_images": len(train),
            "validation_ids": int(query["person_id"].nunique()), "query_images": len(query),
            "gallery_images": len(gallery),
            "held_out_ids": sorted(int(p) for p in query["person_id"].unique()),
            "query_sha256": hashlib.sha256(names.encode()).hexdigest()[:16]}


def benchmark_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's test rows: its query and gallery images, what benchmarks report on."""
    return manifest[manifest["split"].isin(("query", "gallery"))]


def check_no_test_images(frame: pd.DataFrame, test: pd.DataFrame, what: str = "tuning") -> None:
    """DataRuleError when `frame` (to train or score on) holds an image of `test` (the manifest's
    query/gallery rows, see `benchmark_rows`) or one of its identities (junk and distractor ids aside)."""
    test_paths = {os.path.normpath(str(p)) for p in test["path"]}
    leaked = sorted({os.path.normpath(str(p)) for p in frame["path"]} & test_paths)
    non_identity = NON_IDENTITY_IDS.get(frame.attrs.get("format"), (-1, 0))
    test_ids = set(test["person_id"].tolist()) - set(non_identity)
    shared = sorted(set(frame["person_id"].tolist()) & test_ids)
    if not leaked and not shared:
        return
    found = [f"{len(leaked)} test image(s): {listed(leaked)}"] if leaked else []
    if shared:
        found.append(f"{len(shared)} test identit{'y' if len(shared) == 1 else 'ies'}: {listed(shared)}")
    raise DataRuleError(f"rule {what}_never_reads_test_split: the data handed to {what} holds "
                        f"{' and '.join(found)} from the benchmark's query/gallery split; {what} trains "
                        f"and scores on the validation split carved from the training identities only")
