"""Re-ID rank metrics: CMC, mAP (Market-1501 or finite convention) and mINP.

Protocol (METHOD.md section 5): for each query, gallery items with the query's id AND camera
are junk, so are gallery ids -1; both are removed before ranking. Id 0 (distractors) is a plain
negative. Queries with no valid match are counted and reported, and left out of the averages.

Instead of sorting every gallery row (the costly part of the usual implementation), we only
need the rank of each positive: the number of valid negatives ordered before it. Distances and
gallery indices are packed into one int64 key per item (order-preserving float bits in the high
32 bits, the index in the low 32), so ties are broken by gallery index exactly as a stable sort
would, on every platform. `searchsorted` against the query's few sorted positive keys then
gives, for every negative, how many positives it precedes; a histogram of that is the answer.
Work proceeds in chunks of queries, so memory stays bounded (MSMT17 size fits in < 4 GB), and
on whatever device the tensors live.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

ApConvention = Literal["market", "finite"]
_INT64_MAX = torch.iinfo(torch.int64).max


def _as_tensor(values: torch.Tensor | np.ndarray | Sequence, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(device)
    return torch.as_tensor(np.asarray(values), device=device)


def _sortable_keys(dist: torch.Tensor) -> torch.Tensor:
    """int64 keys whose order is (distance, gallery index) lexicographic, ties by index."""
    dist = dist.float().contiguous()
    bits = dist.view(torch.int32).to(torch.int64)
    # IEEE floats order like sign-magnitude ints: flip the magnitude bits of negatives.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    index = torch.arange(dist.shape[1], device=dist.device, dtype=torch.int64)
    return (bits << 32) + index


def _positive_ranks(
    dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor,
    g_pids: torch.Tensor, g_camids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks (among valid gallery items) of each query's positives, sorted ascending.

    Returns (ranks, is_positive), both (num_queries, max_positives); padding has is_positive False.
    """
    same_id = g_pids[None, :] == q_pids[:, None]
    junk = (same_id & (g_camids[None, :] == q_camids[:, None])) | (g_pids[None, :] == -1)
    positive = same_id & ~junk
    negative = ~same_id & ~junk
    keys = _sortable_keys(dist)

    max_pos = int(positive.sum(dim=1).max().item()) if positive.numel() else 0
    num_q = dist.shape[0]
    if max_pos == 0:
        empty = torch.zeros(num_q, 0, device=dist.device)
        return empty.long(), empty.bool()
    # The positives' keys, ascending, padded with +inf keys (topk on a masked copy is O(G)).
    pos_keys = torch.where(positive, keys, torch.full_like(keys, _INT64_MAX))
    pos_keys = torch.topk(pos_keys, max_pos, dim=1, largest=False, sorted=True).values
    is_positive = pos_keys != _INT64_MAX

    # For each negative: how many positives come before it = the slot it falls into.
    slot = torch.searchsorted(pos_keys, keys, right=False)
    counts = torch.zeros(num_q, max_pos + 1, device=dist.device, dtype=torch.int64)
    counts.scatter_add_(1, slot, negative.to(torch.int64))
    negatives_before = torch.cumsum(counts, dim=1)[:, :max_pos]
    k = torch.arange(1, max_pos + 1, device=dist.device, dtype=torch.int64)
    ranks = negatives_before + k[None, :]
    return ranks, is_positive


