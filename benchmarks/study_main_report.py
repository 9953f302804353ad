"""The main study's report: per block, every arm over its seeds, the comparisons, and learning against forgetting.

Reads only the stored runs (``benchmarks/results/study-runs/pilot`` and ``main-*``), so ``study.py --report``
rebuilds every number. The pilot's runs are the fact task's Spectrum-25 and first random draws, so they join the
``snr`` and ``selectors`` blocks (their group names lose the ``pilot-`` prefix). Comparisons count every source
of run-to-run noise (``benchmarks.stats.hierarchical_diff``): against random draws, items, seeds and draws are
resampled; between two fixed selections, items and each side's seeds. The wording rule is the study's: "better"
or "worse" only where the 95% interval excludes zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.study_main import BLOCKS
from benchmarks.study_main_figure import figure
from benchmarks.study_matched import matched_table
from benchmarks.study_pilot import update_doc
from benchmarks.study_primary import CHAT, EARLY, METRICS, Metric, compare, run_value, split_values
from benchmarks.study_report import ci_text, quiet_step

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGES = HERE.parent / "docs" / "images"
DOC = HERE.parent / "docs" / "evidence.md"
BEGIN, END = "<!-- main-results:begin -->", "<!-- main-results:end -->"


def _early_nll(r: dict) -> list[float] | None:
    x = r.get("checkpoints", {}).get(EARLY, {}).get("test_nll")
    return [float(v) for v in x] if x else None


GENERAL = METRICS["general_end"]
OUTCOMES = {
    "exact": {
        "learning": METRICS["em_early"],
        "final": METRICS["em_end"],
        "forgetting": GENERAL,
        "chat": CHAT,
    },
    "cpt": {
        "learning": Metric(
            f"domain loss @{EARLY}", "nats", False, 1.0, 0.2, _early_nll, lambda r: split_values(r, "test", "tokens")
        ),
        "final": Metric(
            "domain loss, end",
            "nats",
            False,
            1.0,
            0.2,  # a loss in nats: the same target difference as for forgetting
            lambda r: split_values(r, "test", "nll"),
            lambda r: split_values(r, "test", "tokens"),
        ),
        "forgetting": GENERAL,
        "chat": CHAT,
    },
}


def value(o: Metric, r: dict) -> float | None:
    return None if o.items(r) is None else run_value(o, r)


def load_block(block: str, results: Path = RESULTS) -> tuple[dict[str, dict], list[dict]]:
    """A block's baseline and runs. The fact blocks share Spectrum-25 and the random draws: ``snr`` adds the
    pilot's runs (groups without ``pilot-``), ``selectors`` those and ``snr``'s draws."""
    folders = [results / "study-runs" / f"main-{block}"]
    if block in ("snr", "selectors"):
        folders.insert(0, results / "study-runs" / "pilot")
    if block == "selectors":
        folders.insert(1, results / "study-runs" / "main-snr")
    bases: dict[str, dict] = {}
    rows: list[dict] = []
    for folder in folders:
        for f in sorted(folder.glob("*.json")):
            r = json.loads(f.read_text())
            if r.get("name", "").startswith("baseline"):  # the base model, and its nf4-quantized version
                bases.setdefault(r["name"], r)
                continue
            r["group"] = r["group"].removeprefix("pilot-")
            rows.append(r)
    return bases, rows


def groups(rows: list[dict]) -> dict[str, dict[Any, list[dict]]]:
    """group -> selection seed (None for a named pick) -> its runs at the group's operating rate (not the curves)."""
    out: dict[str, dict[Any, list[dict]]] = {}
    for r in sorted(rows, key=lambda r: r["data_seed"]):
        if r.get("sweep"):
            continue
        out.setdefault(r["group"], {}).setdefault(r.get("selection_seed"), []).append(r)
    return out


def rate_points(rows: list[dict]) -> dict[str, list[dict]]:
    """``spectrum50 at 0.0003`` -> its runs: every family with a rate curve (full fine-tuning, the reference,
    aside) at each of its rates, over its seeds at the operating rate and one run at each other rate."""
    swept = sorted({r["group"] for r in rows if r.get("sweep") and r["group"] != "full"})
    out: dict[str, list[dict]] = {}
    for name in swept:
        mine = [r for r in rows if r["group"] == name and r.get("selection_seed") is None]
        for lr in sorted({r["lr"] for r in mine}):
            out[f"{name} at {lr:g}"] = [r for r in mine if r["lr"] == lr]
    return out


