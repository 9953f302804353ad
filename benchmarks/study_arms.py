"""The study's plan: its settings, the arms (what trains, at which rate), their run keys and the rate sweep.

A run's key hashes everything that decides its result, so stored runs are found again by configuration
(``benchmarks/results/study-runs/``): change what a run computes, bump ``STUDY_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.benchlib import MODELS, lora_rank_for, module_table, random_patterns, top_layers

STUDY_VERSION = 1  # bump when a change to the code changes what a run computes
MODEL = "SmolLM2-135M-Instruct"  # the study's model (its weights are in every key through the fingerprint)
DEFAULT_MODEL = "smollm2-135m"  # Settings.model: the builtin the study trains (benchlib.MODELS)
NOT_IN_KEY = (
    "lr_grid",
    "random25_seeds",
    "random50_seeds",
    "noemb_seeds",
    "low_rate_seeds",
    "arms",
)  # which runs, not how

# added after the first study: out of its keys at these values
LATER_SETTINGS: dict[str, Any] = {"eval_at": (), "task": "facts", "model": DEFAULT_MODEL}
TASK_SETTINGS = {  # one task's sizes: out of every other task's keys, so fact keys stay as they were
    "skill": ("skill_problems", "skill_eval", "skill_seed"),
    "cpt": ("cpt_train_blocks", "cpt_eval_blocks"),
}
TASKS = ("facts", "skill", "cpt")

# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a run except the arm itself; part of every run's key."""

    countries: int
    steps: int
    batch_size: int
    warmup: float
    general_blocks: int
    chat_blocks: int
    block_len: int
    lr_grid: dict[str, tuple[float, ...]]
    random25_seeds: int
    random50_seeds: int
    noemb_seeds: int
    arms: tuple[str, ...] | None = None  # None: every arm
    low_rate_seeds: int = 0  # random 25% draws again at the partial family's next lower rate
    seed: int = 42  # the training file's row order, and the trainer's seed (its data order unless an arm sets one)
    facts_seed: int = 1234  # the fictional facts (stored runs' keys call it data_seed: see run_key)
    precision: str = "bf16"
    seq_len: int = 64
    eval_at: tuple[int, ...] = ()  # also evaluate at these optimizer steps (the trajectory of a longer run)
    task: str = "facts"  # facts | skill (arithmetic word problems) | cpt (Python standard-library source)
    skill_problems: int = 1200  # training problems of the skill task (100 steps of 24: two epochs)
    skill_eval: int = 240  # its validation and test problems each (40 per template family)
    skill_seed: int = 7  # its number draws, wordings and nouns
    cpt_train_blocks: int = 2400  # the CPT task's training text in blocks of seq_len tokens (one epoch of 100x24)
    cpt_eval_blocks: int = 64  # its validation and test blocks each, block_len tokens, from held-out files
    model: str = DEFAULT_MODEL  # builtin:<model>, a key of benchlib.MODELS


MODES = {
    "full": Settings(
        countries=70,
        steps=100,
        batch_size=24,
        warmup=0.1,
        general_blocks=32,
        chat_blocks=16,
        block_len=128,
        lr_grid={
            "full": (3e-5, 1e-4, 3e-4, 1e-3),
            "partial": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
            "lora": (3e-4, 1e-3, 3e-3),
        },
        random25_seeds=10,
        random50_seeds=5,
        noemb_seeds=5,
        low_rate_seeds=5,
    ),
    "quick": Settings(
        countries=10,
        steps=6,
        batch_size=8,
        warmup=0.1,
        general_blocks=4,
        chat_blocks=4,
        block_len=64,
        lr_grid={"full": (1e-4, 3e-4), "partial": (3e-4, 1e-3), "lora": (1e-3,)},
        random25_seeds=2,
        random50_seeds=0,
        noemb_seeds=1,
        low_rate_seeds=1,
        arms=("spectrum25-ref", "global25-mp", "top-layers25", "spectrum25-mp-noemb"),
        skill_problems=60,
        skill_eval=12,
        cpt_train_blocks=48,
        cpt_eval_blocks=8,
    ),
}


# ------------------------------------------------------------------------------------------ arms


@dataclass
class Arm:
    """One run: what trains (method + selection or LoRA rank), at which learning rate, in which family."""

    name: str
    family: str  # full | partial | lora (shares a tuned learning rate)
    group: str  # for tables and plots: full, spectrum25, random25, ...
    method: str
    lr: float
    patterns: list[str] = field(default_factory=list)
    lora_rank: int | None = None
    seed: int | None = None  # the random draw's seed (the stored runs' selection_seed); None for a named pick
    sweep: bool = False
    data_seed: int | None = None  # training-order seed (the sampler's); None: the first study's order, Settings.seed
    options: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields (frozen_precision="nf4", ...)

    def train_fields(self, selection_path: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "learning_rate": self.lr, **self.options}
        if self.method == "spectrum" and "scan" not in self.options:  # a dynamic arm draws from its scan
            out["selection"] = selection_path
        if self.method in ("lora", "qlora"):
            out["lora_rank"] = self.lora_rank
        return out


