"""The second study's pilot: how much of the outcome is the selection, and how much the training order?

The first study ran each selection once, at a rate where runs were unstable or under-fit, so its spread
between random picks (17.9 points of exact match) could not be split into what the selection does and
what the training trajectory does. The pilot runs, at one converged operating point:

    pilot-spectrum25-mp-dK      Spectrum-25 (mp), training-order seeds K = 0..7
    pilot-random25-sS-dK        random per-type-matched 25% draws S (fresh seeds 10, 11), K = 0..3

The task data (facts, phrasings, splits, the training file) is the first study's; only the trainer's data
sampler seed (``data_seed``) changes the order in which rows are seen. Every run is stored under its key in
``benchmarks/results/study-runs/pilot/`` with plain fields (task, model, data_seed, selection_seed), and
``report_pilot`` adds the variance decomposition and the main study's power calculation to ``study.json``
and to docs/evidence.md (between the ``pilot-results`` markers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.benchlib import module_table, random_patterns
from benchmarks.study_arms import MODES, Arm, Settings
from benchmarks.study_primary import EARLY, analyse
from benchmarks.study_primary import markdown as primary_markdown

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "evidence.md"
BEGIN, END = "<!-- pilot-results:begin -->", "<!-- pilot-results:end -->"


@dataclass(frozen=True)
class Pilot:
    """Which runs the pilot makes (the settings say how each run trains)."""

    settings: Settings
    lr: float
    spectrum_seeds: int  # training-order seeds of the Spectrum-25 pick
    selection_seeds: tuple[int, ...]  # the random draws (fresh: the first study used 0-9)
    draw_seeds: int  # training-order seeds per draw
    effect: float = 0.05  # the difference the main study must detect (exact match, as a fraction)
    budget_hours: float = 25.0  # the main study's budget, hours of this 2-core machine


# The operating point (docs/evidence.md, "Second study: pilot"): 1e-3, three times the first study's steps.
PILOTS = {
    "pilot": Pilot(
        replace(
            MODES["full"],
            steps=300,
            lr_grid={},
            random25_seeds=0,
            random50_seeds=0,
            noemb_seeds=0,
            low_rate_seeds=0,
            eval_at=(100, 200),
        ),
        lr=1e-3,
        spectrum_seeds=8,
        selection_seeds=(10, 11),
        draw_seeds=4,
    ),
    "pilot-quick": Pilot(
        replace(MODES["quick"], lr_grid={}, random25_seeds=0, noemb_seeds=0, low_rate_seeds=0, arms=None, eval_at=(3,)),
        lr=1e-3,
        spectrum_seeds=2,
        selection_seeds=(10, 11),
        draw_seeds=2,
    ),
}


def pilot_arms(work: Path, model: Path, p: Pilot) -> list[Arm]:
    """Every pilot run, ordered by training-order seed so that a partial pilot stays balanced."""
    import spectrum_llm

    scan = spectrum_llm.scan(str(model), output=work / f"scan-{model.name}-mp.json", estimator="mp", progress=False)
    s25 = spectrum_llm.select(scan, top_percent=25, model=str(model))
    kept = {t: ts.kept for t, ts in s25.types.items()}
    modules = module_table(scan)
    draws = {sel: list(s25.extras) + random_patterns(modules, kept, sel) for sel in p.selection_seeds}
    arms = []
    for d in range(max(p.spectrum_seeds, p.draw_seeds)):
        if d < p.spectrum_seeds:
            arms.append(
                Arm(
                    f"pilot-spectrum25-mp-d{d}",
                    "partial",
                    "pilot-spectrum25",
                    "spectrum",
                    p.lr,
                    list(s25.patterns),
                    data_seed=d,
                )
            )
        if d < p.draw_seeds:
            for sel, pats in draws.items():
                arms.append(
                    Arm(
                        f"pilot-random25-s{sel}-d{d}",
                        "partial",
                        "pilot-random25",
                        "spectrum",
                        p.lr,
                        pats,
                        seed=sel,
                        data_seed=d,
                    )
                )
    return arms


def main_pilot(a) -> None:
    """``study.py --pilot [--quick] [--report] [--max-runs N]``: run what is not stored, then report."""
    from benchmarks import study

    mode = "pilot-quick" if a.quick else "pilot"
    p = PILOTS[mode]
    if not a.report:
        store = study.Store(RESULTS / "study-runs" / mode)
        ctx = study.setup(a.work, mode, p.settings)
        study.baseline(p.settings, ctx, store)
        arms = pilot_arms(ctx["work"], Path(ctx["model"]), p)
        left = a.max_runs if a.max_runs is not None else len(arms)
        print(
            f"[pilot] {len(arms)} runs at lr {p.lr:g}, {p.settings.steps} steps; stored in {store.folder}", flush=True
        )
        for arm in arms:
            if store.get(arm.name, study.run_key(p.settings, arm, ctx["fingerprint"])) is None:
                if left <= 0:
                    break
                left -= 1
            study.execute(arm, p.settings, ctx, store)
    report_pilot(mode)


# ------------------------------------------------------------------------------------------ analysis


def load_runs(mode: str) -> tuple[dict | None, list[dict]]:
    """The stored baseline and pilot runs of ``mode`` (from the files alone: no code, no model)."""
    folder = RESULTS / "study-runs" / mode
    base, rows = None, []
    for f in sorted(folder.glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("name") == "baseline":
            base = r
        elif r.get("group", "").startswith("pilot-"):
            rows.append(r)
    return base, rows


def _spearman(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3:
        return None
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    c = np.corrcoef(rx, ry)[0, 1]
    return None if np.isnan(c) else float(c)


def _rho(x: float | None) -> str:
    return "- (fewer than 3 runs, or no spread)" if x is None else f"{x:+.2f}"


def _final_loss(r: dict) -> float:
    tail = r["losses"][-5:]
    return float(sum(tail) / len(tail))


def pilot_statistics(
    p: Pilot, base: dict | None, rows: list[dict], first: list[dict], n_boot: int = 10_000
) -> dict[str, Any]:
    """The runs, convergence, and per primary metric the variance split, the comparison and the power."""
    pts = lambda r: 100 * r["test_exact_match"]  # noqa: E731
    out: dict[str, Any] = {
        "operating_point": {"lr": p.lr, "steps": p.settings.steps, "eval_at": list(p.settings.eval_at)},
        "runs": [
            {
                "name": r["name"],
                "selection_seed": r["selection_seed"],
                "data_seed": r["data_seed"],
                "test_exact_match": r["test_exact_match"],
                "seen_exact_match": r["seen_exact_match"],
                "final_train_loss": _final_loss(r),
                "general_loss_change": r["general_loss"] - base["general_loss"] if base else None,
                "general_loss_base": base["general_loss"] if base else None,
                "chat_loss_change": r["chat_loss"] - base["chat_loss"] if base else None,
                "wall_s": r.get("wall_s"),
                "checkpoints": {
                    k: {m: v[m] for m in ("seen_exact_match", "test_exact_match", "general_loss")}
                    for k, v in r.get("checkpoints", {}).items()
                },
            }
            for r in rows
        ],
        "expected_runs": p.spectrum_seeds + len(p.selection_seeds) * p.draw_seeds,
    }
    out["stored_runs"] = len(rows)
    out["converged_share"] = float(np.mean([r["seen_exact_match"] >= 0.95 for r in rows])) if rows else None
    out["rho_test_em_vs_final_loss"] = _spearman([pts(r) for r in rows], [_final_loss(r) for r in rows])
    out["first_study_sd"] = {
        f"{g}@{lr:g}": float(np.std(v, ddof=1)) for (g, lr), v in _first_groups(first).items() if len(v) > 1
    }
    out["primary"] = analyse(rows, "pilot-spectrum25", "pilot-random25", p.budget_hours, n_boot)
    return out


def _first_groups(first: list[dict]) -> dict[tuple[str, float], list[float]]:
    groups: dict[tuple[str, float], list[float]] = {}
    for r in first:
        if r.get("group") in ("random25", "random25-lo"):
            groups.setdefault((r["group"], r["lr"]), []).append(100 * r["test_exact_match"])
    return groups


def markdown(st: dict[str, Any]) -> str:
    """The doc's results block: written by ``--report`` from the stored runs only."""
    n, want = st["stored_runs"], st["expected_runs"]
    if n == 0:
        return "_Results pending: no pilot run is stored yet (`python benchmarks/study.py --pilot` is running)._"
    lines = [f"{n} of {want} pilot runs stored" + (" (partial: the pilot is still running)." if n < want else ".")]
    lines += [
        "",
        f"| run | selection seed | data seed | test EM @{EARLY} | test EM | seen EM | final train loss "
        f"| general loss change @{EARLY} | at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(
        st["runs"], key=lambda r: (r["selection_seed"] is not None, r["selection_seed"] or 0, r["data_seed"])
    ):
        g, early = r["general_loss_change"], r["checkpoints"].get(EARLY)
        g_early = None if early is None or g is None else early["general_loss"] - r["general_loss_base"]
        em_early = "-" if early is None else f"{100 * early['test_exact_match']:.1f}%"
        lines.append(
            f"| {r['name']} | {r['selection_seed'] if r['selection_seed'] is not None else '-'} | "
            f"{r['data_seed']} | {em_early} | "
            f"{100 * r['test_exact_match']:.1f}% | {100 * r['seen_exact_match']:.1f}% | "
            f"{r['final_train_loss']:.3f} | {'-' if g_early is None else f'{g_early:+.2f}'} | "
            f"{'-' if g is None else f'{g:+.2f}'} |"
        )
    lines.append("")
    if st.get("converged_share") is not None:
        lines.append(
            f"- Converged (seen EM >= 95%): {100 * st['converged_share']:.0f}% of runs; Spearman rho of "
            f"test EM against final training loss: {_rho(st['rho_test_em_vs_final_loss'])}."
        )
    if st["first_study_sd"]:
        lines.append(
            "- First study, one run per draw (final test EM at 100 steps): SD "
            + ", ".join(f"{v:.1f} points ({k})" for k, v in st["first_study_sd"].items())
            + "."
        )
    lines += ["", *primary_markdown(st["primary"], "Spectrum-25")]
    return "\n".join(lines)