def _rate_comparisons(
    points: dict[str, list[dict]], g: dict[str, dict[Any, list[dict]]], outcomes: dict[str, Metric], n_boot: int
) -> list[dict[str, Any]]:
    """A named pick at an extra rate over two or more seeds (``top-layers at 0.0003``, from `rate_points`) against
    every named pick at its operating rate, its own arm among them: whether the rate, not the selection, made the
    difference."""
    out: list[dict[str, Any]] = []
    named = [n for n in g if not n.startswith("random") and None in g[n]]
    for point, runs in points.items():
        if not all(r.get("sweep") for r in runs) or len({r["data_seed"] for r in runs}) < 2:
            continue
        own = runs[0]["group"]
        for ref in dict.fromkeys(n for n in ("full", "spectrum25", own, *named) if n in named):
            out.append(
                {
                    "arm": point,
                    "against": ref,
                    **{k: compare(o, runs, [g[ref][None]], n_boot=n_boot) for k, o in outcomes.items()},
                }
            )
    return out


#: a 4-bit arm against its bf16 twin (the same method on a bf16 base): what the 4-bit base itself costs.
#: Spectrum-25 on an nf4 base meets its twin as every arm's second reference.
BF16_TWIN = {"qlora": "lora"}


def analyse_block(block: str, task_kind: str, results: Path = RESULTS, n_boot: int = 5000) -> dict[str, Any]:
    """Per arm: runs and mean outcomes; each arm against full FT and Spectrum-25, and against the random draws
    where the block runs its own (the ``selectors`` block shows ``snr``'s draws but leaves that question to it)."""
    bases, rows = load_block(block, results)
    base = bases.get("baseline")
    outcomes = OUTCOMES[task_kind]
    g = groups(rows)
    arms: dict[str, Any] = {}
    for name, by_sel in g.items():
        runs = [r for rs in by_sel.values() for r in rs]
        arms[name] = {
            "runs": len(runs),
            "selections": len(by_sel),
            **{
                k: {
                    "mean": float(np.mean(vals))
                    if (vals := [v for r in runs if (v := value(o, r)) is not None])
                    else None,
                    "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                }
                for k, o in outcomes.items()
            },
        }
    comparisons: list[dict[str, Any]] = []
    own = BLOCKS[block].arms if block in BLOCKS else ("random", "random-depth")
    random_groups = [n for n in g if n.startswith("random") and n.removesuffix("25") in own]
    for name, by_sel in g.items():
        if name.startswith("random"):
            continue
        pick = by_sel.get(None)
        if pick is None:
            continue
        # each pick against full fine-tuning, then Spectrum-25 (once per pair), a 4-bit arm against its bf16
        # twin, then the block's own random draws
        refs: list[tuple[str, list[list[dict]]]] = [
            (ref, [g[ref][None]])
            for ref in ("full", "spectrum25", BF16_TWIN.get(name, ""))
            if ref in g and None in g[ref] and name not in ("full", ref)
        ]
        refs += [(ref, list(g[ref].values())) for ref in random_groups]
        for ref, other in refs:
            row: dict[str, Any] = {"arm": name, "against": ref}
            for k, o in outcomes.items():
                row[k] = compare(o, pick, other, n_boot=n_boot)
            comparisons.append(row)
    points = rate_points(rows)
    comparisons += _rate_comparisons(points, g, outcomes, n_boot)
    curves = [
        {
            "group": r["group"],
            "lr": r["lr"],
            "sweep": bool(r.get("sweep")),
            "data_seed": r.get("data_seed"),
            **{k: value(o, r) for k, o in outcomes.items()},
        }
        for r in rows
    ]
    full = {
        lr: [r for r in rows if r["group"] == "full" and r["lr"] == lr]
        for lr in {r["lr"] for r in rows if r["group"] == "full"}
    }
    at_matched = matched_table(
        outcomes["learning"],
        outcomes["forgetting"],
        {name: [r for rs in by_sel.values() for r in rs] for name, by_sel in g.items() if name != "full"},
        full,
        fixed={name for name, by_sel in g.items() if None in by_sel},
        n_boot=n_boot,
    )
    seed_sd = at_matched.get("seed_sd")
    every_rate = (
        matched_table(
            outcomes["learning"],
            outcomes["forgetting"],
            points,
            full,
            n_boot=n_boot,
            sd=(seed_sd["learning"], seed_sd["forgetting"]),
        )
        if points and seed_sd
        else {}
    )
    if every_rate:
        for name, runs in points.items():
            every_rate["arms"][name] = {
                **(every_rate["arms"][name] or {}),
                **{k: float(np.mean([run_value(outcomes[k], r) for r in runs])) for k in ("learning", "forgetting")},
            }
    return {
        "block": block,
        "cost": costs(block, g, results),
        "baseline": base,
        "baseline_nf4": bases.get("baseline-nf4"),
        "arms": arms,
        "comparisons": comparisons,
        "matched": at_matched,
        "every_rate": every_rate,
        "curves": curves,
    }


def costs(block: str, g: dict[str, dict[Any, list[dict]]], results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Per arm: trainable parameters and peak memory (medians over its runs: each run is its own process, so
    memory does not depend on what else ran), and its step time alone from the timing pass (``--main BLOCK
    --timing STEPS``: one arm after another on a quiet machine; the runs' own step times shared the cores)."""
    folder = results / "study-runs" / f"main-{block}" / "timing"
    timings = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    out: dict[str, dict[str, Any]] = {}
    for name, by_sel in g.items():
        runs = [r for rs in by_sel.values() for r in rs]
        params = [r["trainable_params"] for r in runs if r.get("trainable_params")]
        peaks = [r["peak_rss_anon_bytes"] / 2**20 for r in runs if r.get("peak_rss_anon_bytes")]
        out[name] = {
            "trainable_params": float(np.median(params)) if params else None,
            "peak_mib": float(np.median(peaks)) if peaks else None,
            "step_s": quiet_step(runs[0], timings),
        }
    return out


def _cost_lines(cost: dict[str, dict[str, Any]]) -> list[str]:
    """The compute table: size, memory and step time alone (with its ratio to full fine-tuning's)."""
    if not any(v["trainable_params"] or v["step_s"] for v in cost.values()):
        return []
    full = cost.get("full", {}).get("step_s")
    lines = [
        "",
        "| arm | trainable parameters (M) | peak memory (MiB) | step time alone (s) | step time / full FT's |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, v in sorted(cost.items()):
        n, mib, step = v["trainable_params"], v["peak_mib"], v["step_s"]
        lines.append(
            f"| {name} | {f'{n / 1e6:.1f}' if n else '-'} | {f'{mib:,.0f}' if mib else '-'} "
            f"| {f'{step:.2f}' if step else '-'} | {f'{step / full:.2f}x' if step and full else '-'} |"
        )
    return lines


#: outcomes shown as the change over the base model (the loss of the untrained model on the same text)
CHANGES = ("forgetting", "chat")


def markdown(an: dict[str, Any], task_kind: str) -> str:
    """The block's arms (mean ± SD over runs; losses as the change over the base) and its comparisons (the
    difference, its 95% interval, the reading, and the smallest difference the design detects)."""
    outcomes = OUTCOMES[task_kind]
    if not an["arms"]:
        return f"_Block `{an['block']}`: no run stored yet._"
    base = an["baseline"]
    digits = {k: 1 if o.unit == "points" else 2 for k, o in outcomes.items()}
    head = [o.label + (" (change)" if k in CHANGES else "") for k, o in outcomes.items()]
    lines = ["| arm | runs (selections) | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(outcomes)]
    for name, a in sorted(an["arms"].items()):
        cells = []
        for k, o in outcomes.items():
            m, sd, d = a[k]["mean"], a[k]["sd"], digits[k]
            b0 = value(o, base) if base and k in CHANGES else None
            if m is None or (k in CHANGES and b0 is None):
                cells.append("-")
                continue
            text = f"{m - b0:+.{d}f}" if b0 is not None else f"{m:.{d}f}"
            cells.append(text + (f" ± {sd:.{d}f}" if sd else ""))
        lines.append(f"| {name} | {a['runs']} ({a['selections']}) | " + " | ".join(cells) + " |")
    lines += ["", "| arm - against | " + " | ".join(o.label for o in outcomes.values()) + " |"]
    lines.append("|---|" + "---|" * len(outcomes))
    for c in an["comparisons"]:
        cells = []
        for k in outcomes:
            x, d = c[k], digits[k]
            cells.append(
                "-" if x is None else f"{ci_text(x, digits=d)} {x['reading']} (detects {x['detectable']:.{d}f})"
            )
        lines.append(f"| {c['arm']} - {c['against']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each cell: the difference [95% interval counting items, seeds and draws], the reading under the one rule, "
        "and the smallest true difference this many runs detect (alpha 0.05, power 0.8); a dash where a side ran "
        "once, so its seed noise cannot be counted.",
        *_matched_lines(an.get("matched") or {}, outcomes["learning"]),
        *_rate_lines(an, outcomes),
        *_cost_lines(an.get("cost") or {}),
        *_nf4_lines(an),
    ]
    return "\n".join(lines)


def _nf4_lines(an: dict[str, Any]) -> list[str]:
    """How much of a 4-bit arm's forgetting its base's quantization alone accounts for."""
    q, base = an.get("baseline_nf4"), an.get("baseline")
    if not q or not base:
        return []
    parts = []
    for o in (GENERAL, CHAT):
        vq, vb = value(o, q), value(o, base)
        if vq is not None and vb is not None:
            parts.append(f"{o.label.removesuffix(' at the end')} {vq - vb:+.2f} nats")
    if not parts:
        return []
    return [
        "",
        "The base model with every linear module but the head in NF4 (QLoRA's base), untrained: "
        + ", ".join(parts)
        + " over the bf16 base: that much of the 4-bit arms' forgetting is the quantization's.",
    ]


def _matched_lines(m: dict[str, Any], learn: Metric) -> list[str]:
    """The arms at matched forgetting: learning minus full fine-tuning's curve at the arm's forgetting."""
    rows = {k: v for k, v in m.get("arms", {}).items() if v is not None}
    if not rows:
        return []
    d = 1 if learn.unit == "points" else 2
    lines = [
        "",
        f"| arm - full FT at the arm's forgetting | {learn.label} [95% CI] | reading | resamples on the curve |",
        "|---|---|---|---:|",
    ]
    for name, v in sorted(rows.items(), key=lambda kv: -kv[1]["estimate"] * (1 if learn.higher_is_better else -1)):
        lines.append(f"| {name} | {ci_text(v, digits=d)} | {v['reading']} | {100 * v['inside_curve']:.0f}% |")
    return lines + _best_lines(m.get("best"), d, "Best", "arms")


def _rate_lines(an: dict[str, Any], outcomes: dict[str, Metric]) -> list[str]:
    """Each family at every rate of its curve against full fine-tuning at the point's forgetting: what the
    family does at its own rate. The rates are looked at after the fact, so the best point is read at the
    Bonferroni level over every point, and a point that ran once carries a seed's noise."""
    pts = (an.get("every_rate") or {}).get("arms") or {}
    base = value(outcomes["forgetting"], an["baseline"]) if an.get("baseline") else None
    if not pts or base is None:
        return []
    learn = outcomes["learning"]
    d = 1 if learn.unit == "points" else 2
    lines = [
        "",
        f"| family at rate | {learn.label} | general-text loss (change) | minus full FT at its forgetting [95% CI] "
        "| reading |",
        "|---|---:|---:|---|---|",
    ]
    one_rate = len({c["lr"] for c in an["curves"] if c["group"] == "full"}) < 2
    for name, v in pts.items():
        vs = ci_text(v, digits=d) if "estimate" in v else "-"
        reading = v.get("reading", "no curve: full FT ran at one rate" if one_rate else "off full FT's curve")
        lines.append(f"| {name} | {v['learning']:.{d}f} | {v['forgetting'] - base:+.2f} | {vs} | {reading} |")
    return lines + _best_lines(an["every_rate"].get("best"), d, "Best point", "points")


def _best_lines(b: dict[str, Any] | None, d: int, lead: str, of: str) -> list[str]:
    """The best of a matched table, read at the Bonferroni level over what it was chosen from."""
    if not b or "estimate" not in b:
        return []
    return [
        f"\n{lead} at matched forgetting: {b['arm']}, {ci_text(b, digits=d)} at the {100 * b['level']:.1f}% level "
        f"(Bonferroni over {b['of']} {of}): {b['reading']}."
    ]


def report_main(
    blocks: dict[str, str], results: Path = RESULTS, images: Path = IMAGES, doc: Path | None = None
) -> dict[str, Any]:
    """Every block with stored runs: its analysis (into ``study-main.json``), markdown and figure, and the
    markdown of them all into ``doc`` (the study passes docs/evidence.md) between the ``main-results`` markers."""
    from spectrum_llm.files import write_json_atomic

    out: dict[str, Any] = {}
    for block, task_kind in blocks.items():
        if not (results / "study-runs" / f"main-{block}").exists():
            continue
        an = analyse_block(block, task_kind, results)
        an["markdown"] = markdown(an, task_kind)
        an["figure"] = figure(an, OUTCOMES[task_kind]["learning"], images / f"study-main-{block}.png")
        out[block] = an
        print(f"\n[main] block {block}\n" + an["markdown"], flush=True)
    if out:
        write_json_atomic(results / "study-main.json", out)
        if doc is not None:
            update_doc("\n\n".join(_section(an) for an in out.values()), doc, BEGIN, END)
    return out


def _section(an: dict[str, Any]) -> str:
    figure = f"\n\n![Block {an['block']}](images/{Path(an['figure']).name})" if an.get("figure") else ""
    return (
        f"**Block `{an['block']}`** (stored runs: {len(an['curves'])}, rate curves included)\n\n"
        + an["markdown"]
        + figure
    )