def task_name(settings: Settings) -> str:
    """The task as a plain string: what a stored run learnt, readable without the code."""
    s = settings
    if s.task == "skill":
        return f"arithmetic-word-problems:{s.skill_problems}-problems:seed-{s.skill_seed}:held-out-wordings"
    if s.task == "cpt":
        version = "{}.{}".format(*sys.version_info[:2])  # the standard library's text depends on it
        return f"cpt:python-stdlib-{version}:{s.cpt_train_blocks}-blocks-of-{s.seq_len}-tokens"
    if s.task != "facts":
        raise ValueError(f"unknown study task {s.task!r} (one of {', '.join(TASKS)})")
    return f"fictional-facts:{s.countries}-countries:facts-seed-{s.facts_seed}"


def run_fields(settings: Settings, arm: Arm) -> dict[str, Any]:
    """The plain fields every stored run carries: task, model, training-order seed and selection seed.

    ``data_seed`` is the seed of the trainer's data sampler; an arm without one ran with the trainer's seed
    (``Settings.seed``), which the sampler then uses, so the first study's runs have ``data_seed`` 42.
    """
    return {
        "task": task_name(settings),
        "model": MODELS[settings.model],
        "data_seed": settings.seed if arm.data_seed is None else arm.data_seed,
        "selection_seed": arm.seed,
    }


