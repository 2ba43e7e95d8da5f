"""k-reciprocal re-ranking (Zhong, Zheng, Cao and Li, CVPR 2017), written from the paper.

The probe and the gallery are pooled into one set of N = Q + G items with distances d.

* N(i, k): the k + 1 nearest items of i, i itself included (its distance is 0).
* R(i, k) = {j in N(i, k) : i in N(j, k)}: the k-reciprocal neighbours, i included.
* R*(i, k1): R(i, k1), plus R(q, k1/2) (k1/2 rounded up) for every q in R(i, k1) whose
  R(q, k1/2) overlaps R(i, k1) by more than 2/3 of its own size (the expansion that recovers
  positives a strict reciprocity test misses; the paper writes >= 2/3, which differs only at
  exactly 2/3).
* V_i, a soft indicator vector of R*(i): V_ij = exp(-d(i, j)) on R*(i), 0 elsewhere, with d
  divided by its largest value over the whole set (the kernel then weighs 1 .. 1/e, on every
  dataset alike; one global factor keeps every ordering).
* Local query expansion: V_i <- mean of V_m over the k2 nearest items m of i (i included).
* Jaccard distance d_J(i, j) = 1 - sum_l min(V_il, V_jl) / sum_l max(V_il, V_jl).
* Final distance (1 - lambda) d_J + lambda d, for the (query, gallery) pairs.

With features, d is the squared Euclidean distance (for L2-normalised features: 2 - 2 x the
dot product, the same order as the protocol's similarity). So lambda = 1 gives back the
original distance, divided by one positive constant: the same ranking.

Nothing N x N is held: one chunked pass finds the k1 + 1 nearest neighbours, distances inside each
R* are recomputed pair by pair, V is sparse and sum_l min(V_ql, V_gl) is accumulated over the pairs
sharing a column of V (memory about twice the (Q, G) result). Ties break as `torch.topk` breaks
them; deterministic on a CPU (on a GPU `index_add_` sums in no fixed order: last-bit differences).
"""

from __future__ import annotations

import torch

from dgnet.errors import ConfigError


def k_reciprocal_rerank(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Re-ranked (num_query, num_gallery) distances (smaller = more similar) from features used as
    given (L2-normalise them first, as the protocol does), on the features' device."""
    for name, value, paper in (("k1", k1, 20), ("k2", k2, 6)):
        if int(value) != value or value < 1:
            raise ConfigError(f"re-ranking {name}={value}: must be an integer >= 1 (the paper uses {paper})")
    if not 0.0 <= lambda_value <= 1.0:
        raise ConfigError(f"re-ranking lambda={lambda_value}: must lie in [0, 1] (the paper uses 0.3)")
    if query_features.dim() != 2 or gallery_features.dim() != 2 \
            or query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"features must be (n, d) with the same d: got {tuple(query_features.shape)} "
                         f"and {tuple(gallery_features.shape)}")
    feats = torch.cat([query_features, gallery_features.to(query_features.device)]).float()
    with torch.no_grad():
        return _rerank(feats, len(query_features), k1, k2, lambda_value, chunk_size)


