"""Benchmark one trained model: re-ID at several query alphas, generation quality, pictures.

Features are extracted once per model; the alpha sweep only rescales the queries' fine-grained
half (docs/method.md section 5). Generation figures stand beside trivial baselines on the same
pairs and images (copying a donor unchanged; the mean training image, a 4x blur), which depend on
the data and the image size only: one `GenerationReference` per size, shared (`references`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from dgnet.data.datasets import EvalImages
from dgnet.data.synthetic import read_factors
from dgnet.data.transforms import denormalize
from dgnet.errors import DatasetError
from dgnet.evaluation.evaluate import query_and_gallery
from dgnet.evaluation.features import extract_features, scale_fine_half
from dgnet.evaluation.generation import (
    blur_l1,
    fid,
    image_l1,
    mean_image,
    mean_image_l1,
    ssim_diversity,
    swap_fidelity,
    swap_ground_truth,
)
from dgnet.evaluation.pictures import ranked_list, save, swap_grid
from dgnet.evaluation.rank import rank_metrics, rank_metrics_from_features, scalar_metrics
from dgnet.evaluation.reranking import k_reciprocal_rerank
from dgnet.io import atomic_path, write_json
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model

# Query-side weights on the fine-grained half; "fine_only" drops the primary half instead.
DEFAULT_ALPHAS = (0.0, 0.5, 1.0)
DEFAULT_NUM_SWAPS = 512  # test pairs behind the swap figures and their copy baselines (report: >= 500)
DEFAULT_NUM_RECON = 2048  # test images behind recon_l1: all of them when fewer (the synthetic set: 520)
DECODE_BATCH = 32
BLUR_FACTOR = 4
MAIN_ALPHA = 0.5  # the query alpha of the pictures and of re-ranking (the paper's)


@dataclass
class ModelBenchmark:
    """Everything measured on one model."""

    name: str
    kind: str  # "teacher" or "dgnet"
    reid: dict[str, dict[str, float]] = field(default_factory=dict)  # setting -> metrics
    cmc: dict[str, list[float]] = field(default_factory=dict)  # setting -> CMC curve
    generation: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Image.Image] = field(default_factory=dict)
    trained_on: str = ""  # where its training ran (the model file's record; "" when it has none)

    def flat_metrics(self) -> dict[str, float]:
        """`setting/metric` -> value, plus `generation/...` (nested keys joined by '/'): for metrics files."""
        flat = {f"{setting}/{k}": v for setting, m in self.reid.items() for k, v in m.items()}
        flat |= _flatten_numbers(self.generation, "generation")
        return flat


def _flatten_numbers(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a nested dict under '/'-joined keys; strings, None and bools are left out."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten_numbers(value, f"{prefix}/{key}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = value
    return flat


def benchmark_model(
    path: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    rerank: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    ranked_queries: int = 6,
    data_root: str | os.PathLike | None = None,
    num_swaps: int = DEFAULT_NUM_SWAPS,
    inception_weights: str | os.PathLike | None = None,
    seed: int = 0,
    num_recon: int = DEFAULT_NUM_RECON,
    references: dict[tuple[Any, ...], GenerationReference] | None = None,
) -> ModelBenchmark:
    """Benchmark the model file at `path` on the manifest `frame`'s query and gallery splits.

    A DG-Net model is ranked at each query alpha and with the fine-grained half alone; a teacher
    once ("baseline"). A synthetic `data_root` (factors.csv) adds swap fidelity against the exact
    ground truth. `references`: a dict shared by one evaluation's calls (see `cached_reference`).
    """
    device = torch.device(device)
    model, info = load_model(path, map_location=device)
    size = (info.config.image_height, info.config.image_width)
    q_images, g_images = query_and_gallery(frame, size)
    result = ModelBenchmark(name or Path(path).parent.name, info.kind,
                            trained_on=str(info.extra.get("trained_on", "")))
    q_feat, g_feat = (extract_features(model, DataLoader(x, batch_size=batch_size, num_workers=num_workers),
                                       device=device) for x in (q_images, g_images))
    ids = (q_images.person_ids, q_images.cameras, g_images.person_ids, g_images.cameras)

    two_headed = isinstance(model, DGNet)
    settings = {"baseline": q_feat}
    if two_headed:
        settings = {f"alpha_{alpha:g}": scale_fine_half(q_feat, alpha) for alpha in alphas}
        half = q_feat.shape[1] // 2
        settings["fine_only"] = torch.cat([torch.zeros_like(q_feat[:, :half]), q_feat[:, half:]], dim=1)
    for setting, queries in settings.items():
        metrics = rank_metrics_from_features(queries, g_feat, *ids)
        result.cmc[setting], result.reid[setting] = metrics["cmc"], scalar_metrics(metrics)
    main_setting = f"alpha_{MAIN_ALPHA:g}" if two_headed else "baseline"
    # The pictures' / re-ranking's alpha may lie outside the sweep.
    main_queries = settings[main_setting] if main_setting in settings else scale_fine_half(q_feat, MAIN_ALPHA)
    if rerank:
        metrics = rank_metrics(k_reciprocal_rerank(main_queries, g_feat), *ids)
        result.cmc[f"{main_setting}+rerank"] = metrics["cmc"]
        result.reid[f"{main_setting}+rerank"] = scalar_metrics(metrics)

    result.pictures["ranked_list"] = _ranked_picture(main_queries, g_feat, q_images, g_images,
                                                     ranked_queries, seed)
    if two_headed:
        reference = cached_reference(references, frame, size, data_root, num_swaps, seed, num_recon=num_recon,
                                     batch_size=batch_size, num_workers=num_workers)
        result.generation, result.pictures["swap_grid"] = _generation(model, reference, device,
                                                                      inception_weights, seed)
    return result


def _ranked_picture(q_feat: torch.Tensor, g_feat: torch.Tensor, q_images: EvalImages, g_images: EvalImages,
                    count: int, seed: int, top_k: int = 10) -> Image.Image:
    """Top-10 retrievals of a few queries: hits green, misses red, junk grey."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(q_images), size=min(count, len(q_images)), replace=False).tolist())
    dist = -(q_feat[chosen] @ g_feat.T)
    order = torch.argsort(dist, dim=1, stable=True)[:, :top_k]
    queries, galleries, matches, captions = [], [], [], []
    for row, q in enumerate(chosen):
        q_id, q_cam = int(q_images.person_ids[q]), int(q_images.cameras[q])
        ranked = order[row].tolist()
        queries.append(q_images[q]["image"])
        galleries.append([g_images[g]["image"] for g in ranked])
        labels = [(int(g_images.person_ids[g]), int(g_images.cameras[g])) for g in ranked]
        matches.append(["junk" if g_id == -1 or (g_id, g_cam) == (q_id, q_cam) else "hit" if g_id == q_id
                        else "miss" for g_id, g_cam in labels])
        captions.append(f"id {q_id} c{q_cam}")
    return ranked_list(queries, galleries, matches, top_k=top_k, normalized=True, query_labels=captions,
                       title="Ranked retrieval (green hit, red miss, grey junk)")