def run_key(settings: Settings, arm: Arm, fingerprint: str) -> str:
    """A stable hash of everything that decides a run's result: settings, arm, model and data.

    The first study's runs (arms without a training-order seed) keep the exact payload of version 1, so
    they are found again under their stored keys: ``facts_seed`` is hashed under its old name ``data_seed``
    and settings added later are left out while they hold their defaults, as are the sizes of the tasks a
    run does not learn (:data:`TASK_SETTINGS`). An arm with a training-order
    seed (the second study) hashes a version-2 payload that adds the plain fields of :func:`run_fields`.
    """
    shaping = {k: v for k, v in asdict(settings).items() if k not in NOT_IN_KEY}
    shaping["data_seed"] = shaping.pop("facts_seed")
    for task, names in TASK_SETTINGS.items():
        if task != settings.task:
            for k in names:
                del shaping[k]
    for k, default in LATER_SETTINGS.items():
        if shaping[k] == default:
            del shaping[k]
    payload = {
        "version": STUDY_VERSION,
        "settings": shaping,
        "method": arm.method,
        "lr": arm.lr,
        "patterns": sorted(arm.patterns),
        "lora_rank": arm.lora_rank,
        "fingerprint": fingerprint,
    }
    if arm.data_seed is not None:
        payload.update(version=2, **run_fields(settings, arm))
    if arm.options:  # added with the main study: absent from every earlier key
        # the dynamic arm's scan by file name: its content follows from the fingerprint, its folder from --work
        payload["options"] = {k: Path(v).name if k == "scan" else v for k, v in arm.options.items()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def matched_global_percent(modules: list[dict], scores: dict[str, float], target: int) -> tuple[float, int]:
    """The global rule's top-percent whose modules' parameters come closest to ``target``, and that count.

    The global rule keeps ``int(n * P / 100)`` modules of all types together, best score first.
    """
    order = sorted((m for m in modules if scores.get(m["name"]) is not None), key=lambda m: -scores[m["name"]])
    n = len(modules)
    best: tuple[int, float, int] | None = None
    total = 0
    for k, m in enumerate(order, 1):
        total += m["numel"]
        gap = abs(total - target)
        if best is None or gap < best[0]:
            best = (gap, 100.0 * k / n, total)
    assert best is not None
    pct = best[1]
    while int(n * pct / 100) < round(best[1] * n / 100):  # float guard: int() must give k
        pct += 1e-9
    return pct, best[2]


def plan(work: Path, model: Path, s: Settings, best_lr: dict[str, float] | None) -> tuple[list[Arm], dict]:
    """The arms: the learning-rate sweep when ``best_lr`` is None, else every other arm at its family's rate."""
    import spectrum_llm

    scans = {
        est: spectrum_llm.scan(str(model), output=work / f"scan-{model.name}-{est}.json", estimator=est, progress=False)
        for est in ("mp", "reference")
    }
    sels = {
        (pct, est): spectrum_llm.select(scans[est], top_percent=pct, model=str(model))
        for pct in (25, 50)
        for est in ("mp", "reference")
    }
    s25 = sels[(25, "mp")]
    modules = module_table(scans["mp"])
    linear = [m for m in modules if m["layer"] is not None]
    kept25 = {t: ts.kept for t, ts in s25.types.items()}
    kept50 = {t: ts.kept for t, ts in sels[(50, "mp")].types.items()}
    budget_linear = sum(ts.selected_numel for ts in s25.types.values())
    rank, lora_params = lora_rank_for(linear, budget_linear)
    info: dict[str, Any] = {
        "spectrum25_linear_params": budget_linear,
        "extras": list(s25.extras),
        "kept_per_type_25": kept25,
        "kept_per_type_50": kept50,
        "lora_rank": rank,
        "lora_params": lora_params,
        "overlap_spectrum25_mp_ref": len(set(s25.modules) & set(sels[(25, "reference")].modules)),
        "spectrum25_modules": len(s25.modules),
    }
    arms: list[Arm]
    if best_lr is None:
        grid = {f: sorted(rates, key=lambda r: abs(r - statistics.median(rates))) for f, rates in s.lr_grid.items()}
        arms = [Arm("full", "full", "full", "full", lr, sweep=True) for lr in grid["full"]]
        arms += [
            Arm("spectrum25-mp", "partial", "spectrum25", "spectrum", lr, list(s25.patterns), sweep=True)
            for lr in grid["partial"]
        ]
        arms += [Arm("lora", "lora", "lora", "lora", lr, lora_rank=rank, sweep=True) for lr in grid["lora"]]
        return arms, info

    lr_p = best_lr["partial"]
    arms = []
    for seed in range(s.random25_seeds):
        arms.append(
            Arm(
                f"random25-s{seed}",
                "partial",
                "random25",
                "spectrum",
                lr_p,
                list(s25.extras) + random_patterns(modules, kept25, seed),
                seed=seed,
            )
        )
    arms.append(
        Arm("spectrum25-ref", "partial", "spectrum25", "spectrum", lr_p, list(sels[(25, "reference")].patterns))
    )
    for est, short in (("mp", "mp"), ("reference", "ref")):
        arms.append(
            Arm(f"spectrum50-{short}", "partial", "spectrum50", "spectrum", lr_p, list(sels[(50, est)].patterns))
        )
    for seed in range(s.random50_seeds):
        arms.append(
            Arm(
                f"random50-s{seed}",
                "partial",
                "random50",
                "spectrum",
                lr_p,
                list(s25.extras) + random_patterns(modules, kept50, 100 + seed),
                seed=100 + seed,
            )
        )
    noemb = spectrum_llm.select(
        scans["mp"], top_percent=25, train_embeddings=False, train_lm_head=False, model=str(model)
    )
    arms.append(Arm("spectrum25-mp-noemb", "partial", "spectrum25-noemb", "spectrum", lr_p, list(noemb.patterns)))
    for seed in range(s.noemb_seeds):
        arms.append(
            Arm(
                f"random25-noemb-s{seed}",
                "partial",
                "random25-noemb",
                "spectrum",
                lr_p,
                random_patterns(modules, kept25, 200 + seed),
                seed=200 + seed,
            )
        )
    scores = {m.name: m.snr for m in scans["mp"].modules}
    pct, gnumel = matched_global_percent(linear, scores, budget_linear)
    glob = spectrum_llm.select(scans["mp"], top_percent=pct, rule="global", model=str(model))
    arms.append(Arm("global25-mp", "partial", "global25", "spectrum", lr_p, list(glob.patterns)))
    budget = spectrum_llm.select(scans["mp"], budget=s25.trainable_params, model=str(model))
    arms.append(Arm("budget25-mp", "partial", "budget25", "spectrum", lr_p, list(budget.patterns)))
    layers, pats, lnumel = top_layers(linear, budget_linear)
    arms.append(Arm("top-layers25", "partial", "top-layers25", "spectrum", lr_p, list(s25.extras) + pats))
    lower = [r for r in s.lr_grid["partial"] if r < lr_p]
    if lower and s.low_rate_seeds:
        # a second operating point: the best rate is close to where training diverges (the next rate up
        # does), so the same draws are run again where Spectrum-25 forgets about as much as full fine-tuning
        lo = max(lower)
        info["low_rate"] = lo
        for seed in range(s.low_rate_seeds):
            arms.append(
                Arm(
                    f"random25-lo-s{seed}",
                    "partial",
                    "random25-lo",
                    "spectrum",
                    lo,
                    list(s25.extras) + random_patterns(modules, kept25, seed),
                    seed=seed,
                )
            )
    info.update(
        global_percent=pct,
        global_linear_params=gnumel,
        budget_params=s25.trainable_params,
        top_layers=sorted(layers),
        top_layers_linear_params=lnumel,
        noemb_modules=len(noemb.modules),
    )
    if s.arms is not None:
        arms = [a for a in arms if a.name in s.arms or a.group in s.arms]
    return arms, info


def best_rates(rows: list[dict]) -> dict[str, float]:
    """Each family's learning rate with the best validation exact match (then lower validation loss).

    A task without exact match (CPT) ranks by validation loss alone.
    """
    best: dict[str, tuple] = {}
    for r in rows:
        if not r.get("sweep"):
            continue
        key = (r.get("val_exact_match", 0.0), -r["val_loss"])
        if r["family"] not in best or key > best[r["family"]][0]:
            best[r["family"]] = (key, r["lr"])
    return {f: v[1] for f, v in best.items()}


def timing_arms(arms: list[Arm]) -> list[Arm]:
    """One arm per group for the timing pass: every named pick, and the first draw of each random group."""
    seen: set[str] = set()
    out = []
    for arm in arms:
        if arm.group.startswith("random") and arm.group in seen:
            continue
        seen.add(arm.group)
        out.append(arm)
    return out
