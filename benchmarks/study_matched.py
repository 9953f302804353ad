"""Learning at matched forgetting: an arm against full fine-tuning's learning-vs-forgetting curve.

The `selectors` block's primary comparison, stated 2026-12-06 before any of its runs: a selection that learns
less but also forgets less is not worse, and one that learns more by forgetting more is not better, so each arm
is compared with what full fine-tuning learns *at the arm's own forgetting*. Full fine-tuning's curve is its
runs over the rate grid (every rate's runs averaged: the operating rate over its seeds, the others at seed 0),
learning against forgetting, joined by straight lines; the arm's point is its mean over its seeds. The
difference is the arm's learning minus the curve's learning at the arm's forgetting. Outside the curve's range
of forgetting there is no comparison (nothing is extrapolated), and an arm so near the curve's end that more than
5% of the resamples leave it gets no reading.

The interval is a bootstrap that resamples the items (shared by every run, so paired), the arm's seeds and
the full runs' seeds at each rate; a rate that ran once gets a seed's noise added, its SD pooled from the
fixed arms' seeds (as ``hierarchical_diff`` does for a pick that ran once). Choosing the best of k arms after
the fact inflates its lead, so the best arm is read at a 1 - 0.05/k interval (Bonferroni).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.stats import Interval, reading
from benchmarks.study_primary import Metric, run_value

#: the share of resamples whose forgetting must land on full fine-tuning's curve for a reading: nearer the curve's
#: end the interval would be conditioned on the resamples that happen to stay inside it
ON_CURVE = 0.95


def _values(o: Metric, runs: list[dict], items: np.ndarray) -> np.ndarray:
    x = np.array([o.items(r) for r in runs], dtype=float)[:, items]
    w = o.weights(runs[0])
    den = float(np.sum(np.asarray(w, dtype=float)[items])) if w else float(len(items))
    return o.scale * x.sum(axis=1) / den


def curve_at(forgetting: float, curve: list[tuple[float, float]]) -> float | None:
    """The curve's learning at ``forgetting`` (straight lines between its points, sorted by forgetting);
    None outside its range."""
    pts = sorted(curve)
    xs = [p[0] for p in pts]
    if len(pts) < 2 or not xs[0] <= forgetting <= xs[-1]:
        return None
    return float(np.interp(forgetting, xs, [p[1] for p in pts]))


def seed_sd(o: Metric, groups: list[list[dict]]) -> float:
    """The pooled SD between training-order seeds of fixed selections (groups of two or more runs)."""
    ss, dof = 0.0, 0
    for runs in groups:
        if len(runs) >= 2:
            v = np.array([run_value(o, r) for r in runs])
            ss += float(np.sum((v - v.mean()) ** 2))
            dof += len(runs) - 1
    return float(np.sqrt(ss / dof)) if dof else 0.0


def matched(
    learn: Metric,
    forget: Metric,
    arm: list[dict],
    full: dict[float, list[dict]],
    sd: tuple[float, float],
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """``arm``'s learning minus full fine-tuning's at the arm's forgetting.

    ``full`` maps each rate to its runs; ``sd`` is the seed SD (learning, forgetting) added to a rate that
    ran once. None if a side lacks the metrics, full has fewer than two rates, or the arm's forgetting lies
    outside the curve."""
    runs = [*arm, *(r for rs in full.values() for r in rs)]
    if len(full) < 2 or not arm or any(learn.items(r) is None or forget.items(r) is None for r in runs):
        return None
    n_l, n_f = len(learn.items(arm[0]) or []), len(forget.items(arm[0]) or [])

    def diff(il: np.ndarray, jf: np.ndarray, rng: np.random.Generator | None) -> float | None:
        def pick(rs: list[dict]) -> list[dict]:
            return rs if rng is None else [rs[i] for i in rng.integers(0, len(rs), size=len(rs))]

        mine = pick(arm)
        curve = []
        for rs in full.values():
            chosen = pick(rs)
            f, lv = float(_values(forget, chosen, jf).mean()), float(_values(learn, chosen, il).mean())
            if rng is not None and len(rs) == 1:
                f, lv = f + rng.normal(0.0, sd[1]), lv + rng.normal(0.0, sd[0])
            curve.append((f, lv))
        at = curve_at(float(_values(forget, mine, jf).mean()), curve)
        learned = float(_values(learn, mine, il).mean())
        if rng is not None and len(mine) == 1:
            learned += rng.normal(0.0, sd[0])
        return None if at is None else learned - at

    estimate = diff(np.arange(n_l), np.arange(n_f), None)
    if estimate is None:
        return None
    rng = np.random.default_rng(seed)
    samples = [diff(rng.integers(0, n_l, size=n_l), rng.integers(0, n_f, size=n_f), rng) for _ in range(n_boot)]
    inside = np.array([s for s in samples if s is not None])
    if not len(inside):
        return None
    tail = 100 * (1 - level) / 2
    iv = Interval(estimate, float(np.percentile(inside, tail)), float(np.percentile(inside, 100 - tail)))
    share = len(inside) / n_boot
    return {
        **iv.to_json(),
        "level": level,
        "inside_curve": share,
        "reading": reading(iv, learn.higher_is_better) if share >= ON_CURVE else "not shown (at the curve's end)",
    }


def matched_table(
    learn: Metric,
    forget: Metric,
    arms: dict[str, list[dict]],
    full: dict[float, list[dict]],
    fixed: set[str] | None = None,
    n_boot: int = 4000,
    sd: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Every arm at matched forgetting, and the best of them read at the Bonferroni level for k arms.

    The seed SD is pooled over the ``fixed`` arms (one selection over its seeds; default: every arm) and full
    fine-tuning's rates; a group of random draws mixes selections, so it is left out of the pool. ``sd`` (learning,
    forgetting) takes another table's pooled SD instead, so the same noise is added to its single runs."""
    if sd is None:
        fixed = set(arms) if fixed is None else fixed
        groups = [rs for k, rs in arms.items() if k in fixed and len(rs) >= 2]
        groups += [rs for rs in full.values() if len(rs) >= 2]
        if not groups:
            return {}
        sd = (seed_sd(learn, groups), seed_sd(forget, groups))
    rows = {name: matched(learn, forget, rs, full, sd, n_boot=n_boot) for name, rs in arms.items()}
    found = {k: v for k, v in rows.items() if v is not None}
    out: dict[str, Any] = {"seed_sd": {"learning": sd[0], "forgetting": sd[1]}, "arms": rows}
    if found:
        sign = 1 if learn.higher_is_better else -1
        best = max(found, key=lambda k: sign * found[k]["estimate"])
        level = 1 - 0.05 / len(found)
        out["best"] = {
            "arm": best,
            "of": len(found),
            **(matched(learn, forget, arms[best], full, sd, level=level, n_boot=n_boot) or {}),
        }
    return out
