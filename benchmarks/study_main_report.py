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

from benchmarks.benchlib import pyplot, save_figure
from benchmarks.stats import hierarchical_diff, reading
from benchmarks.study_primary import EARLY, METRICS, Metric

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMAGES = HERE.parent / "docs" / "images"


def _split(r: dict, split: str, field: str) -> list[float] | None:
    e = r.get("eval", {}).get(split)
    return [float(x) for x in e[field]] if e else None


def _early_nll(r: dict) -> list[float] | None:
    x = r.get("checkpoints", {}).get(EARLY, {}).get("test_nll")
    return [float(v) for v in x] if x else None


GENERAL = METRICS["general_end"]
OUTCOMES = {
    "exact": {
        "learning": METRICS["em_early"],
        "final": METRICS["em_end"],
        "forgetting": GENERAL,
    },
    "cpt": {
        "learning": Metric(
            f"domain loss @{EARLY}", "nats", False, 1.0, 0.2, _early_nll, lambda r: _split(r, "test", "tokens")
        ),
        "final": Metric(
            "domain loss, end",
            "nats",
            False,
            1.0,
            0.2,  # a loss in nats: the same target difference as for forgetting
            lambda r: _split(r, "test", "nll"),
            lambda r: _split(r, "test", "tokens"),
        ),
        "forgetting": GENERAL,
    },
}


def value(o: Metric, r: dict) -> float | None:
    x = o.items(r)
    if x is None:
        return None
    w = o.weights(r)
    return o.scale * float(np.sum(x)) / float(np.sum(w) if w else len(x))


def load_block(block: str, results: Path = RESULTS) -> tuple[dict | None, list[dict]]:
    """A block's baseline and runs; the fact blocks add the pilot's runs (groups without ``pilot-``)."""
    folders = [results / "study-runs" / f"main-{block}"]
    if block in ("snr", "selectors"):
        folders.insert(0, results / "study-runs" / "pilot")
    base, rows = None, []
    for folder in folders:
        for f in sorted(folder.glob("*.json")):
            r = json.loads(f.read_text())
            if r.get("name") == "baseline":
                base = base or r
                continue
            r["group"] = r["group"].removeprefix("pilot-")
            rows.append(r)
    return base, rows


def groups(rows: list[dict]) -> dict[str, dict[Any, list[dict]]]:
    """group -> selection seed (None for a named pick) -> its runs at the group's operating rate (not the curves)."""
    out: dict[str, dict[Any, list[dict]]] = {}
    for r in sorted(rows, key=lambda r: r["data_seed"]):
        if r.get("sweep"):
            continue
        out.setdefault(r["group"], {}).setdefault(r.get("selection_seed"), []).append(r)
    return out


def _arrays(o: Metric, runs: list[dict]) -> np.ndarray | None:
    xs = [o.items(r) for r in runs]
    return None if any(x is None for x in xs) else np.array(xs, dtype=float)


def difference(o: Metric, a: list[list[dict]], b: list[list[dict]], n_boot: int = 5000) -> dict[str, Any] | None:
    """``a`` (one fixed pick: one list of runs) minus ``b`` (one fixed pick, or several random draws)."""
    pick = _arrays(o, a[0])
    maybe = [_arrays(o, d) for d in b]
    others = [x for x in maybe if x is not None]
    if pick is None or not others or len(others) < len(maybe):
        return None
    if pick.shape[0] < 2 or (len(others) == 1 and others[0].shape[0] < 2):
        return None  # a fixed selection's seed noise needs two of its runs
    w = o.weights(a[0][0])
    c = hierarchical_diff(pick, others, weights=w, n_boot=n_boot)
    d = c.difference
    return {
        **{k: o.scale * v for k, v in d.to_json().items()},
        "p": c.p,
        "runs": c.runs,
        "reading": reading(d, o.higher_is_better, c.draws),
    }


