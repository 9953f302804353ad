"""The study's report: every stored run gathered into ``study.json``, its statistics, a table and two plots.

Kept apart from ``study.py`` so the numbers can be recomputed from the stored runs alone
(``python benchmarks/study.py --report``) and the statistics tested on small inputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.benchlib import pyplot, save_figure
from benchmarks.stats import (
    diff_to_population,
    empirical_p,
    hierarchical_diff,
    paired_diff,
    rank_among,
    ratio_diff,
    reading,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGES = HERE.parent / "docs" / "images"


def hits(row: dict, split: str = "test") -> np.ndarray:
    return np.array([c == "1" for c in row["eval"][split]["hits"]], dtype=float)


def headline_arms(rows: list[dict], rates: dict[str, float]) -> dict[str, dict]:
    """One row per arm name: the sweep families at their chosen rate, every other arm as it ran."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("sweep") and rates.get(r["family"]) != r["lr"]:
            continue
        out[r["name"]] = r
    return out


def _loss_change(row: dict, base: dict, split: str):
    e, b = row["eval"][split], base["eval"][split]
    if e["tokens"] != b["tokens"]:
        raise ValueError(f"{row['name']}: the {split} blocks differ from the baseline's")
    return ratio_diff(e["nll"], b["nll"], e["tokens"])


def versus_random(arm: dict, draws: list[dict], base: dict) -> dict[str, Any]:
    """Where one pick stands among random picks of the same size: metric, forgetting, p-values and intervals."""
    em = hits(arm).mean()
    draw_em = [hits(d).mean() for d in draws]
    gen = arm["general_loss"]
    draw_gen = [d["general_loss"] for d in draws]
    return {
        "arm": arm["name"],
        "draws": [d["name"] for d in draws],
        "test_exact_match": em,
        "draws_exact_match": draw_em,
        "rank_exact_match": rank_among(em, draw_em),
        "p_exact_match": empirical_p(em, draw_em),
        "diff_exact_match": diff_to_population(hits(arm), np.stack([hits(d) for d in draws])).to_json()
        if len(draws) >= 2
        else None,
        "general_loss": gen,
        "draws_general_loss": draw_gen,
        "rank_forgetting": rank_among(gen, draw_gen, higher_is_better=False),
        "p_forgetting": empirical_p(gen, draw_gen, higher_is_better=False),
        "seed_counted": seed_counted(arm, draws) if len(draws) >= 2 else None,
        "test_loss": arm["test_loss"],
        "draws_test_loss": [d["test_loss"] for d in draws],
        "p_test_loss": empirical_p(arm["test_loss"], [d["test_loss"] for d in draws], higher_is_better=False),
    }


def seed_counted(arm: dict, draws: list[dict], n_boot: int = 10_000) -> dict[str, Any]:
    """The pick minus the draws' mean with the pick's own run-to-run noise counted (the first study's fix).

    The pick ran once, so its seed spread is unknown; the draws' whole spread between runs (selection and
    training order together, each draw run once) stands in for it. A typical pick's seed spread is part of
    that spread, so this errs wide. Exact match in points, general-text loss in nats; "better"/"worse" only
    where the interval excludes zero, as for every other comparison.
    """
    out: dict[str, Any] = {"pick_seed_sd_from": "the draws' SD between runs"}
    em = np.stack([hits(d) for d in draws])
    sd = float(np.std(em.mean(axis=1), ddof=1))
    c = hierarchical_diff(hits(arm), list(em[:, None, :]), pick_seed_sd=sd, n_boot=n_boot)
    out["exact_match"] = {**c.to_json(), "reading": reading(c.difference, True, c.draws)}
    g = [np.asarray(d["eval"]["general"]["nll"], float) for d in draws]
    tokens = np.asarray(arm["eval"]["general"]["tokens"], float)
    sd_g = float(np.std([x.sum() / tokens.sum() for x in g], ddof=1))
    c = hierarchical_diff(np.asarray(arm["eval"]["general"]["nll"], float), [x[None] for x in g], tokens, sd_g, n_boot)
    out["general_loss"] = {**c.to_json(), "reading": reading(c.difference, False, c.draws)}
    return out


