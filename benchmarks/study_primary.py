"""The second study's primary comparisons, with every source of run-to-run noise counted.

Stated after the pilot's first two runs (2026-12-06), before the other fourteen: at the pilot's operating
point both runs reached 99-99.5% test exact match by step 200, so the final score sits at the ceiling and
cannot separate selections. The questions a user has are how fast a selection learns and what it costs:

    learning     test exact match at step 100 of 300 (the first third of the schedule), in points
    forgetting   general-text loss at the end (token-weighted over the same held-out blocks), in nats

Final exact match is reported beside them. Each comparison is the SNR pick (over its training-order seeds)
minus the random draws of its per-type size (each over its seeds), with an interval from
:func:`benchmarks.stats.hierarchical_diff`, which resamples items, seeds and draws. One wording rule, both
ways: "better" or "worse" only where that 95% interval excludes zero, otherwise "not shown".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.stats import (
    best_effect_for_runs,
    bootstrap_components,
    cheapest_design,
    hierarchical_diff,
    reading,
    variance_components,
)

EARLY = "100"  # the step (a key of a run's ``checkpoints``) at which learning speed is compared


@dataclass(frozen=True)
class Metric:
    """One outcome of a run: per-item scores, their weights, and how to read a difference."""

    label: str
    unit: str
    higher_is_better: bool
    scale: float  # per-item score -> the unit (fractions -> points)
    effect: float  # the difference, in the unit, the main study should detect
    items: Callable[[dict], list[float] | None]
    weights: Callable[[dict], list[float] | None] = lambda r: None


def _hits(r: dict, step: str | None) -> list[float] | None:
    h = r.get("eval", {}).get("test", {}).get("hits") if step is None else r.get("checkpoints", {}).get(step, {})
    if step is not None:
        h = h.get("test_hits") if isinstance(h, dict) else None
    return [float(c == "1") for c in h] if h else None


def split_values(r: dict, split: str, key: str) -> list[float] | None:
    """A run's per-item ``key`` ("nll" or "tokens") of an evaluation ``split``; None if it has none."""
    g = r.get("eval", {}).get(split)
    return [float(x) for x in g[key]] if g else None


METRICS = {
    "em_early": Metric(f"test exact match at step {EARLY}", "points", True, 100.0, 5.0, lambda r: _hits(r, EARLY)),
    "general_end": Metric(
        "general-text loss at the end",
        "nats",
        False,
        1.0,
        0.2,
        lambda r: split_values(r, "general", "nll"),
        lambda r: split_values(r, "general", "tokens"),
    ),
    "em_end": Metric("test exact match at the end", "points", True, 100.0, 5.0, lambda r: _hits(r, None)),
}


#: forgetting of the chat format (the model's own chat-template conversations), reported beside the primaries
CHAT = Metric(
    "chat loss at the end",
    "nats",
    False,
    1.0,
    0.2,
    lambda r: split_values(r, "chat", "nll"),
    lambda r: split_values(r, "chat", "tokens"),
)


def run_value(m: Metric, r: dict) -> float:
    """A run's value of ``m`` in its unit (token-weighted where the metric has weights)."""
    x = m.items(r)
    if x is None:
        raise ValueError(f"{r.get('name')}: the run has no {m.label}")
    w = m.weights(r) or [1.0] * len(x)
    return m.scale * float(np.sum(x)) / float(np.sum(w))


def _groups(rows: list[dict], m: Metric, group: str) -> dict[Any, list[dict]]:
    out: dict[Any, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["data_seed"]):
        if r["group"] == group and m.items(r) is not None:
            out.setdefault(r.get("selection_seed"), []).append(r)
    return out


def compare(
    m: Metric, pick: list[dict], others: list[list[dict]], within_sd: float | None = None, n_boot: int = 10_000
) -> dict[str, Any] | None:
    """The pick minus ``others`` on ``m``, in its unit: random draws (each a list of runs over its seeds), or
    one fixed selection over its seeds. Runs without the metric are left out.

    Returns the hierarchical interval, p, the reading (the study's one wording rule) and ``detectable``: the
    smallest true difference this design detects at alpha 0.05 with power 0.8, (1.96 + 0.84) standard errors,
    the standard error read off the interval's width. None where the noise cannot be counted: a pick that ran
    once needs ``within_sd``, and a fixed selection on the other side needs two runs.
    """
    pick = [r for r in pick if m.items(r) is not None]
    others = [d for d in ([r for r in o if m.items(r) is not None] for o in others) if d]
    if not pick or not others or (len(pick) == 1 and within_sd is None):
        return None
    if len(others) == 1 and len(others[0]) < 2:
        return None
    as_array = lambda runs: np.array([m.items(r) for r in runs], dtype=float)  # noqa: E731
    c = hierarchical_diff(
        as_array(pick),
        [as_array(d) for d in others],
        weights=m.weights(pick[0]),
        pick_seed_sd=None if within_sd is None else within_sd / m.scale,
        n_boot=n_boot,
    )
    d = c.difference
    out: dict[str, Any] = {k: m.scale * v for k, v in d.to_json().items()}
    out.update(
        p=c.p,
        pick_seeds=c.pick_seeds,
        draws=c.draws,
        runs=c.runs,
        detectable=(1.96 + 0.84) * m.scale * (d.high - d.low) / (2 * 1.96),
        reading=reading(d, m.higher_is_better, c.draws),
    )
    return out