def analyse_block(block: str, task_kind: str, results: Path = RESULTS, n_boot: int = 5000) -> dict[str, Any]:
    """Per arm: runs and mean outcomes; each arm against Spectrum-25 and full FT (and random draws for picks)."""
    base, rows = load_block(block, results)
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
    random_groups = [n for n in g if n.startswith("random")]
    for name, by_sel in g.items():
        if name.startswith("random"):
            continue
        pick = [by_sel[None]] if None in by_sel else None
        if pick is None:
            continue
        refs: list[tuple[str, list[list[dict]]]] = [
            (ref, [g[ref][None]]) for ref in ("spectrum25", "full") if ref in g and ref != name and None in g[ref]
        ]
        refs += [(ref, list(g[ref].values())) for ref in random_groups]
        for ref, other in refs:
            row: dict[str, Any] = {"arm": name, "against": ref}
            for k, o in outcomes.items():
                row[k] = difference(o, pick, other, n_boot)
            comparisons.append(row)
    curves = [
        {"group": r["group"], "lr": r["lr"], **{k: value(o, r) for k, o in outcomes.items()}}
        for r in rows
        if r.get("sweep") or r.get("data_seed") == 0
    ]
    return {"block": block, "baseline": base, "arms": arms, "comparisons": comparisons, "curves": curves}


def markdown(an: dict[str, Any], task_kind: str) -> str:
    outcomes = OUTCOMES[task_kind]
    if not an["arms"]:
        return f"_Block `{an['block']}`: no run stored yet._"
    base = an["baseline"]
    forget0 = value(GENERAL, base) if base else None
    head = ["arm", "runs (selections)"] + [outcomes[k].label for k in outcomes]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(outcomes)]
    for name, a in sorted(an["arms"].items()):
        cells = []
        for k, o in outcomes.items():
            m, sd = a[k]["mean"], a[k]["sd"]
            if m is not None and k == "forgetting" and forget0 is not None:
                m -= forget0
            d = 1 if o.unit == "points" else 2
            cells.append(
                "-"
                if m is None
                else f"{m:+.{d}f}"
                if k == "forgetting"
                else f"{m:.{d}f}" + (f" ± {sd:.{d}f}" if sd else "")
            )
        lines.append(f"| {name} | {a['runs']} ({a['selections']}) | " + " | ".join(cells) + " |")
    lines += ["", "| arm - against | " + " | ".join(o.label + " [95% CI], reading" for o in outcomes.values()) + " |"]
    lines.append("|---|" + "---|" * len(outcomes))
    for c in an["comparisons"]:
        cells = []
        for k, o in outcomes.items():
            x = c[k]
            d = 1 if o.unit == "points" else 2
            cells.append(
                "-" if x is None else f"{x['estimate']:+.{d}f} [{x['low']:+.{d}f}, {x['high']:+.{d}f}], {x['reading']}"
            )
        lines.append(f"| {c['arm']} - {c['against']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(an: dict[str, Any], task_kind: str, path: Path) -> str | None:
    """Learning against forgetting: one point per run at seed 0 or on a rate curve, one colour per arm."""
    pts = [c for c in an["curves"] if c.get("learning") is not None and c.get("forgetting") is not None]
    if not pts or an["baseline"] is None:
        return None
    plt = pyplot()
    o = OUTCOMES[task_kind]
    f0 = value(GENERAL, an["baseline"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for gname in sorted({c["group"] for c in pts}):
        cs = sorted((c for c in pts if c["group"] == gname), key=lambda c: c["lr"])
        ax.plot([c["forgetting"] - f0 for c in cs], [c["learning"] for c in cs], "o-", label=gname, alpha=0.8)
    ax.set_xlabel("general-text loss change at the end (nats; lower: forgets less)")
    ax.set_ylabel(o["learning"].label + f" ({o['learning'].unit})")
    ax.set_title(f"Block {an['block']}: learning against forgetting (seed 0 and rate curves)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def report_main(blocks: dict[str, str], results: Path = RESULTS, images: Path = IMAGES) -> dict[str, Any]:
    """Every block with stored runs: its analysis (into ``study-main.json``), markdown and figure."""
    from spectrum_llm.files import write_json_atomic

    out: dict[str, Any] = {}
    for block, task_kind in blocks.items():
        if not (results / "study-runs" / f"main-{block}").exists():
            continue
        an = analyse_block(block, task_kind, results)
        an["markdown"] = markdown(an, task_kind)
        an["figure"] = figure(an, task_kind, images / f"study-main-{block}.png")
        out[block] = an
        print(f"\n[main] block {block}\n" + an["markdown"], flush=True)
    if out:
        write_json_atomic(results / "study-main.json", out)
    return out
