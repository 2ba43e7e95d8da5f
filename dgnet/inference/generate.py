"""`dgnet generate`: a generated re-ID dataset in Market-1501 layout (as DG-Market is for Market-1501).

Each image is G(s_j, a_i): person i's clothes (the appearance donor, whose id it carries) in image
j's pose and place (the structure donor, another person of the same side, whose camera it takes).
The donors' ids are split in two as Market's are: the train side fills bounding_box_train/, the
test side query/ and bounding_box_test/, so the folder passes `dgnet validate` and trains with
`dgnet train-teacher --data OUT`. provenance.csv names both donors of every image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dgnet.data.manifest import _MARKET_DIRS, PATTERN_EXAMPLES, PATTERNS
from dgnet.data.validation import NON_IDENTITY_IDS
from dgnet.errors import ConfigError, DataRuleError
from dgnet.evaluation.pictures import to_pil
from dgnet.inference.extract import MAX_LISTED, find_images, prepare_image
from dgnet.io import atomic_dir, atomic_path, check_replaceable
from dgnet.models.dgnet import DGNet

# The formats whose layout is Market-1501's: file names from (person id, camera, image number).
OUTPUT_NAMES = {"market1501": "{:04d}_c{}s1_{:06d}_00.jpg", "dukemtmc": "{:04d}_c{}_f{:07d}.jpg"}
LAYOUT_FORMATS = tuple(OUTPUT_NAMES)
JPEG_QUALITY = 95


def donor_table(images_dir: str | os.PathLike, fmt: str) -> pd.DataFrame:
    """path, name (relative to the folder), person_id, camera_id of every donor image; junk (-1) and
    distractors (0) are left out. DataRuleError when a name does not follow the pattern."""
    if fmt not in LAYOUT_FORMATS:
        raise ConfigError(f"--format {fmt}: generate writes the Market-1501 layout, whose file names are "
                          f"{' or '.join(LAYOUT_FORMATS)}'s")
    images_dir = Path(images_dir)
    paths = find_images(images_dir)
    matches = [PATTERNS[fmt].match(path.name) for path in paths]
    if offending := [str(path) for path, match in zip(paths, matches, strict=True) if match is None]:
        shown = "\n".join(f"    {p}" for p in offending[:MAX_LISTED])
        raise DataRuleError(f"rule file_names_follow_pattern: {len(offending)} image(s) in {images_dir} do "
                            f"not follow the {fmt} pattern {PATTERN_EXAMPLES[fmt]} (the ids and cameras "
                            f"come from the names):\n{shown}")
    rows = [(str(path), path.relative_to(images_dir).as_posix(), int(match["pid"]), int(match["cam"]))
            for path, match in zip(paths, matches, strict=True)]
    table = pd.DataFrame(rows, columns=["path", "name", "person_id", "camera_id"])
    return table[~table["person_id"].isin(NON_IDENTITY_IDS[fmt])].reset_index(drop=True)


def plan_pairs(donors: pd.DataFrame, pairs: int, test_fraction: float, seed: int) -> pd.DataFrame:
    """One row per image to generate: appearance and structure donor (row numbers of `donors`),
    person id, camera and split. Appearance donors cycle through a shuffled order of all images,
    so that each donates about pairs / len(donors) times."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"--test-fraction {test_fraction}: must lie strictly between 0 and 1 (the "
                          "Market layout needs train ids and query/gallery ids, disjoint)")
    if pairs < 1:
        raise ConfigError(f"--pairs {pairs}: must be >= 1")
    rng = np.random.default_rng(seed)
    ids = np.unique(donors["person_id"].to_numpy())
    num_test = round(len(ids) * test_fraction)
    if num_test < 2 or len(ids) - num_test < 2:
        raise ConfigError(f"generate: {len(ids)} identities among the donor images, {num_test} of them for "
                          "query/gallery: each side needs at least 2 (a structure donor is another person "
                          "of the same side); give more identities or change --test-fraction")
    test_ids = set(rng.permutation(ids)[:num_test].tolist())
    side = np.where(donors["person_id"].isin(test_ids), "test", "train")
    pid = donors["person_id"].to_numpy()
    order = rng.permutation(len(donors))
    appearance = order[np.arange(pairs) % len(donors)]
    structure = np.array([rng.choice(np.flatnonzero((side == side[a]) & (pid != pid[a])))
                          for a in appearance])
    plan = pd.DataFrame({"appearance": appearance, "structure": structure, "person_id": pid[appearance],
                         "camera_id": donors["camera_id"].to_numpy()[structure], "side": side[appearance]})
    plan["split"] = np.where(plan["side"] == "train", "train", "gallery")
    # Market's query: one image per test id and camera, where the id's gallery keeps an image of
    # another camera. Only cameras holding 2+ images of the id give one, so every camera keeps a
    # gallery image; an id seen by 2+ cameras then has its cross-camera match.
    for _, rows in plan[plan["side"] == "test"].groupby("person_id"):
        per_camera = rows.groupby("camera_id")
        for _, cam_rows in per_camera if per_camera.ngroups >= 2 else ():
            if len(cam_rows) >= 2:
                plan.loc[cam_rows.index[0], "split"] = "query"
    if not (plan["split"] == "query").any():
        raise ConfigError(f"generate: {pairs} pairs give no query (no test id has images from two cameras "
                          "with two images in one of them): raise --pairs")
    return plan.drop(columns="side")


