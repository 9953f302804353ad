"""Low-bit bases benchmark: Spectrum-25 on a bf16, int8 and NF4 frozen base against QLoRA, LoRA and full
fine-tuning, side by side in one run on SmolLM2-135M (builtin:smollm2-135m).

    full                 every parameter trains
    spectrum25           top 25% per module type (mp scan) plus embeddings, frozen base in bf16
    spectrum25-int8      the same, every frozen linear module in LLM.int8 (bitsandbytes)
    spectrum25-nf4       the same, every frozen linear module in NF4 with double quantization
    qlora-r64            QLoRA: LoRA r=64 on all linear modules of an NF4 base (the paper's rank)
    qlora-matched        QLoRA at the rank whose adapters match Spectrum-25's selected linear parameters
    lora-matched         LoRA at that rank on the bf16 base

Each method runs in its own process (``benchlib.run_child``), is set up by ``spectrum_llm.training.prepare_model``
exactly as `spectrum train` sets it up, and trains the same micro-batch of token ids with torch AdamW under bf16
autocast, no gradient checkpointing. The child records the median step time and tokens/s, and the peak resident
memory of the training steps alone: after setup it hands freed heap back (malloc_trim), resets the kernel's
high-water mark (/proc/self/clear_refs) and reads VmHWM after the steps, less the resident memory after the
imports (file-backed weight pages included, so a bf16 base loaded by mmap counts as much as one copied).
On the CPU QLoRA uses torch AdamW (bitsandbytes' paged 8-bit AdamW needs CUDA), so all methods share one optimizer.

    python benchmarks/quant.py --quick          # sequence 128, micro-batch 2, 1 + 2 steps: ~15 min on 2 busy cores
    python benchmarks/quant.py                   # longer sequences, more steps

Writes ``benchmarks/results/quant-<mode>.json`` and prints the table as Markdown, ratios against full
fine-tuning and Spectrum-25 on an NF4 base against QLoRA.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchlib import convert_model, lora_rank_for, machine, median, module_table, run_child

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
METHODS = ("full", "spectrum25", "spectrum25-int8", "spectrum25-nf4", "qlora-r64", "qlora-matched", "lora-matched")
LOWBIT = {"spectrum25-int8", "spectrum25-nf4", "qlora-r64", "qlora-matched"}
MODES = {
    "quick": {"seq_len": 128, "micro_batch": 2, "warmup": 1, "steps": 2},
    "full": {"seq_len": 512, "micro_batch": 4, "warmup": 2, "steps": 8},
}


def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def config_for(spec: dict) -> Any:
    """The TrainConfig a method is set up with (as `spectrum train` would run it)."""
    from spectrum_llm.training import TrainConfig

    method = spec["method"]
    common = dict(model=spec["model"], precision="bf16", use_cpu=True, progress=False)
    if method == "full":
        return TrainConfig(method="full", **common)
    if method.startswith("spectrum25"):
        precision = method.partition("-")[2] or "bf16"
        return TrainConfig(method="spectrum", selection=spec["selection"], frozen_precision=precision, **common)
    rank = 64 if method == "qlora-r64" else spec["matched_rank"]
    return TrainConfig(method=method.partition("-")[0], lora_rank=rank, lora_alpha=2.0 * rank, **common)


def child(spec: dict, result_path: Path) -> None:
    """One method: set up, then time warmup + steps on one fixed micro-batch; the training steps' peak memory."""
    import ctypes
    import gc

    import torch

    if spec["method"] in LOWBIT:
        import bitsandbytes  # noqa: F401  (imported before the baseline, as the model would import it)
    from transformers import AutoModelForCausalLM

    from spectrum_llm.selection import load_selection
    from spectrum_llm.training import prepare_model

    torch.manual_seed(0)
    base_kib = _status_kib("VmRSS")
    out: dict[str, Any] = {"method": spec["method"]}
    t0 = time.monotonic()
    cfg = config_for(spec)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="auto")
    selection = load_selection(spec["selection"]) if cfg.method == "spectrum" else None
    prepared = prepare_model(cfg, model, selection)
    model = prepared.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    out.update(
        setup_s=round(time.monotonic() - t0, 2),
        trainable_params=prepared.trainable_params,
        total_params=prepared.total_params,
        lowbit=prepared.lowbit.to_json() if prepared.lowbit is not None else None,
        lora_rank=cfg.lora_rank if cfg.method in ("lora", "qlora") else None,
    )
    del selection
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand back what setup freed (the 16-bit weights a low-bit base replaced)
    setup_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark from here on: the training steps
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (spec["micro_batch"], spec["seq_len"]), generator=gen)
    times, losses = [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        t = time.monotonic()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.monotonic() - t)
        losses.append(float(loss))
    step = median(times[spec["warmup"] :]) or 0.0
    out.update(
        step_s=round(step, 3),
        tokens_per_s=round(spec["micro_batch"] * spec["seq_len"] / step, 1) if step else None,
        losses=losses,
        setup_mib=round((setup_kib - base_kib) / 1024, 1),
        peak_train_mib=round((_status_kib("VmHWM") - base_kib) / 1024, 1),
    )
    result_path.write_text(json.dumps(out, indent=1))


