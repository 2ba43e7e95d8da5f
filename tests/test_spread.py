"""Seed spread: the t quantiles against SciPy, the paired interval by hand, and the verdicts."""

from __future__ import annotations

import math

import pytest

from dgnet.evaluation.spread import mean_std, paired_difference, t_quantile_975


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 9, 30, 31, 45, 120, 1000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


def test_mean_and_sample_std():
    assert mean_std([0.3]) == (0.3, None)
    mean, std = mean_std([0.30, 0.34, 0.32])
    assert mean == pytest.approx(0.32) and std == pytest.approx(0.02)


def test_paired_interval_by_hand_and_verdicts():
    full = {0: 0.40, 1: 0.42, 2: 0.41}
    # Differences -0.05, -0.06, -0.04: mean -0.05, sd 0.01, half-width 4.3027 * 0.01 / sqrt(3).
    worse = paired_difference({0: 0.35, 1: 0.36, 2: 0.37, 5: 0.9}, full)
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert worse.seeds == (0, 1, 2)  # only the shared seeds are paired
    assert worse.mean == pytest.approx(-0.05) and worse.high == pytest.approx(-0.05 + half)
    assert worse.verdict == "below"
    better = paired_difference({s: v + 0.05 for s, v in full.items()},
                               {s: v - 0.001 * s for s, v in full.items()})
    assert better.verdict == "above" and better.low > 0
    noisy = paired_difference({0: 0.45, 1: 0.38}, {0: 0.40, 1: 0.42})
    assert noisy.low < 0 < noisy.high and noisy.verdict == "not distinguishable at this seed count"
    one = paired_difference({0: 0.5}, {0: 0.4, 1: 0.3})
    assert one.low is None and one.verdict.startswith("one seed")
    assert paired_difference({3: 0.5}, {0: 0.4}) is None