def _query_scores(
    ranks: torch.Tensor, is_positive: torch.Tensor, ap: ApConvention, max_rank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: AP, INP, CMC hits (num_queries, max_rank) and whether it has a valid match."""
    rank_f = ranks.double()
    mask = is_positive.double()
    num_pos = mask.sum(dim=1)
    has_match = num_pos > 0
    k = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)[None, :]
    precision = k / rank_f
    if ap == "finite":
        per_hit = precision
    elif ap == "market":
        # Official Market-1501 code: trapezoid between the precision just before the hit and at it
        # (precision before a hit at rank 1 is taken as 1).
        before = torch.where(ranks > 1, (k - 1) / (rank_f - 1).clamp(min=1), torch.ones_like(rank_f))
        per_hit = (precision + before) / 2
    else:
        raise ValueError(f"ap must be 'market' or 'finite', not {ap!r}")
    denom = num_pos.clamp(min=1)
    ap_values = (per_hit * mask).sum(dim=1) / denom
    last_rank = torch.where(is_positive, rank_f, torch.zeros_like(rank_f)).max(dim=1).values \
        if ranks.shape[1] else torch.zeros_like(num_pos)
    inp = num_pos / last_rank.clamp(min=1)
    first_rank = ranks[:, 0] if ranks.shape[1] else torch.zeros(ranks.shape[0], device=ranks.device)
    cutoffs = torch.arange(1, max_rank + 1, device=ranks.device)
    cmc = (first_rank[:, None] <= cutoffs[None, :]) & has_match[:, None]
    return ap_values, inp, cmc, has_match


def rank_metrics(
    dist: torch.Tensor | np.ndarray,
    q_pids: torch.Tensor | np.ndarray | Sequence[int],
    q_camids: torch.Tensor | np.ndarray | Sequence[int],
    g_pids: torch.Tensor | np.ndarray | Sequence[int],
    g_camids: torch.Tensor | np.ndarray | Sequence[int],
    ap: ApConvention = "market",
    max_rank: int = 50,
    chunk_size: int = 256,
) -> dict:
    """CMC, mAP and mINP from a (num_query, num_gallery) distance matrix; smaller = more similar.

    Returns fractions: `rank1`, `rank5`, `rank10`, `mAP`, `mINP`, the `cmc` curve (list of
    `max_rank` values), `num_queries`, `num_valid_queries` and `num_queries_without_match`.
    """
    device = dist.device if isinstance(dist, torch.Tensor) else torch.device("cpu")
    return _accumulate(
        lambda start, stop: _as_tensor(dist[start:stop], device),
        int(dist.shape[0]), q_pids, q_camids, g_pids, g_camids, ap, max_rank, chunk_size, device,
    )


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Distances between rows: `cosine` = -dot product (features L2-normalised by the caller, as
    the paper's protocol scores by dot product), `euclidean` = squared Euclidean distance."""
    if metric == "cosine":
        return -(query @ gallery.T)
    if metric == "euclidean":
        dist = query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1)[None, :] - 2 * query @ gallery.T
        return dist.clamp_(min=0)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")


def rank_metrics_from_features(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    q_pids: torch.Tensor | np.ndarray | Sequence[int],
    q_camids: torch.Tensor | np.ndarray | Sequence[int],
    g_pids: torch.Tensor | np.ndarray | Sequence[int],
    g_camids: torch.Tensor | np.ndarray | Sequence[int],
    metric: str = "cosine",
    ap: ApConvention = "market",
    max_rank: int = 50,
    chunk_size: int = 256,
) -> dict:
    """`rank_metrics` without ever holding the full distance matrix: distances are computed
    chunk by chunk of queries, on the features' device."""
    device = query_features.device
    gallery_features = gallery_features.to(device)
    return _accumulate(
        lambda start, stop: pairwise_distance(query_features[start:stop], gallery_features, metric),
        int(query_features.shape[0]), q_pids, q_camids, g_pids, g_camids, ap, max_rank, chunk_size,
        device,
    )


def _accumulate(dist_chunk, num_queries, q_pids, q_camids, g_pids, g_camids, ap, max_rank,
                chunk_size, device) -> dict:
    q_pids, q_camids = _as_tensor(q_pids, device).long(), _as_tensor(q_camids, device).long()
    g_pids, g_camids = _as_tensor(g_pids, device).long(), _as_tensor(g_camids, device).long()
    if not (len(q_pids) == len(q_camids) == num_queries):
        raise ValueError(f"{num_queries} query rows but {len(q_pids)} ids and {len(q_camids)} cameras")
    if len(g_pids) != len(g_camids):
        raise ValueError(f"{len(g_pids)} gallery ids but {len(g_camids)} gallery cameras")
    max_rank = min(max_rank, max(len(g_pids), 1))
    ap_sum = inp_sum = 0.0
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=device)
    num_valid = 0
    with torch.no_grad():
        for start in range(0, num_queries, chunk_size):
            stop = min(start + chunk_size, num_queries)
            dist = dist_chunk(start, stop)
            if dist.shape[1] != len(g_pids):
                raise ValueError(f"{dist.shape[1]} gallery columns but {len(g_pids)} gallery ids")
            ranks, is_positive = _positive_ranks(dist, q_pids[start:stop], q_camids[start:stop],
                                                 g_pids, g_camids)
            ap_values, inp, cmc, has_match = _query_scores(ranks, is_positive, ap, max_rank)
            ap_sum += float(ap_values[has_match].sum())
            inp_sum += float(inp[has_match].sum())
            cmc_sum += cmc[has_match].double().sum(dim=0)
            num_valid += int(has_match.sum())
    denom = max(num_valid, 1)
    cmc_curve = (cmc_sum / denom).cpu().tolist()
    return {
        "rank1": cmc_curve[0] if cmc_curve else 0.0,
        "rank5": cmc_curve[min(4, max_rank - 1)] if cmc_curve else 0.0,
        "rank10": cmc_curve[min(9, max_rank - 1)] if cmc_curve else 0.0,
        "mAP": ap_sum / denom,
        "mINP": inp_sum / denom,
        "cmc": cmc_curve,
        "num_queries": num_queries,
        "num_valid_queries": num_valid,
        "num_queries_without_match": num_queries - num_valid,
    }