def analyse(
    rows: list[dict], pick_group: str, random_group: str, budget_hours: float, n_boot: int = 10_000
) -> dict[str, Any]:
    """Per metric: the variance split over the random draws, the pick against them, and the power."""
    walls = [r["wall_s"] for r in rows if r.get("wall_s")]
    budget_runs = int(budget_hours * 3600 / float(np.median(walls))) if walls else None
    out: dict[str, Any] = {}
    for key, m in METRICS.items():
        pick = _groups(rows, m, pick_group).get(None, [])
        draws = list(_groups(rows, m, random_group).values())
        res: dict[str, Any] = {"label": m.label, "unit": m.unit, "higher_is_better": m.higher_is_better}
        values = [[run_value(m, r) for r in d] for d in draws]
        if pick:
            res["pick_mean"] = float(np.mean([run_value(m, r) for r in pick]))
            res["pick_runs"] = len(pick)
        if values:
            res["random_mean"] = float(np.mean([np.mean(v) for v in values]))
        comp = None
        if len(values) >= 2 and any(len(v) >= 2 for v in values):
            comp = variance_components(values)
            ci = bootstrap_components(values)
            pooled = values + ([[run_value(m, r) for r in pick]] if pick else [])
            within = variance_components(pooled)["sigma2_within"]
            res["components"] = {
                **comp,
                "sigma2_within_pooled": within,
                **{k: v.to_json() for k, v in ci.items()},
            }
            res["power"] = _power(comp["sigma2_between"], within, ci["sd_between"].high, m.effect, budget_runs)
            within_sd = float(np.sqrt(within))
        else:
            within_sd = None
        cmp = compare(m, pick, draws, within_sd, n_boot) if len(draws) >= 2 else None
        if cmp:
            res["pick_minus_random"] = cmp
        out[key] = res
    return out


def _power(s2b: float, s2w: float, sd_b_high: float, effect: float, budget_runs: int | None) -> dict[str, Any]:
    scenarios = {}
    for label, sd_b in (("point", np.sqrt(s2b)), ("upper", sd_b_high)):
        if np.isfinite(sd_b):
            scenarios[label] = {
                "sd_between": float(sd_b),
                "cheapest_design": cheapest_design(float(sd_b) ** 2, s2w, effect),
                "best_for_budget": best_effect_for_runs(float(sd_b) ** 2, s2w, budget_runs) if budget_runs else None,
            }
    return {"effect": effect, "alpha": 0.05, "power": 0.8, "budget_runs": budget_runs, "scenarios": scenarios}


def _num(x: float, unit: str) -> str:
    return f"{x:+.1f}" if unit == "points" else f"{x:+.2f}"


def markdown(analysis: dict[str, Any], pick_name: str) -> list[str]:
    """The doc's lines for :func:`analyse`: one table of comparisons, then variance and power per metric."""
    lines = [
        f"| primary comparison: {pick_name} - random draws | {pick_name} | random draws | difference [95% CI] "
        "| p | runs (pick + draws) | reading |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for res in analysis.values():
        c = res.get("pick_minus_random")
        if not c:
            continue
        u = res["unit"]
        lines.append(
            f"| {res['label']} ({u}, {'higher' if res['higher_is_better'] else 'lower'} is better) | "
            f"{res['pick_mean']:.{1 if u == 'points' else 2}f} | {res['random_mean']:.{1 if u == 'points' else 2}f} | "
            f"{_num(c['estimate'], u)} [{_num(c['low'], u)}, {_num(c['high'], u)}] | {c['p']:.2f} | "
            f"{c['pick_seeds']} + {c['runs'] - c['pick_seeds']} ({c['draws']} draws) | {c['reading']} |"
        )
    if len(lines) == 2:
        lines = ["_No primary comparison yet: it needs the pick's runs and at least two random draws._"]
    lines.append("")
    for res in analysis.values():
        c, u = res.get("components"), res["unit"]
        if not c:
            continue
        d = 1 if u == "points" else 2
        lines.append(
            f"- {res['label']}: between-draw SD {c['sd_between']['estimate']:.{d}f} {u} "
            f"[{c['sd_between']['low']:.{d}f}, {c['sd_between']['high']:.{d}f}], within-draw (training-order seed) "
            f"SD {c['sd_within']['estimate']:.{d}f} [{c['sd_within']['low']:.{d}f}, {c['sd_within']['high']:.{d}f}]"
            f" ({c['groups']} draws, {c['runs']} runs; pooled with the pick's seeds "
            f"{np.sqrt(c['sigma2_within_pooled']):.{d}f})."
        )
        for label, sc in res["power"]["scenarios"].items():
            des, best = sc["cheapest_design"], sc["best_for_budget"]
            eff = res["power"]["effect"]
            lines.append(
                f"  Power ({label} between-draw SD {sc['sd_between']:.{d}f}): "
                + (
                    f"a {eff:g}-{u[:-1]} difference needs {des['runs']} runs ({des['pick_seeds']} pick seeds + "
                    f"{des['draws']} draws x {des['seeds']} seeds)"
                    if des
                    else f"no design within the search limits detects {eff:g} {u}"
                )
                + (
                    f"; {best['runs']} runs (the budget) detect {best['effect']:.{d}f} {u} at best "
                    f"({best['pick_seeds']} + {best['draws']} x {best['seeds']})."
                    if best
                    else "."
                )
            )
    return lines
