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


# ------------------------------------------------------------------------------------------ variance components


def variance_components(groups) -> dict[str, float]:
    """One-way random-effects ANOVA: between-group and within-group variance of a score.

    ``groups`` is a list of 1-D arrays, one per selection (a random draw), each holding one score per
    training-order seed; groups may differ in size. The method-of-moments (ANOVA) estimates for an
    unbalanced design: ``sigma2_within = MSW`` and ``sigma2_between = (MSB - MSW) / n0`` (floored at 0),
    with ``n0 = (N - sum n_i^2 / N) / (k - 1)``. ``icc`` is the between share of a single run's variance.
    """
    gs = [np.asarray(g, dtype=float) for g in groups]
    gs = [g for g in gs if g.size]
    k = len(gs)
    sizes = np.array([g.size for g in gs], dtype=float)
    n = sizes.sum()
    if k < 2 or n - k < 1:
        raise ValueError(f"variance_components needs >= 2 groups and one group with >= 2 scores, got {sizes}")
    grand = np.concatenate(gs).mean()
    ssb = float(sum(g.size * (g.mean() - grand) ** 2 for g in gs))
    ssw = float(sum(((g - g.mean()) ** 2).sum() for g in gs))
    msb, msw = ssb / (k - 1), ssw / (n - k)
    n0 = (n - (sizes**2).sum() / n) / (k - 1)
    between = max(0.0, (msb - msw) / n0)
    total = between + msw
    return {
        "groups": k,
        "runs": int(n),
        "mean": float(grand),
        "msb": msb,
        "msw": msw,
        "n0": float(n0),
        "sigma2_between": between,
        "sigma2_within": msw,
        "icc": between / total if total > 0 else 0.0,
    }


def bootstrap_components(groups, n_boot: int = 2000, seed: int = 0) -> dict[str, Interval]:
    """:func:`variance_components` with bootstrap 95% intervals (as standard deviations).

    Two-stage resampling: the groups (which draws we happened to run) with replacement, then the scores
    within each picked group. Resamples with no within-group spread left are skipped. With few groups the
    between-group interval is wide, and with two it says almost nothing: that is the honest answer.
    """
    gs = [np.asarray(g, dtype=float) for g in groups]
    point = variance_components(gs)
    rng = np.random.default_rng(seed)
    between, within = [], []
    for _ in range(n_boot):
        picked = [gs[i] for i in rng.integers(0, len(gs), size=len(gs))]
        resampled = [g[rng.integers(0, g.size, size=g.size)] for g in picked]
        try:
            c = variance_components(resampled)
        except ValueError:
            continue
        between.append(np.sqrt(c["sigma2_between"]))
        within.append(np.sqrt(c["sigma2_within"]))
    if not between:  # every resample lost its within-group spread: no interval
        nan = float("nan")
        return {
            "sd_between": Interval(float(np.sqrt(point["sigma2_between"])), nan, nan),
            "sd_within": Interval(float(np.sqrt(point["sigma2_within"])), nan, nan),
        }
    return {
        "sd_between": _percentiles(np.array(between), np.sqrt(point["sigma2_between"])),
        "sd_within": _percentiles(np.array(within), np.sqrt(point["sigma2_within"])),
    }


# ------------------------------------------------------------------------------------------ power


