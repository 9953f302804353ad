"""The second study's main runs: which selection to train, for which kind of task, at the same budget.

The pilot (``study_pilot``) fixed the operating point (300 steps, evaluations at steps 100 and 200) and the
primary comparisons (``study_primary``). The main study runs in blocks, each answering one question, in the
order below, so a partial study (the budget is about 25 hours of a 2-core machine, the pilot included) still
answers the first questions fully rather than every question weakly:

    snr        Q1 on the fact task: Spectrum-25 against more random per-type draws and against random draws
               matched to its depth histogram (``--random --match-depth``); the pilot's runs are its first part.
    selectors  Q2 on the fact task: the selectors and methods at Spectrum-25's budget (and Spectrum-50 at twice
               it), each over training-order seeds, plus each family's learning-vs-forgetting curve over its rate
               grid (seed 0), which puts every family at its own rate by comparing at matched forgetting.
    skill      the key arms on the skill task (exact answers that are not memorised facts).
    cpt        the key arms on continued pretraining (held-out domain loss against forgetting).
    gemma      the key arms on the second model, Gemma-3-270M.
    facts-b/c  the key arms on two more independent fact sets (``facts_seed`` 2001, 2002).

Every selection comes from the product (``spectrum_llm.select``: per-type, ``random=True`` with
``match_depth``, ``rule="top-layers"``, ``min_layer``), LoRA's rank matches Spectrum-25's linear budget, and
seeds pair across arms (arm X with data seed K sees the rows in the same order as arm Y with K). Runs are
stored by the key of their whole configuration like every study run, so the study resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.benchlib import lora_rank_for, module_table
from benchmarks.study_arms import Arm, timing_arms

#: the rate grid of each family (the first study's sweep: full fine-tuning peaked at 3e-4, every partial-freeze
#: arm and LoRA at 1e-3 once forgetting counts); the middle value is the family's operating rate.
RATES = {"full": (1e-4, 3e-4, 1e-3), "partial": (3e-4, 1e-3, 3e-3), "lora": (3e-4, 1e-3, 3e-3)}
OPERATING = {"full": 3e-4, "partial": 1e-3, "lora": 1e-3}


@dataclass(frozen=True)
class Block:
    """How many runs one block makes: training-order seeds per arm, random draws and their seeds."""

    name: str
    arms: tuple[str, ...]
    seeds: int  # training-order seeds of each named arm
    draws: int = 0  # random per-type draws (and as many depth-matched ones when "random-depth" is an arm)
    draw_seeds: int = 0
    rotate: int = 0  # draw i's training-order seeds start at i mod rotate (0: every draw starts at seed 0)
    curves: bool = False  # also each family's rate grid at seed 0
    rates: tuple[tuple[str, float], ...] = ()  # also these (arm, rate) runs: rate apart from selection
    rate_seeds: int = 1  # the extra rates' training-order seeds (two give them an interval)
    task: str = "facts"
    model: str = "smollm2-135m"  # a key of benchlib.MODELS
    facts_seed: int = 1234  # the fact task's facts: another seed, another independent fact set


BLOCKS = {
    # sized from the pilot (5 runs): at step 100 the draws differ far more than a draw's seeds do (between-draw SD
    # 7.7 points, within 2.7-4.9), so new draws with one seed each buy more power than more seeds of few draws
    # draw i trains with data seed i, so the draws cover Spectrum-25's eight pilot seeds once each: a data order
    # that suits every selection cannot then favour one side
    "snr": Block("snr", ("random", "random-depth"), seeds=0, draws=8, draw_seeds=1, rotate=8),
    "selectors": Block(
        "selectors",
        (
            "full",
            "top-layers",
            "top-layers-noemb",
            "spectrum25-noemb",
            "spectrum50",
            "hybrid",
            "task-aware",
            "dynamic",
            "lora",
            "qlora",
            "spectrum25-nf4",
        ),
        seeds=2,
        curves=True,
    ),
    "skill": Block(
        "skill", ("spectrum25", "full", "top-layers", "lora", "random"), seeds=2, draws=2, draw_seeds=2, task="skill"
    ),
    # top layers at full fine-tuning's rate: whether its deficit on this task is its rate's or its selection's
    # (its second seed was added after the first run led: the block's other runs were stored before it)
    "cpt": Block(
        "cpt",
        ("spectrum25", "full", "top-layers", "lora", "random"),
        seeds=2,
        draws=2,
        draw_seeds=2,
        task="cpt",
        rates=(("top-layers", 3e-4),),
        rate_seeds=2,
    ),
    # Gemma's tied embedding is 63% of the model, so Spectrum-25 with it trains 71%: the frozen-embedding arms matter
    "gemma": Block(
        "gemma",
        ("spectrum25", "spectrum25-noemb", "top-layers-noemb", "full", "random"),
        seeds=2,
        draws=2,
        draw_seeds=2,
        model="gemma3-270m",
    ),
    # the key arms on two more independent fact sets (new names, capitals, phrasings): does the answer hold?
    **{
        f"facts-{tag}": Block(
            f"facts-{tag}",
            ("spectrum25", "full", "top-layers", "lora", "random"),
            seeds=2,
            draws=2,
            draw_seeds=2,
            facts_seed=seed,
        )
        for tag, seed in (("b", 2001), ("c", 2002))
    },
}
#: fresh selection seeds per block (the first study drew 0-9 and 100-104, the pilot 10 and 11).
DRAW_SEED_BASE = {"snr": 20, "skill": 40, "cpt": 60, "gemma": 80, "facts-b": 100, "facts-c": 120}
DEPTH_SEED_OFFSET = 10


def selections(scan: Any, model: str, task_scores: Any = None) -> dict[str, Any]:
    """Every named pick of the main study, made by the product from one scan (and `spectrum score`'s scores)."""
    import spectrum_llm

    layers = 1 + max(m.layer for m in scan.modules if m.layer is not None)
    s25 = spectrum_llm.select(scan, top_percent=25, model=model)
    return {
        "spectrum25": s25,
        "spectrum25-noemb": spectrum_llm.select(scan, top_percent=25, embeddings="freeze", model=model),
        # twice the budget; its rate curve puts it at its own rate (the first study ran it at 25%'s)
        "spectrum50": spectrum_llm.select(scan, top_percent=50, model=model),
        # whole layers from the top, within Spectrum-25's size (with and without the embeddings it trains)
        "top-layers": spectrum_llm.select(scan, rule="top-layers", top_percent=25, model=model),
        "top-layers-noemb": spectrum_llm.select(
            scan, rule="top-layers", top_percent=25, embeddings="freeze", model=model
        ),
        # SNR inside a depth window: Spectrum-25's size filled by SNR rank above the bottom third of the layers
        "hybrid": spectrum_llm.select(
            scan, rule="budget", budget=s25.trainable_params, min_layer=layers // 3, model=model
        ),
        # ranked by gradient signal on the task's own training data (`spectrum score`), Spectrum-25's counts
        **({"task-aware": spectrum_llm.select(task_scores, top_percent=25, model=model)} if task_scores else {}),
    }


def task_scores(model: str, data: str, trainer_task: str, out: Path) -> Any:
    """`spectrum score` on the block's training data (cached in ``out``): the task-aware arm's ranking."""
    from spectrum_llm.gradscore import ScoreConfig, score_modules
    from spectrum_llm.scan_files import load_scan

    if out.exists():
        return load_scan(out)
    return score_modules(ScoreConfig(model=model, data=data, task=trainer_task, batches=8, output=str(out)))


def draw(scan: Any, model: str, seed: int, depth: bool) -> Any:
    """A random pick with Spectrum-25's count per type (and per depth quarter with ``depth``): the product's."""
    import spectrum_llm

    return spectrum_llm.select(scan, top_percent=25, random=True, seed=seed, match_depth=depth, model=model)


def block_arms(block: Block, scan: Any, model: str, scores: Any = None, scan_path: str | None = None) -> list[Arm]:
    """The runs of ``block``, ordered by training-order seed so that a partial block stays balanced.

    ``scores`` (`spectrum score`'s) make the task-aware pick; ``scan_path`` is what the dynamic arm draws from.
    """
    picks = selections(scan, model, scores)
    modules = module_table(scan)
    linear = [m for m in modules if m["layer"] is not None]
    rank, _ = lora_rank_for(linear, sum(ts.selected_numel for ts in picks["spectrum25"].types.values()))

    def named(arm: str, lr: float, d: int, sweep: bool = False) -> Arm:
        tag = f"{block.name}-{arm}-lr{lr:g}-d{d}"
        if arm == "full":
            return Arm(tag, "full", arm, "full", lr, data_seed=d, sweep=sweep)
        if arm in ("lora", "qlora"):
            return Arm(tag, "lora", arm, arm, lr, lora_rank=rank, data_seed=d, sweep=sweep)
        if arm == "dynamic":  # a new draw every 50 steps, weighted by SNR, Spectrum-25's counts per type
            dyn = {"schedule": "dynamic", "switch_every": 50, "scan": scan_path, "top_percent": 25}
            return Arm(tag, "partial", arm, "spectrum", lr, data_seed=d, sweep=sweep, options=dyn)
        if arm == "spectrum25-nf4":
            nf4 = {"frozen_precision": "nf4"}
            pats = list(picks["spectrum25"].patterns)
            return Arm(tag, "partial", arm, "spectrum", lr, pats, data_seed=d, sweep=sweep, options=nf4)
        return Arm(tag, "partial", arm, "spectrum", lr, list(picks[arm].patterns), data_seed=d, sweep=sweep)

    def family(arm: str) -> str:
        return "full" if arm == "full" else "lora" if arm in ("lora", "qlora") else "partial"

    runs: list[Arm] = []
    fixed = [
        a
        for a in block.arms
        if not a.startswith("random") and (a != "task-aware" or scores) and (a != "dynamic" or scan_path)
    ]
    for d in range(max(block.seeds, block.draw_seeds, block.rate_seeds if block.rates else 0)):
        if d < block.seeds:
            runs += [named(a, OPERATING[family(a)], d) for a in fixed]
        if d < block.draw_seeds:
            for i in range(block.draws):
                for kind in (k for k in ("random", "random-depth") if k in block.arms):
                    depth = kind == "random-depth"
                    seed = DRAW_SEED_BASE[block.name] + i + (DEPTH_SEED_OFFSET if depth else 0)
                    data_seed = (i % block.rotate if block.rotate else 0) + d
                    pats = list(draw(scan, model, seed, depth).patterns)
                    runs.append(
                        Arm(
                            f"{block.name}-{kind}25-s{seed}-d{data_seed}",
                            "partial",
                            f"{kind}25",
                            "spectrum",
                            OPERATING["partial"],
                            pats,
                            seed=seed,
                            data_seed=data_seed,
                        )
                    )
        if d < block.rate_seeds:
            runs += [named(a, lr, d, sweep=True) for a, lr in block.rates]
    if block.curves:
        curves = {
            a: [named(a, lr, 0, sweep=True) for lr in RATES[family(a)] if lr != OPERATING[family(a)]]
            for a in ("full", "spectrum25", "spectrum50", "top-layers", "lora")
        }
        # full fine-tuning's curve right after every arm's first seed: the primary comparison needs it
        first = len(fixed) if block.seeds else 0
        runs[first:first] = curves.pop("full")
        runs += [arm for c in curves.values() for arm in c]
    return runs


def timing_plan(block: Block, arms: list[Arm], scan: Any, model: str) -> list[Arm]:
    """One arm of each group at its operating rate (training-order seed 0) for the compute column, with
    Spectrum-25 (the block's reference, run by the pilot when the block does not name it)."""
    first = [a for a in arms if not a.sweep and a.data_seed == 0]
    if not any(a.group == "spectrum25" for a in first):
        only = replace(block, arms=("spectrum25",), seeds=1, draws=0, draw_seeds=0, curves=False)
        first += block_arms(only, scan, model)
    return timing_arms(first)


def only_groups(arms: list[Arm], names: str | None) -> list[Arm]:
    """The block's runs of the named groups (``full,top-layers``), in block order: a partial block that answers
    one comparison with two seeds first, where the whole block does not fit the time there is."""
    if not names:
        return arms
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = list(dict.fromkeys(a.group for a in arms))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"--arms: {', '.join(unknown)} not in this block; its arms are: {', '.join(known)}")
    return [a for a in arms if a.group in wanted]


