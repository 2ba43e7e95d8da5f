"""Benchmark one trained model: re-ID at several query alphas, generation quality, pictures.

Features are extracted once per model; the alpha sweep only rescales the queries' fine-grained
half (METHOD.md section 5), so it costs a ranking per alpha, not a forward pass. The evaluate
stage (stages/evaluate.py) calls `benchmark_model` for the teacher, DG-Net and the ablations
and writes the report; this module holds no tracking or file-format concerns beyond pictures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dgnet.data.datasets import EvalImages
from dgnet.data.synthetic import read_factors
from dgnet.data.transforms import denormalize
from dgnet.errors import DatasetError
from dgnet.evaluation.features import extract_features, scale_fine_half
from dgnet.evaluation.generation import fid, ssim_diversity, swap_fidelity
from dgnet.evaluation.pictures import ranked_list, swap_grid
from dgnet.evaluation.rank import rank_metrics, rank_metrics_from_features
from dgnet.evaluation.reranking import k_reciprocal_rerank
from dgnet.models.dgnet import DGNet
from dgnet.models.persist import load_model
from dgnet.progress import progress

# Query-side weights on the fine-grained half; "fine_only" drops the primary half instead.
DEFAULT_ALPHAS = (0.0, 0.5, 1.0)


@dataclass
class ModelBenchmark:
    """Everything measured on one model."""

    name: str
    kind: str  # "teacher" or "dgnet"
    reid: dict[str, dict[str, float]] = field(default_factory=dict)  # setting -> metrics
    cmc: dict[str, list[float]] = field(default_factory=dict)  # setting -> CMC curve
    generation: dict[str, Any] = field(default_factory=dict)
    pictures: dict[str, Image.Image] = field(default_factory=dict)

    def flat_metrics(self) -> dict[str, float]:
        """`setting/metric` -> value, plus `generation/...`: for metrics files and MLflow."""
        flat = {f"{setting}/{k}": v for setting, m in self.reid.items() for k, v in m.items()}
        flat |= {f"generation/{k}": v for k, v in self.generation.items() if isinstance(v, int | float)}
        return flat


def _setting_name(alpha: float) -> str:
    return f"alpha_{alpha:g}"


def _features(model: torch.nn.Module, frame: pd.DataFrame, size: tuple[int, int], device: torch.device,
              batch_size: int, num_workers: int) -> tuple[EvalImages, torch.Tensor]:
    images = EvalImages(frame, size)
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers)
    return images, extract_features(model, loader, device=device)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}


def benchmark_model(
    path: str | os.PathLike,
    frame: pd.DataFrame,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    rerank: bool = False,
    rerank_alpha: float = 0.5,
    batch_size: int = 64,
    num_workers: int = 0,
    ranked_queries: int = 6,
    data_root: str | os.PathLike | None = None,
    num_swaps: int = 64,
    inception_weights: str | os.PathLike | None = None,
    seed: int = 0,
) -> ModelBenchmark:
    """Benchmark the model file at `path` on the manifest `frame`'s query and gallery splits.

    A DG-Net model is ranked at each query alpha and with the fine-grained half alone; a teacher
    baseline has one feature, ranked once ("baseline"). `data_root` holding a synthetic dataset's
    factors.csv enables swap fidelity against the exact ground truth.
    """
    device = torch.device(device)
    model, info = load_model(path, map_location=device)
    size = (info.config.image_height, info.config.image_width)
    query = frame[frame["split"] == "query"].reset_index(drop=True)
    gallery = frame[frame["split"] == "gallery"].reset_index(drop=True)
    if query.empty or gallery.empty:
        raise DatasetError("evaluation: the manifest needs query and gallery images (split column)")
    result = ModelBenchmark(name or Path(path).parent.name, info.kind)
    q_images, q_feat = _features(model, query, size, device, batch_size, num_workers)
    g_images, g_feat = _features(model, gallery, size, device, batch_size, num_workers)
    ids = (q_images.person_ids, q_images.cameras, g_images.person_ids, g_images.cameras)

    two_headed = isinstance(model, DGNet)
    settings: dict[str, torch.Tensor] = {}
    if two_headed:
        settings = {_setting_name(alpha): scale_fine_half(q_feat, alpha) for alpha in alphas}
        half = q_feat.shape[1] // 2
        settings["fine_only"] = torch.cat([torch.zeros_like(q_feat[:, :half]), q_feat[:, half:]], dim=1)
    else:
        settings["baseline"] = q_feat
    for setting, queries in settings.items():
        metrics = rank_metrics_from_features(queries, g_feat, *ids)
        result.cmc[setting] = metrics["cmc"]
        result.reid[setting] = _scalar_metrics(metrics)
    main_setting = _setting_name(rerank_alpha) if two_headed else "baseline"
    main_queries = settings.get(main_setting)
    if main_queries is None:  # the pictures' / re-ranking's alpha is outside the sweep
        main_queries = scale_fine_half(q_feat, rerank_alpha)
    if rerank:
        dist = k_reciprocal_rerank(main_queries, g_feat)
        metrics = rank_metrics(dist, *ids)
        result.cmc[f"{main_setting}+rerank"] = metrics["cmc"]
        result.reid[f"{main_setting}+rerank"] = _scalar_metrics(metrics)

    result.pictures["ranked_list"] = _ranked_picture(main_queries, g_feat, q_images, g_images,
                                                     ranked_queries, seed)
    if two_headed:
        result.generation, result.pictures["swap_grid"] = _generation(
            model, frame, size, device, data_root, num_swaps, inception_weights, seed)
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
        queries.append(q_images[q]["image"])
        ranked = order[row].tolist()
        galleries.append([g_images[g]["image"] for g in ranked])
        row_matches = []
        for g in ranked:
            g_id, g_cam = int(g_images.person_ids[g]), int(g_images.cameras[g])
            junk = g_id == -1 or (g_id == q_id and g_cam == q_cam)
            row_matches.append("junk" if junk else "hit" if g_id == q_id else "miss")
        matches.append(row_matches)
        captions.append(f"id {q_id} c{q_cam}")
    return ranked_list(queries, galleries, matches, top_k=top_k, normalized=True, query_labels=captions,
                       title="Ranked retrieval (green hit, red miss, grey junk)")


def _swap_pairs(frame: pd.DataFrame, count: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`count` (appearance, structure) pairs of test images of different identities."""
    test = frame[frame["split"].isin(["query", "gallery"]) & (frame["person_id"] > 0)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(test), size=4 * count)
    second = rng.integers(0, len(test), size=4 * count)
    keep = test["person_id"].to_numpy()[first] != test["person_id"].to_numpy()[second]
    first, second = first[keep][:count], second[keep][:count]
    return test.iloc[first].reset_index(drop=True), test.iloc[second].reset_index(drop=True)


