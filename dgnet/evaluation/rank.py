"""Re-ID rank metrics: CMC, mAP in both conventions (Market-1501 and finite) and mINP.

Protocol (docs/method.md section 5): for each query, gallery items with the query's id AND camera
are junk, so are gallery ids -1; both are removed before ranking. Id 0 (distractors) is a plain
negative. Queries with no valid match are counted and reported, and left out of the averages.

The order is exactly that of a stable sort of each row (ties broken by gallery index, NaN last),
but no row is ever sorted: all we need is how many valid gallery items come before each positive,
and a query has few positives (Market: about 14 of 16k). Per chunk of queries:

1. The query's same-id items (positives and same-camera junk), from a per-id table of gallery
   columns, are sorted: a tiny (queries x same-id) problem.
2. Every distance of the row goes through one monotone map into an integer bucket, uniform over
   [first positive, last positive] (below: bucket 0, above or NaN: the top), and a per-row
   histogram of buckets is counted: a few cheap elementwise passes and an index_add, where a
   per-element `searchsorted` or a sort costs 5-10x more.
3. Items in a lower bucket than a positive's come before it (the positive's own bucket comes from
   the very same float operations), items in a higher one after it. Only items sharing a bucket
   with a positive (well under 1% of the row) are compared exactly, by (distance, gallery index).
4. Negatives before positive k = all valid items before it - same-id items before it.

Gallery ids -1 are dropped once. Scratch buffers are reused from chunk to chunk (fresh tensors cost
page faults) and work is bounded per chunk: MSMT17 size fits in well under 4 GB, on any device.
Timings: benchmarks/eval_speed.py, benchmarks/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Ids = torch.Tensor | np.ndarray | Sequence[int]  # person ids or cameras, one per row


def _as_tensor(values: torch.Tensor | np.ndarray | Sequence, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values if isinstance(values, torch.Tensor) else np.asarray(values), device=device)


def _num_buckets(num_gallery: int) -> int:
    """Buckets per row: about 4 gallery items each (fewer items to compare exactly), capped so
    that the per-row histogram stays small next to the row."""
    return int(min(8192, max(64, num_gallery // 4)))


def _same_id_table(q_pids: torch.Tensor, g_pids: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gallery columns grouped by id (ascending within an id) and each query's slice of them:
    (columns, start, count), query i's same-id columns are columns[start[i]:][:count[i]]."""
    pids, cols = torch.sort(g_pids, stable=True)  # stable: columns stay ascending within an id
    zero = torch.zeros_like(q_pids)
    if len(cols) == 0:
        return cols, zero, zero
    ids, counts = torch.unique_consecutive(pids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(ids, q_pids).clamp_(max=len(ids) - 1)
    found = ids[slot] == q_pids
    return cols, torch.where(found, starts[slot], zero), torch.where(found, counts[slot], zero)


def _comes_before(d: torch.Tensor, i: torch.Tensor, t: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Whether item (distance d, index i) precedes (t, j) in a stable ascending sort, NaN last."""
    d_nan, t_nan = torch.isnan(d), torch.isnan(t)
    less = (d < t) | (t_nan & ~d_nan)
    equal = (d == t) | (d_nan & t_nan)
    return less | (equal & (i < j))


class _Scratch(dict):
    """Reusable buffers, one per name (a fresh one per chunk costs more page faults than arithmetic)."""

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        numel = int(np.prod(shape))
        buffer = self.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype or buffer.device != device:
            buffer = self[name] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


def _buckets(values: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, num_buckets: int,
             row_offset: torch.Tensor, scratch: _Scratch | None = None) -> torch.Tensor:
    """Monotone map of distances to int32 buckets 0..B+1, plus each row's offset (one flat histogram
    per chunk). Monotone float operations only (subtract, scale by >= 0, clamp, truncate; NaN to the
    top); the positives go through the same IEEE operations, so equal distances share a bucket."""
    scratch = _Scratch() if scratch is None else scratch
    v = torch.sub(values, lo, out=scratch("float", values.shape, values.dtype, values.device))
    v.mul_(scale)
    v.clamp_(-1.0, float(num_buckets))  # keeps NaN...
    torch.nan_to_num_(v, nan=float(num_buckets))  # ...which goes to the top, with +inf
    # Truncation toward zero is monotone too (-1 < v < 1 share a bucket, which costs nothing).
    out = scratch("int", values.shape, torch.int32, values.device).copy_(v)
    return out.add_(row_offset + 1)


def _positive_ranks(
    dist: torch.Tensor, same_idx: torch.Tensor, same_valid: torch.Tensor, same_cams: torch.Tensor,
    q_camids: torch.Tensor, scratch: _Scratch, max_refine: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks (among non-junk gallery items) of each query's positives, ascending: (ranks,
    is_positive), both (num_queries, max_positives). `same_idx`: the query's same-id gallery columns,
    ascending, padded where `same_valid` is False; `same_cams` their cameras."""
    num_q, num_g = dist.shape
    device = dist.device
    is_pos = same_valid & (same_cams != q_camids[:, None])
    max_pos = int(is_pos.sum(dim=1).max().item()) if is_pos.numel() else 0
    if max_pos == 0:
        empty = torch.zeros(num_q, 0, device=device)
        return empty.long(), empty.bool()

    # 1. Same-id items in (distance, index) order; padding is NaN at the row's end, so it sorts
    #    after every real item (stable sort, NaN last).
    d_same = dist.gather(1, same_idx).masked_fill_(~same_valid, float("nan"))
    d_same, perm = torch.sort(d_same, dim=1, stable=True)
    pos_sorted = is_pos.gather(1, perm)
    # The positives, first max_pos slots after a stable partition; a slot's position in the
    # sorted same-id row is the number of same-id items before it.
    slot = torch.sort((~pos_sorted).to(torch.uint8), dim=1, stable=True).indices[:, :max_pos]
    is_positive = pos_sorted.gather(1, slot)
    t = d_same.gather(1, slot)
    t_idx = same_idx.gather(1, perm).gather(1, slot)
    same_before = slot

    # 2. Buckets, uniform between the first and last finite positive distance of the row.
    finite = is_positive & torch.isfinite(t)
    lo = torch.where(finite, t, torch.full_like(t, float("inf"))).amin(dim=1, keepdim=True)
    hi = torch.where(finite, t, torch.full_like(t, float("-inf"))).amax(dim=1, keepdim=True)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi = torch.where(torch.isfinite(hi), hi, lo)
    num_b = _num_buckets(num_g)
    # One positive: a tiny width puts all but its near-equals above it (nothing to refine). The
    # scale stays finite and > 0, so that -inf and +inf keep their sides.
    width = (hi - lo).clamp_(min=1e-30, max=torch.finfo(dist.dtype).max)
    scale = (num_b - 1) / width
    bins = num_b + 3
    row_offset = torch.arange(num_q, device=device, dtype=torch.int32)[:, None] * bins
    bucket = _buckets(dist, lo, scale, num_b, row_offset, scratch).view(-1)
    # Per-row histograms (one flat int32 array, row r at r * bins) and their running sums.
    hist = scratch("hist", (num_q * bins,), torch.int32, device).zero_()
    hist.index_add_(0, bucket, torch.ones(1, dtype=torch.int32, device=device).expand(len(bucket)))
    cum = torch.cumsum(hist.view(num_q, bins), dim=1, dtype=torch.int32,
                       out=scratch("cum", (num_q, bins), torch.int32, device)).view(-1)
    # Same float operations on the same rows: a positive shares its bucket with its equals. The
    # positives are sorted, so their buckets never decrease along a row.
    t_bucket = _buckets(t, lo, scale, num_b, row_offset).long()
    t_bucket = torch.where(is_positive, t_bucket, row_offset.long().expand_as(t_bucket))
    ranks_all = (cum.take(t_bucket) - hist.take(t_bucket)).long()  # items in strictly lower buckets

    # 3. Items that share a bucket with a positive are compared exactly. Positives sharing a
    #    bucket are consecutive (k0 .. k0 + n - 1, usually n = 1), and an item before positive k is
    #    before k + 1 too: each item adds 1 to a run of positives, recorded in a difference array.
    first_k = torch.ones_like(t_bucket, dtype=torch.bool)
    first_k[:, 1:] = t_bucket[:, 1:] != t_bucket[:, :-1]
    first_k &= is_positive
    kk = torch.arange(max_pos, device=device).expand_as(t_bucket)
    flag = scratch("flag", (num_q * bins,), torch.bool, device).zero_()
    flag[t_bucket[is_positive]] = True
    first_of = scratch("first_of", (num_q * bins,), torch.int64, device)  # only read where flagged
    first_of[t_bucket[first_k]] = kk[first_k]
    per_bucket = scratch("per_bucket", (num_q * bins,), torch.int64, device)
    per_bucket[t_bucket[first_k]] = 0
    per_bucket.index_add_(0, t_bucket[is_positive], torch.ones_like(kk[is_positive]))
    flagged = torch.index_select(flag, 0, bucket, out=scratch("bool", bucket.shape, torch.bool, device))
    selected = torch.nonzero(flagged).squeeze(1)
    diff = torch.zeros(num_q * (max_pos + 1), dtype=torch.int64, device=device)
    for part in selected.split(max_refine):  # bounded memory, even when every distance ties
        rows, cols = part // num_g, part % num_g
        e_bucket = bucket[part].long()
        first, count = first_of[e_bucket], per_bucket[e_bucket]
        e_dist = dist.reshape(-1)[part]
        start = first.clone()
        for j in range(int(count.max().item())):
            k = (first + j).clamp_(max=max_pos - 1)
            start += (j < count) & ~_comes_before(e_dist, cols, t[rows, k], t_idx[rows, k])
        # Now the item precedes positives start .. first + count - 1 of its bucket.
        ones = torch.ones_like(start)
        diff.index_add_(0, rows * (max_pos + 1) + start, ones)
        diff.index_add_(0, rows * (max_pos + 1) + first + count, -ones)
    ranks_all += diff.view(num_q, max_pos + 1).cumsum(dim=1)[:, :max_pos]

    # 4. Negatives before positive k = items before it - same-id items before it; then + k + 1.
    k = torch.arange(1, max_pos + 1, device=device, dtype=torch.int64)
    ranks = ranks_all - same_before + k[None, :]
    return ranks, is_positive


def _query_scores(
    ranks: torch.Tensor, is_positive: torch.Tensor, max_rank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: AP (Market-1501), AP (finite), INP, CMC hits (num_queries, max_rank) and whether
    it has a valid match. Both APs come from the same positives' ranks: one pass, no second sort.

    finite (torchreid, fast-reid, sklearn's average_precision_score): the mean of the precisions
    at the hits. Market-1501 (its official code): each hit's precision averaged with the precision
    just before it (a trapezoid; 1 before a hit at rank 1)."""
    rank_f = ranks.double()
    mask = is_positive.double()
    num_pos = mask.sum(dim=1)
    has_match = num_pos > 0
    k = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)[None, :]
    precision = k / rank_f
    before = torch.where(ranks > 1, (k - 1) / (rank_f - 1).clamp(min=1), torch.ones_like(rank_f))
    denom = num_pos.clamp(min=1)
    ap_finite = (precision * mask).sum(dim=1) / denom
    ap_market = (((precision + before) / 2) * mask).sum(dim=1) / denom
    last_rank = torch.where(is_positive, rank_f, torch.zeros_like(rank_f)).max(dim=1).values \
        if ranks.shape[1] else torch.zeros_like(num_pos)
    inp = num_pos / last_rank.clamp(min=1)
    first_rank = ranks[:, 0] if ranks.shape[1] else torch.zeros(ranks.shape[0], device=ranks.device)
    cutoffs = torch.arange(1, max_rank + 1, device=ranks.device)
    cmc = (first_rank[:, None] <= cutoffs[None, :]) & has_match[:, None]
    return ap_market, ap_finite, inp, cmc, has_match


def rank_metrics(
    dist: torch.Tensor | np.ndarray, q_pids: Ids, q_camids: Ids, g_pids: Ids, g_camids: Ids,
    max_rank: int = 50, chunk_size: int = 256,
) -> dict:
    """CMC, mAP and mINP from a (num_query, num_gallery) distance matrix; smaller = more similar.

    Returns fractions: `rank1`, `rank5`, `rank10`, `mAP` (Market-1501 convention), `mAP_finite` (torchreid
    / fast-reid), `mINP`, the `cmc` curve (`max_rank` values), and `num_queries`, `num_valid_queries`,
    `num_queries_without_match`.
    Ties rank by gallery index (a stable sort), NaN distances last.
    """
    device = dist.device if isinstance(dist, torch.Tensor) else torch.device("cpu")
    if dist.shape[1] != len(g_pids):
        raise ValueError(f"{dist.shape[1]} gallery columns but {len(g_pids)} gallery ids")
    keep = _as_tensor(g_pids, device) != -1
    columns = None if bool(keep.all()) else torch.nonzero(keep).squeeze(1)

    def rows(start: int, stop: int, scratch: _Scratch) -> torch.Tensor:
        chunk = _as_tensor(dist[start:stop], device)
        return chunk if columns is None else chunk[:, columns]

    return _accumulate(rows, int(dist.shape[0]), q_pids, q_camids, g_pids, g_camids, keep, max_rank,
                       chunk_size, device)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The figures of `rank_metrics` without the CMC curve, as floats."""
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor, metric: str = "cosine",
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Distances between rows: `cosine` = -dot product (features L2-normalised by the caller, as
    the paper's protocol scores by dot product; into `out` when given), `euclidean` = squared
    Euclidean distance."""
    if metric == "cosine":
        return torch.mm(query, gallery.T, out=out).neg_()  # in place: no second (queries x gallery) buffer
    if metric == "euclidean":
        dist = query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1)[None, :] - 2 * query @ gallery.T
        return dist.clamp_(min=0)
    raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")


def rank_metrics_from_features(
    query_features: torch.Tensor, gallery_features: torch.Tensor,
    q_pids: Ids, q_camids: Ids, g_pids: Ids, g_camids: Ids,
    metric: str = "cosine", max_rank: int = 50, chunk_size: int = 256,
) -> dict:
    """`rank_metrics` without ever holding the full distance matrix: distances are computed
    chunk by chunk of queries, on the features' device."""
    device = query_features.device
    keep = _as_tensor(g_pids, device) != -1
    if len(keep) != gallery_features.shape[0]:
        raise ValueError(f"{gallery_features.shape[0]} gallery features but {len(keep)} gallery ids")
    gallery = gallery_features.to(device)
    gallery = gallery if bool(keep.all()) else gallery[keep]
    def rows(start: int, stop: int, scratch: _Scratch) -> torch.Tensor:
        query = query_features[start:stop]
        out = scratch("dist", (len(query), len(gallery)), query.dtype, device) if metric == "cosine" else None
        return pairwise_distance(query, gallery, metric, out)

    return _accumulate(rows, int(query_features.shape[0]), q_pids, q_camids, g_pids, g_camids, keep, max_rank,
                       chunk_size, device)


def _accumulate(dist_chunk, num_queries, q_pids, q_camids, g_pids, g_camids, keep, max_rank,
                chunk_size, device) -> dict:
    """The metrics over the chunks of `dist_chunk(start, stop, scratch)`: the distances of queries
    start..stop-1 to the gallery columns of `keep` only (not ids -1, junk for every query), in their
    order, so that ties still rank by gallery index."""
    q_pids, q_camids = _as_tensor(q_pids, device).long(), _as_tensor(q_camids, device).long()
    g_pids, g_camids = _as_tensor(g_pids, device).long(), _as_tensor(g_camids, device).long()
    if not (len(q_pids) == len(q_camids) == num_queries):
        raise ValueError(f"{num_queries} query rows but {len(q_pids)} ids and {len(q_camids)} cameras")
    if len(g_pids) != len(g_camids):
        raise ValueError(f"{len(g_pids)} gallery ids but {len(g_camids)} gallery cameras")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    max_rank = min(max_rank, max(len(g_pids), 1))  # the cap as if nothing were dropped
    g_pids, g_camids = g_pids[keep], g_camids[keep]
    # Bucket ids of a chunk are int32, row after row: keep rows x buckets below 2^31.
    chunk_size = min(chunk_size, (2**31 - 1) // (_num_buckets(len(g_pids)) + 3))
    columns, q_start, q_count = _same_id_table(q_pids, g_pids)
    ap_sum = ap_finite_sum = inp_sum = 0.0
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=device)
    num_valid = 0
    scratch = _Scratch()
    with torch.no_grad():
        for start in range(0, num_queries, chunk_size):
            stop = min(start + chunk_size, num_queries)
            dist = dist_chunk(start, stop, scratch)
            if dist.dtype not in (torch.float32, torch.float64):
                dist = dist.float()  # half / bfloat16 / ints: exact in float32, order unchanged
            dist = dist.contiguous()
            # This chunk's same-id columns, padded to the longest list.
            count = q_count[start:stop]
            width = int(count.max().item()) if len(count) else 0
            offsets = torch.arange(width, device=device)
            same_valid = offsets[None, :] < count[:, None]
            at = (q_start[start:stop, None] + offsets[None, :]).clamp_(max=max(len(columns) - 1, 0))
            same_idx = torch.where(same_valid, columns[at], torch.zeros_like(at)) if len(columns) \
                else torch.zeros_like(at)
            ranks, is_positive = _positive_ranks(dist, same_idx, same_valid, g_camids[same_idx],
                                                 q_camids[start:stop], scratch)
            ap_values, ap_finite, inp, cmc, has_match = _query_scores(ranks, is_positive, max_rank)
            ap_sum += float(ap_values[has_match].sum())
            ap_finite_sum += float(ap_finite[has_match].sum())
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
        "mAP_finite": ap_finite_sum / denom,
        "mINP": inp_sum / denom,
        "cmc": cmc_curve,
        "num_queries": num_queries,
        "num_valid_queries": num_valid,
        "num_queries_without_match": num_queries - num_valid,
    }