def results_folder(results: Path, block: str, quick: bool = False) -> Path:
    return results / "study-runs" / f"main{'-quick' if quick else ''}-{block}"


def report_kinds() -> dict[str, str]:
    """Each block's outcome kind for the report: exact match (facts, skill) or held-out loss (cpt)."""
    return {name: "cpt" if b.task == "cpt" else "exact" for name, b in BLOCKS.items()}


def main_study(a) -> None:
    """``study.py --main BLOCK [--quick] [--arms A,B] [--max-runs N] [--timing STEPS] [--report]``: the block's
    runs not stored yet (of the groups ``--arms`` names, else all), in order, then each arm's step time alone
    (``--timing``; ``--max-runs 0 --timing 10`` times only), then the report of every block (``--report``: the
    report only)."""
    from benchmarks.study_main_report import DOC, report_main

    if a.report:
        report_main(report_kinds(), doc=DOC)
        return
    import spectrum_llm
    from benchmarks import study
    from benchmarks.study_pilot import PILOTS
    from benchmarks.study_tasks import kind

    block = BLOCKS[a.main]
    mode = "main-quick" if a.quick else "main"
    pilot = PILOTS["pilot-quick" if a.quick else "pilot"].settings
    s = replace(pilot, task=block.task, model=block.model, facts_seed=block.facts_seed)
    if block.model != "smollm2-135m":
        mode += f"-{block.model}"  # its own work folder (converted model, data, scans)
    if block.facts_seed != pilot.facts_seed:
        mode += f"-facts{block.facts_seed}"
    store = study.Store(results_folder(study.RESULTS, block.name, a.quick))
    ctx = study.setup(a.work, mode, s)
    ctx["baseline"] = study.baseline(s, ctx, store)
    if any(a in ("qlora", "spectrum25-nf4") for a in block.arms):
        study.baseline(s, ctx, store, quantize="nf4")
    model = ctx["model"]
    scan_path = ctx["work"] / f"scan-{Path(model).name}-mp.json"
    scan = spectrum_llm.scan(model, output=scan_path, progress=False)
    scores = None
    if "task-aware" in block.arms:
        trainer_task = kind(s.task).trainer_task
        scores = task_scores(model, ctx["files"]["train"], trainer_task, ctx["work"] / "task-scores.json")
    arms = only_groups(block_arms(block, scan, model, scores, str(scan_path)), a.arms)
    left = a.max_runs if a.max_runs is not None else len(arms)
    print(f"[main] block {block.name}: {len(arms)} runs; stored in {store.folder}", flush=True)
    for arm in arms:
        if store.get(arm.name, study.run_key(s, arm, ctx["fingerprint"])) is None:
            if left <= 0:
                break
            left -= 1
        study.execute(arm, s, ctx, store)
    if a.timing:
        timing = study.Store(store.folder / "timing")
        for arm in timing_plan(block, arms, scan, model):
            study.time_arm(arm, s, ctx, timing, a.timing)
    if not a.quick:
        report_main(report_kinds(), doc=DOC)
