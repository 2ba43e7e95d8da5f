"""`dgnet rank`: search a gallery folder with a query folder, as ranked lists (CSV, a picture, a page).

Distances are the evaluator's: the negative dot product of the test-time features, the query's
fine-grained half weighted by `query_alpha` (DG-Net; 0.5 in the published numbers), or k-reciprocal
re-ranked. When every file name follows a dataset's pattern (Market-1501, DukeMTMC-reID, MSMT17),
the ids and cameras in the names mark each result hit, miss or junk as the protocol does, and the
rank metrics are computed; otherwise results are "unknown".
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dgnet.data.manifest import FORMATS, PATTERNS
from dgnet.errors import ConfigError
from dgnet.evaluation.features import scale_fine_half
from dgnet.evaluation.pictures import ranked_list, save
from dgnet.evaluation.rank import pairwise_distance, rank_metrics
from dgnet.evaluation.reranking import k_reciprocal_rerank
from dgnet.inference.extract import FeatureExtractor, find_images
from dgnet.io import atomic_path, write_json


@dataclass
class Ranking:
    """What `rank_folders` wrote, and the metrics when the file names carry ids."""

    csv: Path
    picture: Path
    page: Path
    num_queries: int
    num_gallery: int
    id_format: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def ids_from_names(names: list[str]) -> tuple[str, list[int], list[int]] | None:
    """(format, person ids, camera ids) when every name follows one dataset's pattern, else None."""
    for fmt in FORMATS:
        matches = [PATTERNS[fmt].match(name) for name in names]
        if all(matches):
            return fmt, [int(m["pid"]) for m in matches], [int(m["cam"]) for m in matches]
    return None


def _match(q_id: int, q_cam: int, g_id: int, g_cam: int) -> str:
    """The protocol's verdict on one result (docs/method.md section 5)."""
    if g_id == -1 or (g_id == q_id and g_cam == q_cam):
        return "junk"
    return "hit" if g_id == q_id else "miss"


def _page(rows: list[dict[str, Any]], out_dir: Path, title: str) -> str:
    """A self-contained HTML page: one row per query, its top-k results linked to the image files."""
    colours = {"hit": "#1ea03c", "miss": "#d72828", "junk": "#969696", "unknown": "#466eaa"}

    def img(path: str, caption: str, colour: str) -> str:
        try:
            src = Path(os.path.relpath(path, out_dir)).as_posix()
        except ValueError:  # another drive (Windows): an absolute link
            src = Path(path).resolve().as_uri()
        return (f'<figure style="border:4px solid {colour}"><a href="{html.escape(src)}">'
                f'<img src="{html.escape(src)}" alt="{html.escape(caption)}"></a>'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    body = []
    for row in rows:
        cells = [img(row["query_path"], row["query"], "#333")]
        cells += [img(r["path"], f"{r['rank']}. {r['name']} ({r['distance']:.3f})", colours[r["match"]])
                  for r in row["results"]]
        body.append('<div class="row">' + "".join(cells) + "</div>")
    style = ("body{font-family:sans-serif} .row{display:flex;gap:6px;margin:8px 0;align-items:flex-start}"
             " figure{margin:0} img{height:128px;image-rendering:pixelated;display:block}"
             " figcaption{font-size:11px;max-width:120px;overflow-wrap:anywhere}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")


def rank_folders(extractor: FeatureExtractor, query: str | os.PathLike, gallery: str | os.PathLike,
                 out_dir: str | os.PathLike, *, top_k: int = 10, query_alpha: float = 0.5,
                 rerank: bool = False, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 picture_queries: int = 8, show_progress: bool = True) -> Ranking:
    """Rank `gallery`'s images for each of `query`'s; write OUT/ranking.csv (top-k per query),
    OUT/ranking.png (the first `picture_queries` queries), OUT/index.html, and OUT/metrics.json when
    the file names carry ids. Each file is written atomically; other files in OUT are left alone."""
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k}: must be >= 1")
    if not 0.0 <= query_alpha <= 1.0:
        raise ConfigError(f"--query-alpha {query_alpha}: must lie in [0, 1] (published numbers use 0.5)")
    out_dir = Path(out_dir)
    q_paths, g_paths = find_images(query, "--query"), find_images(gallery, "--gallery")
    q_names = [p.relative_to(query).as_posix() for p in q_paths]
    g_names = [p.relative_to(gallery).as_posix() for p in g_paths]
    q_feat = extractor.extract(q_paths, show_progress, desc="query")
    g_feat = extractor.extract(g_paths, show_progress, desc="gallery")
    if extractor.kind == "dgnet":
        q_feat = scale_fine_half(q_feat, query_alpha)
    dist = k_reciprocal_rerank(q_feat, g_feat, k1, k2, lambda_value) if rerank \
        else pairwise_distance(q_feat, g_feat)
    k = min(top_k, len(g_paths))
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]

    ids = ids_from_names([p.name for p in q_paths] + [p.name for p in g_paths])
    fmt, metrics = None, {}
    if ids is not None:
        fmt, pids, cams = ids
        nq = len(q_paths)
        q_ids, q_cams, g_ids, g_cams = pids[:nq], cams[:nq], pids[nq:], cams[nq:]
        metrics = {key: float(v) for key, v in rank_metrics(dist, q_ids, q_cams, g_ids, g_cams).items()
                   if not isinstance(v, list)}

    rows = []
    for q, ranked in enumerate(order.tolist()):
        results = [{"rank": r, "name": g_names[g], "path": str(g_paths[g]), "distance": float(dist[q, g]),
                    "match": _match(q_ids[q], q_cams[q], g_ids[g], g_cams[g]) if fmt else "unknown"}
                   for r, g in enumerate(ranked, start=1)]
        label = f"id {q_ids[q]} c{q_cams[q]}" if fmt else Path(q_names[q]).stem[:10]  # fits under a tile
        rows.append({"query": q_names[q], "query_path": str(q_paths[q]), "label": label, "results": results})

    how = "k-reciprocal re-ranked" if rerank else "feature distance"
    title = f"{len(q_paths)} queries against {len(g_paths)} gallery images, top {k} ({how})"
    csv_path, page_path = out_dir / "ranking.csv", out_dir / "index.html"
    with atomic_path(csv_path) as tmp:
        ranking = pd.json_normalize(rows, "results", ["query"]).rename(columns={"name": "gallery"})
        ranking[["query", "rank", "gallery", "distance", "match"]].to_csv(tmp, index=False)
    with atomic_path(page_path) as tmp:
        tmp.write_text(_page(rows, out_dir, title), encoding="utf-8")
    shown = rows[:picture_queries]
    picture = ranked_list([extractor.load(r["query_path"]) for r in shown],
                          [[extractor.load(x["path"]) for x in r["results"]] for r in shown],
                          [[x["match"] for x in r["results"]] for r in shown], top_k=k, normalized=True,
                          query_labels=[r["label"] for r in shown], title=title)
    picture_path = save(picture, out_dir / "ranking.png")
    if metrics:
        write_json(out_dir / "metrics.json", {"id_format": fmt, "rerank": rerank, **metrics})
    return Ranking(csv_path, picture_path, page_path, len(q_paths), len(g_paths), fmt, metrics)