def update_doc(text: str, doc: Path, begin: str = BEGIN, end: str = END) -> bool:
    """Replace the block between the ``begin`` and ``end`` markers of ``doc``; False if it has no markers."""
    if not doc.exists():
        return False
    old = doc.read_text(encoding="utf-8")
    if begin not in old or end not in old:
        return False
    head, rest = old.split(begin, 1)
    doc.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")
    return True


def report_pilot(mode: str, study_json: Path | None = None, doc: Path | None = None) -> dict[str, Any]:
    """The pilot's analysis into ``study.json`` (key ``pilot``; quick: its own file) and, for the real pilot,
    into docs/evidence.md."""
    from spectrum_llm.files import write_json_atomic

    p = PILOTS[mode]
    base, rows = load_runs(mode)
    path = study_json or RESULTS / ("study.json" if mode == "pilot" else f"study-{mode}.json")
    report = json.loads(path.read_text()) if path.exists() else {}
    first = report.get("runs", []) if mode == "pilot" else []
    st = pilot_statistics(p, base, rows, first)
    st["markdown"] = markdown(st)
    report["pilot"] = {
        "mode": mode,
        "settings": p.settings.__dict__,
        "baseline": base,
        "stored": rows,
        "statistics": st,
    }
    write_json_atomic(path, report)
    if mode == "pilot" or doc is not None:
        update_doc(st["markdown"], doc or DOC)
    print("\n" + st["markdown"] + f"\n\n[pilot] {len(rows)} runs -> {path}", flush=True)
    return st