def _load(rows: pd.DataFrame, size: tuple[int, int]) -> torch.Tensor:
    images = EvalImages(rows, size)
    return torch.stack([images[i]["image"] for i in range(len(images))])


@torch.inference_mode()
def _generation(model: DGNet, frame: pd.DataFrame, size: tuple[int, int], device: torch.device,
                data_root: str | os.PathLike | None, count: int, inception_weights: Any,
                seed: int) -> tuple[dict[str, Any], Image.Image]:
    """Swap fidelity (synthetic data only), SSIM diversity of swaps vs real, FID, a swap grid."""
    model.eval()
    appearance_rows, structure_rows = _swap_pairs(frame, count, seed)
    appearance, structure = _load(appearance_rows, size).to(device), _load(structure_rows, size).to(device)
    generated = []
    for start in progress(range(0, len(appearance), 32), desc="generating swaps"):
        a, s = appearance[start:start + 32], structure[start:start + 32]
        structure_code, _ = model.encode(s)
        _, a_out = model.encode(a)
        generated.append(model.decode(structure_code, a_out.code).float().cpu())
    fakes = torch.cat(generated)
    report: dict[str, Any] = {"num_swaps": len(fakes)}
    real01 = denormalize(structure.float().cpu())
    report["ssim_diversity_generated"] = ssim_diversity(denormalize(fakes), seed=seed)
    report["ssim_diversity_real"] = ssim_diversity(real01, seed=seed)
    factors_path = Path(data_root) / "factors.csv" if data_root is not None else None
    if factors_path is not None and factors_path.is_file():
        factors = read_factors(data_root).set_index("file_name", drop=False)
        try:
            a_factors = factors.loc[appearance_rows["file_name"]]
            s_factors = factors.loc[structure_rows["file_name"]]
        except KeyError as exc:
            raise DatasetError(f"{factors_path}: no factors for {exc}; is it the dataset evaluated?") from exc
        report |= {f"swap_{k}": v for k, v in swap_fidelity(fakes, a_factors, s_factors).items()}
    else:
        report["swap_fidelity_skipped"] = "not a synthetic dataset (no factors.csv): no ground truth"
    report |= fid(real01, denormalize(fakes), weights=inception_weights, device=device)
    # A 5x5 grid: rows appearance donors, columns structure donors.
    k = min(5, len(appearance))
    a_out = model.encode(appearance[:k])[1].code
    s_code = model.encode(structure[:k])[0]
    cells = [[model.decode(s_code[j:j + 1], a_out[i:i + 1])[0].float().cpu() for j in range(k)]
             for i in range(k)]
    grid = swap_grid(list(appearance[:k].cpu()), list(structure[:k].cpu()), cells, normalized=True,
                     title="Test swaps: G(structure of column, appearance of row)")
    return report, grid


def markdown_table(results: list[ModelBenchmark]) -> str:
    """One row per (model, setting): rank-1, rank-5, mAP, mINP in percent, and generation figures."""
    lines = ["| model | kind | query setting | rank-1 | rank-5 | mAP | mINP | swap L1 (person) "
             "| swap SSIM (person) | SSIM diversity | FID |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

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
                f"{fmt(m['rank5'], True)} | {fmt(m['mAP'], True)} | {fmt(m['mINP'], True)} | "
                f"{fmt(gen.get('swap_l1_person'))} | {fmt(gen.get('swap_ssim_person'))} | "
                f"{fmt(gen.get('ssim_diversity_generated'))} | {fid_text} |")
    return "\n".join(lines) + "\n"