def generate_dataset(model: DGNet, image_size: tuple[int, int], images_dir: str | os.PathLike,
                     out_dir: str | os.PathLike, *, fmt: str = "market1501", pairs: int | None = None,
                     test_fraction: float = 0.5, seed: int = 0, batch_size: int = 64,
                     show_progress: bool = True) -> pd.DataFrame:
    """Write the generated dataset to `out_dir` (replaced atomically) and return its provenance table.

    `pairs`: how many images (default: as many as donor images). Images are written at the model's
    input size, `image_size` = (height, width).
    """
    images_dir, out_dir = Path(images_dir).resolve(), Path(out_dir).resolve()
    if images_dir.is_relative_to(out_dir):  # also when they are the same folder
        raise ConfigError(f"--out {out_dir}: would replace the donor images' folder {images_dir}; "
                          "choose another folder")
    check_replaceable(out_dir, "provenance.csv", "generate")
    donors = donor_table(images_dir, fmt)
    plan = plan_pairs(donors, len(donors) if pairs is None else pairs, test_fraction, seed)
    device, folders = next(model.parameters()).device, _MARKET_DIRS
    labels = zip(plan["split"], plan["person_id"], plan["camera_id"], strict=True)
    files = [f"{folders[s]}/{OUTPUT_NAMES[fmt].format(p, c, k)}" for k, (s, p, c) in enumerate(labels)]
    paths = donors["path"].tolist()
    model.eval()
    with atomic_dir(out_dir) as tmp, tqdm(total=len(plan), desc="generate", disable=not show_progress,
                                          dynamic_ncols=True) as bar:
        for folder in folders.values():
            (tmp / folder).mkdir()
        for start in range(0, len(plan), batch_size):
            rows = plan.iloc[start:start + batch_size]

            def batch(column: str, rows: pd.DataFrame = rows) -> torch.Tensor:
                return torch.stack([prepare_image(paths[i], image_size) for i in rows[column]]).to(device)

            with torch.inference_mode():
                appearance = model.appearance_encoder(batch("appearance")).code
                generated = model.decode(model.structure_encoder(batch("structure")), appearance)
            for offset, image in enumerate(generated.float().cpu()):
                to_pil(image, normalized=True).save(tmp / files[start + offset], "JPEG", quality=JPEG_QUALITY)
            bar.update(len(rows))
        provenance = pd.DataFrame({
            "file": files, **{c: plan[c].to_numpy() for c in ("split", "person_id", "camera_id")},
            **{f"{role}_{column}": donors.loc[plan[role], field].to_numpy()
               for role in ("appearance", "structure") for column, field in
               (("source", "name"), ("person_id", "person_id"), ("camera_id", "camera_id"))},
        })
        with atomic_path(tmp / "provenance.csv") as csv:
            provenance.to_csv(csv, index=False)
    return provenance
