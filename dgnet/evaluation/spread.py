"""Seed spread: a variant's mean and standard deviation over seeds, and the paired difference of two
variants over the seeds they share, with a Student-t 95% interval and a plain verdict.

Pure Python (no SciPy on the torch-only GPU machines): the t quantiles for df <= 30 are the usual
table, beyond it the Cornish-Fisher expansion around the normal quantile (error < 1e-4 there).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# t_{0.975, df} for df = 1..30: the half-width of a two-sided 95% interval is t * sd / sqrt(n).
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
         2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
         2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"t quantile: df must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class PairedDifference:
    """`variant - reference` over the seeds both have: mean, 95% t interval (None for one seed), verdict."""

    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean: float
    low: float | None
    high: float | None

    @property
    def verdict(self) -> str:
        """above / below (the interval excludes 0), not distinguishable, or one seed (no interval)."""
        if self.low is None or self.high is None:
            return "one seed: no interval"
        if self.low > 0:
            return "above"
        if self.high < 0:
            return "below"
        return "not distinguishable at this seed count"


def paired_difference(variant: Mapping[int, float],
                      reference: Mapping[int, float]) -> PairedDifference | None:
    """d_s = variant[s] - reference[s] for the shared seeds s; mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n).
    None when they share no seed."""
    seeds = tuple(sorted(set(variant) & set(reference)))
    if not seeds:
        return None
    diffs = tuple(variant[s] - reference[s] for s in seeds)
    mean, sd = mean_std(list(diffs))
    if sd is None:
        return PairedDifference(seeds, diffs, mean, None, None)
    half = t_quantile_975(len(seeds) - 1) * sd / math.sqrt(len(seeds))
    return PairedDifference(seeds, diffs, mean, mean - half, mean + half)