def distinct(rows: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The runs with one configuration each, and every duplicate's name -> the name of the run it repeats.

    Two arms can resolve to the same configuration (the budget rule chose exactly Spectrum-25's modules):
    the run key, a hash of the whole configuration, is the same, and such a pair is one result, counted once.
    """
    seen: dict[str, str] = {}
    keep, dups = [], {}
    for r in rows:
        k = r.get("key")
        if k is not None and k in seen:
            dups[r["name"]] = seen[k]
            continue
        if k is not None:
            seen[k] = r["name"]
        keep.append(r)
    return keep, dups


def pair(a: dict, b: dict) -> dict[str, Any]:
    """Paired differences of ``a`` minus ``b``: exact match, task loss, general and chat loss."""
    out: dict[str, Any] = {"a": a["name"], "b": b["name"], "exact_match": paired_diff(hits(a), hits(b)).to_json()}
    ta, tb = a["eval"]["test"], b["eval"]["test"]
    out["test_loss"] = ratio_diff(ta["nll"], tb["nll"], ta["tokens"]).to_json()
    for split in ("general", "chat"):
        ea, eb = a["eval"][split], b["eval"][split]
        out[f"{split}_loss"] = ratio_diff(ea["nll"], eb["nll"], ea["tokens"]).to_json()
    return out


def statistics(base: dict, rows: list[dict], rates: dict[str, float]) -> dict[str, Any]:
    """Every comparison the evidence doc states, computed from the per-item results."""
    rows, duplicates = distinct(rows)
    arms = headline_arms(rows, rates)
    groups: dict[str, list[dict]] = {}
    for r in arms.values():
        groups.setdefault(r["group"], []).append(r)
    st: dict[str, Any] = {
        "forgetting_vs_base": {},
        "vs_random": {},
        "pairs": [],
        "duplicates": duplicates,
        "distinct_runs": len(rows),
    }
    for name, r in arms.items():
        st["forgetting_vs_base"][name] = {
            split: _loss_change(r, base, split).to_json() for split in ("general", "chat")
        }
    for arm_name, rnd in (
        ("spectrum25-mp", "random25"),
        ("spectrum25-ref", "random25"),
        ("global25-mp", "random25"),
        ("budget25-mp", "random25"),
        ("top-layers25", "random25"),
        ("spectrum50-mp", "random50"),
        ("spectrum50-ref", "random50"),
        ("spectrum25-mp-noemb", "random25-noemb"),
    ):
        if arm_name in arms and len(groups.get(rnd, [])) >= 1:
            st["vs_random"][arm_name] = versus_random(arms[arm_name], groups[rnd], base)
    low = groups.get("random25-lo", [])
    pick = next((r for r in rows if r["name"] == "spectrum25-mp" and low and r["lr"] == low[0]["lr"]), None)
    if pick is not None:
        label = f"spectrum25-mp@{pick['lr']:g}"
        st["vs_random"][label] = {**versus_random(pick, low, base), "arm": label}
    for a, b in (
        ("spectrum25-mp", "spectrum25-ref"),
        ("spectrum50-mp", "spectrum50-ref"),
        ("spectrum25-mp", "full"),
        ("spectrum50-mp", "full"),
        ("spectrum25-mp", "lora"),
        ("spectrum25-mp-noemb", "lora"),
        ("spectrum25-mp-noemb", "full"),
        ("spectrum25-mp", "spectrum25-mp-noemb"),
        ("lora", "full"),
        ("global25-mp", "spectrum25-mp"),
        ("top-layers25", "spectrum25-mp"),
    ):
        if a in arms and b in arms:
            st["pairs"].append(pair(arms[a], arms[b]))
    return st


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def ci_text(iv: dict, scale: float = 1.0, digits: int = 3) -> str:
    """``+1.2 [-4.8, +7.4]``: an interval's estimate and bounds, times ``scale``, with a sign."""
    return f"{iv['estimate'] * scale:+.{digits}f} [{iv['low'] * scale:+.{digits}f}, {iv['high'] * scale:+.{digits}f}]"


def quiet_step(r: dict, timings: Sequence[dict]) -> float | None:
    """The arm's median step time from the timing pass: its own, else its group's (random draws share one)."""
    own = [t for t in timings if t["name"] == r["name"]]
    group = [t for t in timings if t.get("group") == r["group"]]
    found = own or group
    return found[0]["median_step_s"] if found else None


def table(base: dict, rows: list[dict], rates: dict[str, float], st: dict, timings: Sequence[dict] = ()) -> str:
    """Markdown: every headline arm with its size, metric, forgetting and cost (a duplicate configuration once)."""
    arms = headline_arms(distinct(rows)[0], rates)
    timings = list(timings)
    full = next((quiet_step(r, timings) for r in arms.values() if r["group"] == "full"), None)
    head = [
        "arm",
        "lr",
        "trainable",
        "test exact match",
        "test loss",
        "general loss change [95% CI]",
        "chat loss change [95% CI]",
        "step s (alone)",
        "vs full",
        "peak RssAnon MiB",
    ]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        f"| before training | - | - | {_pct(base['test_exact_match'])} | {base['test_loss']:.3f} | "
        f"({base['general_loss']:.3f}) | ({base['chat_loss']:.3f}) | - | - | - |",
    ]
    for name, r in sorted(arms.items(), key=lambda kv: (kv[1]["group"], kv[0])):
        f = st["forgetting_vs_base"][name]
        frac = r["trainable_params"] / (r["total_params"] - (r["trainable_params"] if r["method"] == "lora" else 0))
        lines.append(
            f"| {name} | {r['lr']:g} | {r['trainable_params'] / 1e6:.1f}M ({_pct(frac)}) | "
            f"{_pct(r['test_exact_match'])} | {r['test_loss']:.3f} | {ci_text(f['general'])} | "
            f"{ci_text(f['chat'])} | {_step_cells(quiet_step(r, timings), full)} | "
            f"{r.get('peak_rss_anon_bytes', 0) / 2**20:,.0f} |"
        )
    for dup, same in st.get("duplicates", {}).items():
        lines.append(f"\n{dup} is the same configuration as {same} (the same run key): counted once, as {same}.")
    return "\n".join(lines)


def _step_cells(step: float | None, full: float | None) -> str:
    if step is None:
        return "- | -"
    return f"{step:.2f} | " + (f"{step / full:.2f}x" if full else "-")


def sweep_table(rows: list[dict], rates: dict[str, float]) -> str:
    lines = [
        "| family | lr | val exact match | val loss | test exact match | general loss | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if r.get("sweep")), key=lambda r: (r["family"], r["lr"])):
        lines.append(
            f"| {r['family']} | {r['lr']:g} | {_pct(r['val_exact_match'])} | {r['val_loss']:.3f} | "
            f"{_pct(r['test_exact_match'])} | {r['general_loss']:.3f} | "
            f"{'yes' if rates.get(r['family']) == r['lr'] else ''} |"
        )
    return "\n".join(lines)


def claims_table(st: dict) -> str:
    lines = [
        "| comparison | exact match difference, points [95% CI] | task loss | general loss | chat loss |",
        "|---|---|---|---|---|",
    ]
    for p in st["pairs"]:
        lines.append(
            f"| {p['a']} - {p['b']} | {ci_text(p['exact_match'], 100, 1)} | {ci_text(p['test_loss'])} | "
            f"{ci_text(p['general_loss'])} | {ci_text(p['chat_loss'])} |"
        )
    lines += [
        "",
        "| pick | random draws | exact match: pick / draws (min-max) | rank | p | diff to draws' mean, "
        "points [95% CI] | the same, the pick's run-to-run noise counted: points [95% CI], p, reading "
        "| general loss rank (lower better) | p | general loss diff, noise counted: nats [95% CI], reading |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in st["vs_random"].values():
        d = v["draws_exact_match"]
        diff = ci_text(v["diff_exact_match"], 100, 1) if v["diff_exact_match"] else "-"
        sc = v.get("seed_counted")
        em_sc = f"{ci_text(sc['exact_match'], 100, 1)}, {sc['exact_match']['p']:.2f}, {sc['exact_match']['reading']}"
        gen_sc = f"{ci_text(sc['general_loss'], 1, 2)}, {sc['general_loss']['reading']}"
        lines.append(
            f"| {v['arm']} | {len(d)} | {_pct(v['test_exact_match'])} / {_pct(float(np.mean(d)))} "
            f"({_pct(min(d))}-{_pct(max(d))}) | {v['rank_exact_match']} of {len(d) + 1} | "
            f"{v['p_exact_match']:.2f} | {diff} | {em_sc if sc else '-'} | {v['rank_forgetting']} of {len(d) + 1} | "
            f"{v['p_forgetting']:.2f} | {gen_sc if sc else '-'} |"
        )
    return "\n".join(lines)


COLORS = {
    "full": "black",
    "spectrum25": "tab:blue",
    "spectrum50": "tab:green",
    "random25": "tab:gray",
    "random50": "silver",
    "lora": "tab:red",
    "top-layers25": "tab:orange",
    "global25": "tab:purple",
    "budget25": "tab:cyan",
    "spectrum25-noemb": "navy",
    "random25-noemb": "lightsteelblue",
    "random25-lo": "peru",
}


def plots(base: dict, rows: list[dict], rates: dict[str, float], mode: str) -> list[str]:
    plt = pyplot()
    IMAGES.mkdir(parents=True, exist_ok=True)
    arms = headline_arms(rows, rates)
    out = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, r in arms.items():
        frac = r["trainable_params"] / (r["total_params"] - (r["trainable_params"] if r["method"] == "lora" else 0))
        rnd = r["group"].startswith("random")
        ax.scatter(
            100 * frac,
            100 * r["test_exact_match"],
            color=COLORS.get(r["group"], "tab:brown"),
            s=25 if rnd else 70,
            marker="o" if rnd else ("*" if r["group"].startswith("spectrum") else "s"),
            zorder=3 if not rnd else 2,
            label=None if rnd else name,
            alpha=0.7 if rnd else 1,
        )
    for g in ("random25", "random50", "random25-noemb", "random25-lo"):
        rs = [r for r in arms.values() if r["group"] == g]
        if rs:
            ax.scatter([], [], color=COLORS[g], s=25, label=f"{g} ({len(rs)} draws)")
    ax.axhline(100 * base["test_exact_match"], color="black", linestyle=":", linewidth=1, label="before training")
    ax.set_xlabel("trainable parameters (% of the model)")
    ax.set_ylabel("test exact match (%)")
    ax.set_title(f"New facts, held-out phrasings: SmolLM2-135M-Instruct ({mode})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    out.append(save_figure(fig, IMAGES / f"study-{mode}-metric-vs-size.png"))

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        chosen = r["name"] in arms and arms[r["name"]] is r
        gain = 100 * (r["test_exact_match"] - base["test_exact_match"])
        forget = r["general_loss"] - base["general_loss"]
        rnd = r["group"].startswith("random")
        ax.scatter(
            forget,
            gain,
            color=COLORS.get(r["group"], "tab:brown"),
            s=25 if rnd or not chosen else 70,
            marker="x" if not chosen else ("o" if rnd else "*" if r["group"].startswith("spectrum") else "s"),
            alpha=0.7 if rnd else 1,
            zorder=3 if chosen and not rnd else 2,
        )
        if chosen and not rnd:
            ax.annotate(r["name"], (forget, gain), fontsize=7, xytext=(4, 2), textcoords="offset points")
        if r.get("sweep"):
            ax.annotate(
                f"{r['lr']:g}", (forget, gain), fontsize=6, color="dimgray", xytext=(3, -8), textcoords="offset points"
            )
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("forgetting: general-text loss after - before (lower is better)")
    ax.set_ylabel("task gain: test exact match after - before (points)")
    ax.set_title("Gain against forgetting (x: learning-rate sweep points; random draws as circles)", fontsize=10)
    out.append(save_figure(fig, IMAGES / f"study-{mode}-gain-vs-forgetting.png"))
    return out


def write_report(
    mode: str,
    settings,
    base: dict | None,
    rows: list[dict],
    rates: dict[str, float],
    info: dict,
    t_start: float,
    machine: dict,
    timings: Sequence[dict] = (),
) -> Path | None:
    """Gather, compute, print and write ``benchmarks/results/study[-quick].json`` and the plots."""
    from spectrum_llm.files import write_json_atomic

    rows = [r for r in rows if "test_exact_match" in r]  # a task scored by loss alone (CPT): study_cpt reports it
    if base is None or not rows:
        print("[study] nothing stored yet to report", flush=True)
        return None
    st = statistics(base, rows, rates) if len(rates) == 3 else {"forgetting_vs_base": {}, "vs_random": {}, "pairs": []}
    md = table(base, rows, rates, st, timings) if len(rates) == 3 else ""
    sw = sweep_table(rows, rates)
    cl = claims_table(st) if st["pairs"] or st["vs_random"] else ""
    images = plots(base, rows, rates, mode) if len(rates) == 3 else []
    report = {
        "mode": mode,
        "settings": asdict(settings),
        "machine": machine,
        "best_rates": rates,
        "plan": info,
        "baseline": base,
        "runs": rows,
        "timing": list(timings),
        "statistics": st,
        "table_markdown": md,
        "sweep_markdown": sw,
        "claims_markdown": cl,
        "images": images,
        "runs_stored": len(rows),
        "wall_s_this_call": round(time.monotonic() - t_start, 1),
        "loadavg_end": os.getloadavg(),
    }
    path = RESULTS / ("study.json" if mode == "full" else f"study-{mode}.json")
    write_json_atomic(path, report)
    print("\n" + sw + ("\n\n" + md if md else "") + ("\n\n" + cl if cl else ""))
    distinct_note = f" ({st['distinct_runs']} distinct configurations)" if "distinct_runs" in st else ""
    print(f"\n[study] {len(rows)} runs{distinct_note} -> {path}", flush=True)
    return path