def _z(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def pick_vs_random_se(sigma2_between: float, sigma2_within: float, pick_seeds: int, draws: int, seeds: int) -> float:
    """Standard error of (pick's mean over its seeds) - (mean over ``draws`` random draws x ``seeds`` seeds).

    The pick is one fixed selection: only its seeds vary. The random side samples both the draws (the
    between-selection component) and their seeds: var = s2_w / m + s2_b / D + s2_w / (D S).
    """
    return float(np.sqrt(sigma2_within / pick_seeds + sigma2_between / draws + sigma2_within / (draws * seeds)))


def detectable_effect(
    sigma2_between: float,
    sigma2_within: float,
    pick_seeds: int,
    draws: int,
    seeds: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true difference a two-sided test at ``alpha`` detects with probability ``power``.

    Normal approximation: effect = (z_{1-alpha/2} + z_power) * SE. With few draws the random side's mean is
    closer to a t than a normal, so this is a lower bound on what the design needs.
    """
    se = pick_vs_random_se(sigma2_between, sigma2_within, pick_seeds, draws, seeds)
    return (_z(1 - alpha / 2) + _z(power)) * se


def cheapest_design(
    sigma2_between: float,
    sigma2_within: float,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    max_pick_seeds: int = 64,
    max_draws: int = 400,
    max_seeds: int = 16,
) -> dict[str, int] | None:
    """The design (pick seeds m, draws D, seeds per draw S) with the fewest runs m + D S that detects
    ``effect`` at ``alpha`` with ``power``; None if none within the limits does."""
    best: dict[str, int] | None = None
    for seeds in range(1, max_seeds + 1):
        for draws in range(2, max_draws + 1):
            if best is not None and draws * seeds >= best["runs"]:
                break
            for m in range(1, max_pick_seeds + 1):
                if best is not None and m + draws * seeds >= best["runs"]:
                    break
                if detectable_effect(sigma2_between, sigma2_within, m, draws, seeds, alpha, power) <= effect:
                    best = {"pick_seeds": m, "draws": draws, "seeds": seeds, "runs": m + draws * seeds}
                    break
    return best


def best_effect_for_runs(
    sigma2_between: float, sigma2_within: float, runs: int, alpha: float = 0.05, power: float = 0.8
) -> dict[str, float] | None:
    """The smallest detectable effect, and its design, over every (m, D, S) with m + D S <= ``runs``."""
    best: dict[str, float] | None = None
    for seeds in range(1, 17):
        for draws in range(2, runs):
            m = runs - draws * seeds
            if m < 1:
                break
            e = detectable_effect(sigma2_between, sigma2_within, m, draws, seeds, alpha, power)
            if best is None or e < best["effect"]:
                best = {"effect": e, "pick_seeds": m, "draws": draws, "seeds": seeds, "runs": m + draws * seeds}
    return best


# ------------------------------------------------------------------------------------------ seed-aware comparison


@dataclass(frozen=True)
class Comparison:
    """A pick against random draws with every source of noise counted: its interval and a two-sided p."""

    difference: Interval
    p: float
    pick_seeds: int
    draws: int
    runs: int

    def to_json(self) -> dict[str, float | int]:
        return {**self.difference.to_json(), "p": self.p, "pick_seeds": self.pick_seeds, "draws": self.draws}


def _runs(x, n_items: int | None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    a = a[None, :] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] == 0 or (n_items is not None and a.shape[1] != n_items):
        raise ValueError(f"every run needs one score per item ({n_items} items), got an array of shape {a.shape}")
    return a


def hierarchical_diff(
    pick,
    draws,
    weights=None,
    pick_seed_sd: float | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
) -> Comparison:
    """The pick's mean over its training seeds minus the mean over random draws (each over its seeds).

    ``pick`` holds one row of per-item scores per training seed; ``draws`` one such array per random
    draw. Scores are per item (1/0 exact match, or a block's loss sum with ``weights`` its token counts, so
    a run's value is the token-weighted mean). The bootstrap resamples every level the result depends on:
    the items (shared by all runs, so the comparison stays paired), the pick's seeds, the draws, and the
    seeds within each draw. One "draw" compares two fixed selections, each over its seeds. A pick that ran
    once has no seed spread of its own to resample: then
    ``pick_seed_sd`` (the within-selection SD estimated elsewhere, in the score's units) must be given and is
    added as normal noise, so that a single lucky run is not read as a property of the selection.
    """
    p = _runs(pick, None)
    n = p.shape[1]
    ds = [_runs(d, n) for d in draws]
    if not ds:
        raise ValueError("hierarchical_diff needs at least one draw (one: a fixed selection over its seeds)")
    if p.shape[0] == 1 and pick_seed_sd is None:
        raise ValueError("the pick ran once: pass pick_seed_sd (the within-selection SD) to count its seed noise")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"weights need one value per item ({n}), got shape {w.shape}")

    def value(runs: np.ndarray, items: np.ndarray) -> np.ndarray:
        return runs[:, items].sum(axis=1) / w[items].sum()

    every = np.arange(n)
    estimate = value(p, every).mean() - np.mean([value(d, every).mean() for d in ds])
    rng = np.random.default_rng(seed)
    samples = np.empty(n_boot)
    for k in range(n_boot):
        items = np.asarray(rng.integers(0, n, size=n))
        mine = value(p[rng.integers(0, p.shape[0], size=p.shape[0])], items).mean()
        if p.shape[0] == 1:
            mine += rng.normal(0.0, float(pick_seed_sd or 0.0))
        theirs = []
        for i in rng.integers(0, len(ds), size=len(ds)):
            d = ds[i]
            theirs.append(value(d[rng.integers(0, d.shape[0], size=d.shape[0])], items).mean())
        samples[k] = mine - np.mean(theirs)
    p_two = float(min(1.0, 2 * min((samples <= 0).mean(), (samples >= 0).mean())))
    return Comparison(
        _percentiles(samples, float(estimate)),
        p_two,
        pick_seeds=p.shape[0],
        draws=len(ds),
        runs=p.shape[0] + sum(d.shape[0] for d in ds),
    )


#: the fewest random draws behind a verdict against random picks: resampling two or three draws cannot show how
#: far the next draw may land, so such an interval is too narrow however many seeds each draw has.
MIN_DRAWS = 5


def reading(iv: Interval, higher_is_better: bool, draws: int = 1) -> str:
    """The study's one wording rule: "better"/"worse" where the 95% interval excludes zero, else "not shown";
    against random picks (``draws`` > 1) only with at least :data:`MIN_DRAWS` of them."""
    if draws > 1 and draws < MIN_DRAWS:
        return f"too few draws ({draws} of {MIN_DRAWS})"
    if not iv.excludes_zero:
        return "not shown"
    return "better" if (iv.low > 0) == higher_is_better else "worse"
