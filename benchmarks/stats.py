"""Statistics for the study: paired bootstrap intervals and where one pick ranks among random picks.

Every comparison in docs/evidence.md is a paired difference on the same test items (or held-out text
blocks), so item difficulty cancels; the interval comes from resampling those items. A claim of "better"
needs the 95% interval to exclude zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap 95% interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _percentiles(samples: np.ndarray, estimate: float) -> Interval:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return Interval(float(estimate), float(lo), float(hi))


def paired_diff(a, b, n_boot: int = 10_000, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over the same items, with a bootstrap 95% interval (items resampled)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_diff needs two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    return _percentiles(d[idx].mean(axis=1), d.mean())


def ratio_diff(num_a, num_b, den, n_boot: int = 10_000, seed: int = 0) -> Interval:
    """Paired difference of two token-weighted means (sum of losses / sum of tokens) over the same blocks.

    ``num_a``/``num_b`` are per-block loss sums of two models, ``den`` the blocks' token counts.
    """
    num_a, num_b, den = (np.asarray(x, dtype=float) for x in (num_a, num_b, den))
    if not (num_a.shape == num_b.shape == den.shape) or num_a.size == 0:
        raise ValueError("ratio_diff needs three equal, non-empty 1-D arrays")
    idx = np.random.default_rng(seed).integers(0, den.size, size=(n_boot, den.size))
    d = den[idx].sum(axis=1)
    samples = (num_a[idx].sum(axis=1) - num_b[idx].sum(axis=1)) / d
    return _percentiles(samples, (num_a.sum() - num_b.sum()) / den.sum())


def diff_to_population(a, draws, n_boot: int = 10_000, seed: int = 0) -> Interval:
    """Mean of ``a`` minus the mean of a population of random draws, all scored on the same items.

    Two sources of noise are resampled together: the items (paired, as in :func:`paired_diff`) and the
    draws (which random picks we happened to run), so the interval covers both.
    """
    a = np.asarray(a, dtype=float)
    draws = np.asarray(draws, dtype=float)
    if draws.ndim != 2 or draws.shape[1] != a.size or draws.shape[0] < 2:
        raise ValueError(f"diff_to_population needs >= 2 draws over the same {a.size} items, got {draws.shape}")
    rng = np.random.default_rng(seed)
    items = rng.integers(0, a.size, size=(n_boot, a.size))
    picks = rng.integers(0, draws.shape[0], size=(n_boot, draws.shape[0]))
    samples = np.empty(n_boot)
    for k in range(n_boot):
        samples[k] = a[items[k]].mean() - draws[picks[k]][:, items[k]].mean()
    return _percentiles(samples, a.mean() - draws.mean())


def empirical_p(value: float, draws, higher_is_better: bool = True) -> float:
    """One-sided empirical p-value of ``value`` against random draws: (1 + #draws at least as good) / (1 + n).

    With n draws the smallest possible value is 1 / (n + 1): ten draws can never give p < 0.09.
    """
    draws = np.asarray(draws, dtype=float)
    if draws.size == 0:
        raise ValueError("empirical_p needs at least one draw")
    at_least = (draws >= value) if higher_is_better else (draws <= value)
    return float((1 + at_least.sum()) / (1 + draws.size))


def rank_among(value: float, draws, higher_is_better: bool = True) -> int:
    """1-based rank of ``value`` among itself and the draws (ties rank it below the draws it ties)."""
    draws = np.asarray(draws, dtype=float)
    better = (draws >= value) if higher_is_better else (draws <= value)
    return int(better.sum()) + 1