def _reciprocal(nbr: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """R(i, k) as an (N, k + 1) table of item indices, -1 where j is not a reciprocal neighbour."""
    head = nbr[:, :k + 1]
    out = torch.empty_like(head)
    for s in range(0, len(head), chunk):
        cand = head[s:s + chunk]  # (n, k + 1)
        me = torch.arange(s, s + len(cand), device=nbr.device)
        back = (head[cand] == me[:, None, None]).any(dim=2)  # i in N(j, k) for each candidate j
        out[s:s + len(cand)] = torch.where(back, cand, torch.full_like(cand, -1))
    return out


def _expanded_sets(r_full: torch.Tensor, r_half: torch.Tensor, chunk: int) -> torch.Tensor:
    """R*(i, k1) as an (N, L) table of distinct item indices, -1 padded (sorted, padding first)."""
    num = len(r_full)
    parts = []
    for s in range(0, num, chunk):
        full = r_full[s:s + chunk]  # (n, k1 + 1)
        cand = r_half[full.clamp(min=0)]  # (n, k1 + 1, half + 1): R(q, k1/2) of each q in R(i, k1)
        valid = (full >= 0)[:, :, None] & (cand >= 0)
        inside = (cand[..., None] == full[:, None, None, :]).any(dim=3) & valid
        size = valid.sum(dim=2)
        accept = (inside.sum(dim=2) * 3 > 2 * size) & (full >= 0)  # overlap > 2/3 |R(q, k1/2)|
        added = torch.where(accept[:, :, None] & valid, cand, torch.full_like(cand, -1))
        union = torch.cat([full, added.flatten(1)], dim=1).sort(dim=1).values
        union[:, 1:][union[:, 1:] == union[:, :-1]] = -1  # duplicates (sorted: neighbours)
        parts.append(union.sort(dim=1).values)
    return torch.cat(parts)


def _within(counts: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., c - 1 for each count c, concatenated."""
    total = int(counts.sum())
    group_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts, output_size=total)
    return torch.arange(total, device=counts.device) - group_start


def _coalesce(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, num_cols: int):
    """Sum the duplicates of a COO list; returns it sorted by (row, col)."""
    key = rows * num_cols + cols
    key, order = torch.sort(key)
    uniq, inverse = torch.unique_consecutive(key, return_inverse=True)
    summed = torch.zeros(len(uniq), dtype=vals.dtype, device=vals.device).index_add_(0, inverse, vals[order])
    return uniq // num_cols, uniq % num_cols, summed


def _rerank(feats: torch.Tensor, num_q: int, k1: int, k2: int, lambda_value: float, chunk_size: int,
            max_pairs: int = 1 << 23) -> torch.Tensor:
    num, device = len(feats), feats.device
    num_g = num - num_q
    sq = feats.pow(2).sum(dim=1)

    def rows(start: int, stop: int) -> torch.Tensor:  # squared distances of rows start..stop-1 to all
        d = torch.mm(feats[start:stop], feats.T).mul_(-2).add_(sq[start:stop, None]).add_(sq[None, :])
        return d.clamp_(min=0)

    def pairs(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:  # d(i[n], j[n]) for every n
        step = max(1, (1 << 24) // feats.shape[1])  # gathered rows: 64 MB at a time
        dots = torch.cat([(feats[i[s:s + step]] * feats[j[s:s + step]]).sum(dim=1)
                          for s in range(0, len(i), step)]) if len(i) else sq[:0]
        return (sq[i] + sq[j] - 2 * dots).clamp_(min=0)

    if num_q == 0 or num_g == 0:
        return torch.zeros(num_q, num_g, device=device)
    k1, k2 = min(k1, num - 1), min(k2, num)
    half = max(1, (k1 + 1) // 2) if k1 > 0 else 0

    # Pass 1: each item's nearest items (itself first); the largest distance; the query rows.
    nbr = torch.empty(num, max(k1 + 1, k2), dtype=torch.long, device=device)
    original = torch.empty(num_q, num_g, dtype=torch.float32, device=device)
    scale = torch.zeros((), dtype=torch.float32, device=device)
    for s in range(0, num, chunk_size):
        d = rows(s, min(s + chunk_size, num)).float()
        nbr[s:s + len(d)] = torch.topk(d, nbr.shape[1], dim=1, largest=False, sorted=True).indices
        scale = torch.maximum(scale, d.max())
        if s < num_q:
            original[s:min(s + chunk_size, num_q)] = d[:num_q - s, num_q:]
    scale = scale.clamp(min=torch.finfo(torch.float32).tiny)
    original /= scale

    # k-reciprocal sets and their expansion; the soft indicator vectors V (sparse, COO).
    r_star = _expanded_sets(_reciprocal(nbr, k1, chunk_size), _reciprocal(nbr, half, chunk_size), chunk_size)
    v_row, slot = torch.nonzero(r_star >= 0, as_tuple=True)
    v_col = r_star[v_row, slot]
    v_val = torch.cat([torch.exp(-pairs(v_row[s:s + max_pairs], v_col[s:s + max_pairs]).float() / scale)
                       for s in range(0, len(v_row), max_pairs)]) if len(v_row) else v_row.float()
    # Local query expansion: V_i <- mean of V_m over the k2 nearest m of i.
    if k2 > 1:
        starts = torch.searchsorted(v_row, torch.arange(num + 1, device=device))
        counts = starts[1:] - starts[:-1]
        src = nbr[:, :k2].reshape(-1)  # m, for i = 0, 0, ..., 1, 1, ...
        dst = torch.arange(num, device=device).repeat_interleave(k2)
        take = counts[src]
        entry = torch.repeat_interleave(starts[:-1][src], take) + _within(take)
        v_row, v_col, v_val = _coalesce(torch.repeat_interleave(dst, take), v_col[entry], v_val[entry] / k2,
                                        num)
    norm = torch.zeros(num, dtype=v_val.dtype, device=device).index_add_(0, v_row, v_val)

    # Jaccard: sum_l min(V_ql, V_gl) over the gallery entries sharing each query entry's column.
    is_g = v_row >= num_q
    g_col, order = torch.sort(v_col[is_g], stable=True)
    g_row, g_val = v_row[is_g][order] - num_q, v_val[is_g][order]
    g_start = torch.searchsorted(g_col, torch.arange(num + 1, device=device))
    g_count = g_start[1:] - g_start[:-1]
    q_rows, q_cols, q_vals = v_row[~is_g], v_col[~is_g], v_val[~is_g]  # sorted by row
    q_start = torch.searchsorted(q_rows, torch.arange(num_q + 1, device=device))
    for s in range(0, num_q, chunk_size):
        e = min(s + chunk_size, num_q)
        lo, hi = int(q_start[s]), int(q_start[e])
        inter = torch.zeros((e - s) * num_g, dtype=torch.float32, device=device)
        fan = g_count[q_cols[lo:hi]]
        reach = torch.cumsum(fan, 0)
        first = 0
        while first < hi - lo:  # blocks of query entries with at most max_pairs partners in all
            base = int(reach[first - 1]) if first else 0
            last = max(int(torch.searchsorted(reach, base + max_pairs, right=True)), first + 1)
            f = fan[first:last]
            entry = torch.arange(lo + first, lo + last, device=device).repeat_interleave(f)
            partner = g_start[q_cols[entry]] + _within(f)
            flat = (q_rows[entry] - s) * num_g + g_row[partner]
            inter.index_add_(0, flat, torch.minimum(q_vals[entry], g_val[partner]))
            first = last
        inter = inter.view(e - s, num_g)
        union = norm[s:e, None] + norm[None, num_q:] - inter
        jaccard = 1 - inter / union.clamp(min=torch.finfo(torch.float32).tiny)
        original[s:e] = (1 - lambda_value) * jaccard + lambda_value * original[s:e]
    return original
