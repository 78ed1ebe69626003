"""Confidence intervals and paired tests over (task, seed) pairs (SciPy)."""

import math

import numpy as np
from scipy import stats


def bootstrap_ci(
    values: list[float], level: float = 0.95, resamples: int = 10000, seed: int = 0
) -> list[float]:
    """Percentile bootstrap CI of the mean (over seeds); a single value gives [v, v].

    Args:
        values: one value per seed (NaN and None are dropped).
        level: the interval's coverage.
        resamples: bootstrap resamples.
        seed: the resampling's seed.
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return [math.nan, math.nan]
    means = (
        np.random.default_rng(seed).choice(x, size=(resamples, x.size), replace=True).mean(axis=1)
    )
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def paired_test(a: list[float], b: list[float]) -> dict:
    """Wilcoxon signed-rank test of a vs b over pairs, with wins, losses and the mean difference."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = diff[np.isfinite(diff)]
    nonzero = diff[diff != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if nonzero.size else 1.0
    return {
        "wilcoxon_p": p,
        "n_pairs": int(diff.size),
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "mean_difference": float(diff.mean()) if diff.size else math.nan,
    }


def per_task_test(a: list[float], b: list[float]) -> dict:
    """Paired t-test over seeds for one task (Wilcoxon cannot go below p = 0.25 with 3 pairs)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    p = float(stats.ttest_rel(a, b).pvalue) if diff.size >= 2 and np.ptp(diff) > 0 else None
    return {"ttest_p": p, "mean_difference": float(diff.mean()), "n": int(diff.size)}