def prepare(work: Path) -> dict:
    """The converted bf16 model, its Spectrum-25 selection (mp scan, cached) and the rank that matches it."""
    from spectrum_llm import scan, select

    folder = convert_model(work, "bfloat16")
    result = scan(str(folder), output=str(work / "scan-bf16.json"), resume=True, progress=False)
    sel = select(result, top_percent=25.0)
    sel_path = work / "spectrum25-quant.json"
    sel_path.write_text(json.dumps(sel.to_json()), encoding="utf-8")
    budget = sum(ts.selected_numel for ts in sel.types.values())
    modules = [m for m in module_table(result) if len(m["shape"]) == 2]
    rank, adapter = lora_rank_for(modules, budget)
    return {
        "model": str(folder),
        "selection": str(sel_path),
        "matched_rank": rank,
        "matched_to": budget,
        "adapter_params": adapter,
    }


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def table(rows: list[dict]) -> str:
    by = {r["method"]: r for r in rows}
    full = by.get("full", {})
    lines = [
        "| method | trainable | step (s) | tokens/s | peak train memory (MiB) | time vs full | memory vs full |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("status", "ok") != "ok" or "step_s" not in r:
            lines.append(f"| {r['method']} | {r.get('status', 'failed')} | | | | | |")
            continue
        rank = f" (r={r['lora_rank']})" if r.get("lora_rank") else ""
        lines.append(
            f"| {r['method']}{rank} | {r['trainable_params'] / 1e6:.1f}M "
            f"({100 * r['trainable_params'] / r['total_params']:.1f}%) | {r['step_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | "
            f"{r['peak_train_mib']:,.0f} | {_ratio(r['step_s'], full.get('step_s'))} | "
            f"{_ratio(r['peak_train_mib'], full.get('peak_train_mib'))} |"
        )
    nf4 = by.get("spectrum25-nf4", {}).get("peak_train_mib")
    for q in ("qlora-r64", "qlora-matched"):
        peak = by.get(q, {}).get("peak_train_mib")
        if nf4 and peak:
            lines.append(f"\nSpectrum-25 on an NF4 base: {nf4 / peak:.2f}x the peak memory of {q} (goal: at most 1.3x)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short sequences and few steps (~10 min on 2 CPU cores)")
    ap.add_argument("--work", default="/tmp/spectrum-bench", help="cache folder: converted model, scan, runs")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    ap.add_argument("--tag", default="", help="suffix for the results file (e.g. a machine name)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        child(json.loads(Path(args.worker).read_text()), Path(args.result))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    mode = "quick" if args.quick else "full"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setup = prepare(work)
    rows, t0 = [], time.monotonic()
    for method in methods:
        if method in LOWBIT and not has_bnb:
            rows.append({"method": method, "status": "skipped: bitsandbytes is not installed (spectrum-llm[quant])"})
            continue
        print(f"[bench] {method} ...", flush=True)
        spec = {**setup, **MODES[mode], "method": method}
        row = run_child(__file__, spec, work, f"quant-{method}", check=False)
        rows.append(row)
        print(
            f"[bench] {method}: {row.get('status')} {row.get('step_s')} s/step, {row.get('peak_train_mib')} MiB",
            flush=True,
        )
    out = {
        "mode": mode,
        **MODES[mode],
        "setup": setup,
        "machine": machine(),
        "rows": rows,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"quant-{mode}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(table(rows))
    print(f"\n[bench] wrote {path}")


if __name__ == "__main__":
    main()
