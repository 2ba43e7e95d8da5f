"""Rank metrics against hand-computed answers and a plain sorting reference."""

import numpy as np
import pytest
import torch

from dgnet.evaluation.rank import rank_metrics, rank_metrics_from_features


def _one_query(hit_ranks: list[int], num_gallery: int = 10):
    """A query whose gallery, ordered by distance, holds hits at the given 1-based ranks."""
    dist = np.arange(num_gallery, dtype=np.float32)[None, :]
    g_pids = np.full(num_gallery, 2)
    g_pids[np.asarray(hit_ranks) - 1] = 1
    return dist, np.array([1]), np.array([1]), g_pids, np.full(num_gallery, 2)


def test_hand_computed_hits_at_1_2_4_7():
    args = _one_query([1, 2, 4, 7])
    market = rank_metrics(*args)
    # finite: (1/1 + 2/2 + 3/4 + 4/7) / 4; market: trapezoids (1+1)/2, (1+1)/2, (3/4+2/3)/2, (4/7+3/6)/2
    assert market["mAP_finite"] == pytest.approx(0.8304, abs=1e-4)
    assert market["mAP"] == pytest.approx(0.8110, abs=1e-4)
    assert market["mINP"] == pytest.approx(4 / 7, abs=1e-4)
    assert market["rank1"] == 1.0 and market["cmc"][0] == 1.0


def test_first_hit_late_sets_cmc():
    metrics = rank_metrics(*_one_query([3, 9]))
    assert metrics["cmc"][:3] == [0.0, 0.0, 1.0]
    assert metrics["rank1"] == 0.0 and metrics["rank5"] == 1.0
    assert metrics["mAP_finite"] == pytest.approx((1 / 3 + 2 / 9) / 2)
    assert metrics["mINP"] == pytest.approx(2 / 9)


def test_junk_same_id_same_camera_and_minus_one_are_removed():
    # Ranked gallery: junk(same id, same cam), junk(-1), negative, hit, hit(same cam as query? no)
    dist = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    g_pids = np.array([1, -1, 5, 1, 1])
    g_cams = np.array([3, 2, 2, 2, 4])
    metrics = rank_metrics(dist, [1], [3], g_pids, g_cams)
    # After removing the two junk items the order is: negative, hit, hit -> hits at ranks 2, 3.
    assert metrics["rank1"] == 0.0 and metrics["cmc"][1] == 1.0
    assert metrics["mAP_finite"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_distractor_zero_is_a_negative():
    dist = np.array([[0.0, 1.0]], dtype=np.float32)
    metrics = rank_metrics(dist, [7], [1], [0, 7], [2, 2])
    assert metrics["rank1"] == 0.0
    assert metrics["mAP_finite"] == pytest.approx(0.5)


def test_query_without_valid_match_is_counted_not_averaged():
    dist = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # Query 0 only has a same-camera (junk) match; query 1 hits at rank 1.
    metrics = rank_metrics(dist, [1, 2], [1, 1], [1, 2], [1, 3])
    assert metrics["num_queries"] == 2
    assert metrics["num_queries_without_match"] == 1
    assert metrics["num_valid_queries"] == 1
    assert metrics["mAP"] == metrics["mAP_finite"] == 1.0 and metrics["rank1"] == 1.0


def test_ties_are_broken_by_gallery_index():
    dist = np.zeros((1, 4), dtype=np.float32)
    # All distances equal: a stable order puts the hit (index 2) at rank 3.
    metrics = rank_metrics(dist, [1], [1], [4, 5, 1, 6], [2, 2, 2, 2])
    assert metrics["mAP_finite"] == pytest.approx(1 / 3)


def _reference(dist, q_pids, q_cams, g_pids, g_cams, ap, max_rank):
    """The textbook loop: stable argsort, drop junk, score hits."""
    aps, inps, cmcs = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        pid, cam = g_pids[order], g_cams[order]
        junk = ((pid == q_pids[i]) & (cam == q_cams[i])) | (pid == -1)
        hits = (pid == q_pids[i])[~junk]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits) + 1
        k = np.arange(1, len(ranks) + 1)
        precision = k / ranks
        if ap == "market":
            before = np.where(ranks > 1, (k - 1) / np.maximum(ranks - 1, 1), 1.0)
            precision = (precision + before) / 2
        aps.append(precision.mean())
        inps.append(len(ranks) / ranks[-1])
        cmc = np.zeros(max_rank)
        cmc[ranks[0] - 1:] = 1
        cmcs.append(cmc)
    return np.mean(aps), np.mean(inps), np.mean(cmcs, axis=0), dist.shape[0] - len(aps)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_matches_reference_on_random_data_with_ties(chunk_size):
    rng = np.random.default_rng(0)
    num_q, num_g = 40, 300
    dist = rng.integers(0, 30, size=(num_q, num_g)).astype(np.float32)  # many ties
    dist[:, :5] = -rng.random((num_q, 5)).astype(np.float32)  # negative distances too
    g_pids = rng.integers(-1, 12, size=num_g)
    g_cams = rng.integers(1, 7, size=num_g)
    q_pids = rng.integers(1, 14, size=num_q)  # ids 12, 13 have no gallery match at all
    q_cams = rng.integers(1, 7, size=num_q)
    metrics = rank_metrics(dist, q_pids, q_cams, g_pids, g_cams, chunk_size=chunk_size)
    ref_finite = _reference(dist, q_pids, q_cams, g_pids, g_cams, "finite", 50)[0]
    ref_map, ref_inp, ref_cmc, ref_missing = _reference(dist, q_pids, q_cams, g_pids, g_cams, "market", 50)
    assert metrics["mAP"] == pytest.approx(ref_map, abs=1e-12)
    assert metrics["mAP_finite"] == pytest.approx(ref_finite, abs=1e-12)
    assert metrics["mINP"] == pytest.approx(ref_inp, abs=1e-12)
    assert np.allclose(metrics["cmc"], ref_cmc)
    assert metrics["num_queries_without_match"] == ref_missing > 0