def _test_images(frame: pd.DataFrame) -> pd.DataFrame:
    """Query and gallery images of real identities (not distractors 0 or junk -1)."""
    return frame[frame["split"].isin(["query", "gallery"]) & (frame["person_id"] > 0)].reset_index(drop=True)


def _swap_pairs(frame: pd.DataFrame, count: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exactly `count` (appearance, structure) pairs of test images of different identities: appearance
    uniform over the test images, structure uniform over the others' (drawn directly, not rejected)."""
    if count < 1:
        raise ValueError(f"swap pairs: count must be >= 1, got {count}")
    test = _test_images(frame)
    ids = test["person_id"].to_numpy()
    order = np.argsort(ids, kind="stable")
    unique, starts, sizes = np.unique(ids[order], return_index=True, return_counts=True)
    if len(unique) < 2:
        raise DatasetError(f"swap pairs need test images (query/gallery, person_id > 0) of at least two "
                           f"identities; the manifest has {len(test)} of {len(unique)}")
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(test), size=count)
    group = np.searchsorted(unique, ids[first])
    # A position among the len(test) - sizes[group] images of other ids, in id order: skip the block.
    other = rng.integers(0, len(test) - sizes[group])
    second = order[np.where(other < starts[group], other, other + sizes[group])]
    return test.iloc[first].reset_index(drop=True), test.iloc[second].reset_index(drop=True)