def test_from_features_equals_full_matrix():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(30, 16), dim=1)
    g = torch.nn.functional.normalize(torch.randn(120, 16), dim=1)
    q_pids, g_pids = torch.randint(0, 10, (30,)), torch.randint(-1, 10, (120,))
    q_cams, g_cams = torch.randint(1, 4, (30,)), torch.randint(1, 4, (120,))
    full = rank_metrics(-(q @ g.T), q_pids, q_cams, g_pids, g_cams)
    chunked = rank_metrics_from_features(q, g, q_pids, q_cams, g_pids, g_cams, chunk_size=8)
    assert chunked["cmc"] == full["cmc"]
    for key in ("mAP", "mAP_finite", "mINP"):  # summed in another order: equal up to rounding
        assert chunked[key] == pytest.approx(full[key], abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_equals_cpu():
    torch.manual_seed(0)
    dist = torch.randn(50, 400)
    q_pids, g_pids = torch.randint(0, 20, (50,)), torch.randint(-1, 20, (400,))
    q_cams, g_cams = torch.randint(1, 6, (50,)), torch.randint(1, 6, (400,))
    cpu = rank_metrics(dist, q_pids, q_cams, g_pids, g_cams)
    gpu = rank_metrics(dist.cuda(), q_pids.cuda(), q_cams.cuda(), g_pids.cuda(), g_cams.cuda())
    for key in ("rank1", "mAP", "mAP_finite", "mINP"):
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finite_map_equals_sklearn_average_precision(seed):
    """mAP_finite = the mean over queries of sklearn's average_precision_score on the gallery with the
    query's junk (same id and camera, id -1) removed; continuous distances, so no ties."""
    metrics_module = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    num_q, num_g = 30, 200
    dist = rng.random((num_q, num_g))
    g_pids, g_cams = rng.integers(-1, 10, size=num_g), rng.integers(1, 5, size=num_g)
    q_pids, q_cams = rng.integers(0, 10, size=num_q), rng.integers(1, 5, size=num_q)
    aps = []
    for i in range(num_q):
        keep = ~(((g_pids == q_pids[i]) & (g_cams == q_cams[i])) | (g_pids == -1))
        hits = g_pids[keep] == q_pids[i]
        if hits.any():
            aps.append(metrics_module.average_precision_score(hits, -dist[i, keep]))
    metrics = rank_metrics(dist, q_pids, q_cams, g_pids, g_cams, chunk_size=7)
    assert metrics["num_valid_queries"] == len(aps) > 0
    assert metrics["mAP_finite"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert metrics["mAP"] < metrics["mAP_finite"]  # the trapezoid's before-term is below the precision