def _recon_rows(frame: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """All test images when there are at most `count`, else `count` of them drawn by `seed`."""
    test = _test_images(frame)
    if len(test) <= count:
        return test
    rng = np.random.default_rng(seed)
    return test.iloc[np.sort(rng.choice(len(test), size=count, replace=False))].reset_index(drop=True)


def _load(rows: pd.DataFrame, size: tuple[int, int]) -> torch.Tensor:
    images = EvalImages(rows, size)
    return torch.stack([images[i]["image"] for i in range(len(images))])


@dataclass
class GenerationReference:
    """What every model's generation figures at one image size share. Images ImageNet-normalised, on
    the CPU; `ground_truth` (images on [0, 1], person masks) and `factors` of the pairs: None without
    factors.csv; `baselines`: the trivial baselines' scores, in the units of the model's figures."""

    appearance: torch.Tensor
    structure: torch.Tensor
    recon_images: torch.Tensor
    ground_truth: tuple[torch.Tensor, torch.Tensor] | None
    factors: tuple[pd.DataFrame, pd.DataFrame] | None
    baselines: dict[str, Any]
    ssim_diversity_real: float
    notes: dict[str, str] = field(default_factory=dict)


def generation_reference(frame: pd.DataFrame, size: tuple[int, int], data_root: str | os.PathLike | None,
                         count: int, seed: int, *, num_recon: int = DEFAULT_NUM_RECON, batch_size: int = 64,
                         num_workers: int = 0) -> GenerationReference:
    """The test pairs, the reconstruction images, the ground truth and the baselines' scores at `size`.

    Baselines: `recon_mean_image` (the train split's mean image) and `recon_blur4` in recon_l1's
    units; with factors.csv, `copy_structure` / `copy_appearance`: `swap_fidelity` (keys `swap_*`)
    of the unchanged structure / appearance donor as the "generated" swap of the same pairs.
    """
    appearance_rows, structure_rows = _swap_pairs(frame, count, seed)
    appearance, structure = _load(appearance_rows, size), _load(structure_rows, size)
    recon_images = _load(_recon_rows(frame, num_recon, seed), size)
    recon01 = denormalize(recon_images)
    baselines: dict[str, Any] = {}
    notes: dict[str, str] = {}
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    if train.empty:
        notes["recon_mean_image_skipped"] = "the manifest has no train split: no mean training image"
    else:
        loader = DataLoader(EvalImages(train, size), batch_size=batch_size, num_workers=num_workers)
        mean = denormalize(mean_image(batch["image"] for batch in loader))
        baselines["recon_mean_image"] = mean_image_l1(mean, recon01)
    baselines[f"recon_blur{BLUR_FACTOR}"] = blur_l1(recon01, BLUR_FACTOR)

    ground_truth = factors = None
    factors_path = Path(data_root) / "factors.csv" if data_root is not None else None
    if factors_path is not None and factors_path.is_file():
        table = read_factors(data_root).set_index("file_name", drop=False)
        try:
            factors = (table.loc[appearance_rows["file_name"]], table.loc[structure_rows["file_name"]])
        except KeyError as exc:
            raise DatasetError(f"{factors_path}: no factors for {exc}; is it the dataset evaluated?") from exc
        ground_truth = swap_ground_truth(*factors, size=size)
        for name, copied in (("copy_structure", structure), ("copy_appearance", appearance)):
            scores = swap_fidelity(copied, *factors, ground_truth=ground_truth)
            baselines[name] = {f"swap_{k}": v for k, v in scores.items()}
    else:
        notes["swap_fidelity_skipped"] = "not a synthetic dataset (no factors.csv): no ground truth"
    return GenerationReference(appearance, structure, recon_images, ground_truth, factors, baselines,
                               ssim_diversity(denormalize(structure), seed=seed), notes)


def cached_reference(references: dict[tuple[Any, ...], GenerationReference] | None, frame: pd.DataFrame,
                     size: tuple[int, int], data_root: str | os.PathLike | None, count: int, seed: int,
                     **kwargs: Any) -> GenerationReference:
    """`generation_reference`, kept in `references` (when given) under all it depends on: the size,
    data root, count, seed, num_recon and a hash of the manifest's path/split/person_id columns."""
    if references is None:
        return generation_reference(frame, size, data_root, count, seed, **kwargs)
    columns = frame[["path", "split", "person_id"]].astype(str)
    digest = hashlib.sha256(pd.util.hash_pandas_object(columns, index=False).to_numpy().tobytes()).hexdigest()
    key = (tuple(size), None if data_root is None else str(data_root), count, seed,
           kwargs.get("num_recon", DEFAULT_NUM_RECON), digest)
    if key not in references:
        references[key] = generation_reference(frame, size, data_root, count, seed, **kwargs)
    return references[key]


def _in_batches(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, device: torch.device,
                desc: str | None = None) -> torch.Tensor:
    """fn(*batches) for batches of DECODE_BATCH rows of `inputs`, on `device`: concatenated, on the CPU."""
    starts = range(0, len(inputs[0]), DECODE_BATCH)
    return torch.cat([fn(*(x[s:s + DECODE_BATCH].to(device) for x in inputs)).float().cpu()
                      for s in (tqdm(starts, desc=desc, dynamic_ncols=True) if desc else starts)])


@torch.inference_mode()
def _generation(model: DGNet, reference: GenerationReference, device: torch.device, inception_weights: Any,
                seed: int) -> tuple[dict[str, Any], Image.Image]:
    """Swap fidelity (synthetic data only), self-reconstruction L1, the trivial baselines beside
    them, SSIM diversity of swaps vs real, FID, a swap grid."""
    model.eval()
    appearance, structure = reference.appearance, reference.structure
    def swap(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # each donor through its own encoder only
        return model.decode(model.structure_encoder(s), model.appearance_encoder(a).code)

    fakes = _in_batches(swap, structure, appearance, device=device, desc="generating swaps")
    report: dict[str, Any] = {"num_swaps": len(fakes),
                              "ssim_diversity_generated": ssim_diversity(denormalize(fakes), seed=seed),
                              "ssim_diversity_real": reference.ssim_diversity_real}
    if reference.factors is not None:
        scores = swap_fidelity(fakes, *reference.factors, ground_truth=reference.ground_truth)
        report |= {f"swap_{k}": v for k, v in scores.items()}
    recon = _in_batches(model, reference.recon_images, device=device)  # model(x) = G(E_s(x), E_a(x).code)
    report["recon_l1"] = image_l1(denormalize(recon), denormalize(reference.recon_images))
    report["recon_num_images"] = len(recon)
    report |= reference.notes
    report["baselines"] = {k: dict(v) if isinstance(v, dict) else v for k, v in reference.baselines.items()}
    report |= fid(denormalize(structure), denormalize(fakes), weights=inception_weights, device=device)
    # A 5x5 grid of the same 5 test images on both axes: cell (i, j) = G(s_j, a_i), so the diagonal
    # is each image's own reconstruction and every other cell a swap.
    donors = structure[:min(5, len(structure))]
    a_out = model.appearance_encoder(donors.to(device)).code
    s_code = model.structure_encoder(donors.to(device))
    cells = [[model.decode(s_code[j:j + 1], a_out[i:i + 1])[0].float().cpu() for j in range(len(donors))]
             for i in range(len(donors))]
    grid = swap_grid(list(donors), list(donors), cells, normalized=True,
                     title="Test swaps G(s_column, a_row); diagonal: reconstruction")
    return report, grid


def markdown_table(results: list[ModelBenchmark]) -> str:
    """One row per (model, setting): rank-1/5/10, mAP (Market-1501), mAP_finite (torchreid / fast-reid),
    mINP in percent, and generation figures."""
    lines = ["| model | kind | query setting | rank-1 | rank-5 | rank-10 | mAP | mAP_finite | mINP "
             "| swap L1 (person) | swap SSIM (person) | SSIM diversity | FID |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(value: Any, percent: bool = False) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        return f"{100 * value:.1f}" if percent else f"{value:.3f}"

    for result in results:
        gen = result.generation
        fid_text = fmt(gen.get("fid")) if gen.get("fid") is not None else ("skipped" if gen else "-")
        for setting, m in result.reid.items():
            lines.append(
                f"| {result.name} | {result.kind} | {setting} | {fmt(m['rank1'], True)} | "
                f"{fmt(m['rank5'], True)} | {fmt(m.get('rank10'), True)} | {fmt(m['mAP'], True)} | "
                f"{fmt(m.get('mAP_finite'), True)} | {fmt(m['mINP'], True)} | "
                f"{fmt(gen.get('swap_l1_person'))} | {fmt(gen.get('swap_ssim_person'))} | "
                f"{fmt(gen.get('ssim_diversity_generated'))} | {fid_text} |")
    return "\n".join(lines) + "\n"


def write_benchmark(results: list[ModelBenchmark], out: str | os.PathLike, heading: str) -> Path:
    """OUT/benchmark.md (`heading`, then the table of `markdown_table`), OUT/metrics.json (per model
    its flat metrics), OUT/cmc/<model>.csv (rank, one column per setting) and OUT/<model>_<picture>.png."""
    out = Path(out)
    notes = sorted({f"FID computed with the {r.generation['fid_network']} (`{r.generation['fid_weights']}`)."
                    if r.generation.get("fid_network") else f"FID skipped: {r.generation['fid_skipped']}"
                    for r in results if "fid" in r.generation})
    with atomic_path(out / "benchmark.md") as tmp:
        tmp.write_text(f"{heading}\n\n{markdown_table(results)}" + "".join(f"\n- {n}" for n in notes) + "\n")
    write_json(out / "metrics.json", {r.name: r.flat_metrics() for r in results})
    for result in results:
        curves = pd.DataFrame(result.cmc)
        curves.insert(0, "rank", np.arange(1, len(curves) + 1))
        with atomic_path(out / "cmc" / f"{result.name}.csv") as tmp:
            curves.to_csv(tmp, index=False)
        for name, picture in result.pictures.items():
            save(picture, out / f"{result.name}_{name}.png")
    return out / "benchmark.md"
