"""(b) of the GPU benchmark: the training cost of each method (full, Spectrum-25/-50, LoRA; Spectrum-25 on an int8
or NF4 frozen base and QLoRA where bitsandbytes is installed) on Llama shapes, each method in a fresh process: peak
memory and step time at a fixed micro-batch, then the largest that fits.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.benchlib import lora_rank_for, top_layers
from benchmarks.gpu_common import (
    DATA,
    LOWBIT_METHODS,
    SHAPES,
    TINY,
    child_save,
    peak_mib,
    reserved_mib,
    run_measurement,
    say,
    sync,
)
from benchmarks.gpu_report import Report


def _model_config(key: str, tiny: bool):
    from transformers import LlamaConfig

    shape: dict[str, Any] = {k: v for k, v in SHAPES[key].items() if k not in ("scan", "label")}
    if tiny:
        shape.update(TINY)
    shape.update(max_position_embeddings=8192, rope_theta=500000.0, use_cache=False)
    return LlamaConfig(**shape)


def decoder_linears(model) -> list[dict]:
    """The decoder layers' linear modules as ``benchlib.lora_rank_for`` reads them: ``shape`` [out, in]."""
    import torch

    return [
        {"name": n, "shape": [m.out_features, m.in_features]}
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n
    ]


def _layer_table(model) -> list[dict]:
    """The decoder layers' linear modules as ``benchlib.top_layers`` reads them: layer, numel and pattern."""
    from spectrum_llm.axolotl import tensor_pattern
    from spectrum_llm.naming import parse

    return [
        {
            "layer": parse(m["name"] + ".weight").layer,
            "numel": m["shape"][0] * m["shape"][1],
            "pattern": tensor_pattern(m["name"] + ".weight"),
        }
        for m in decoder_linears(model)
    ]


def setup_method(model, method: str, scan_path: Path) -> tuple[Any, dict]:
    """Make the method's parameters trainable with ``spectrum_llm.training.prepare_model``, the set-up `spectrum
    train` runs; returns the model and what trains. ``-int8``/``-nf4`` hold the frozen linear modules in low bit."""
    from spectrum_llm import select
    from spectrum_llm.params import count_params
    from spectrum_llm.selection_file import Selection
    from spectrum_llm.training import TrainConfig, lowbit, prepare_model

    info: dict = {}
    device = next(model.parameters()).device.type
    total_before = count_params(model)[1]
    base, _, precision = method.partition("-")
    selection = None
    if base == "full":
        cfg = TrainConfig(method="full")
    elif base.startswith("spectrum"):
        selection = select(scan_path, top_percent=float(base.removeprefix("spectrum")), model=model)
        cfg = TrainConfig(method="spectrum")
        info["selected_modules"] = len(selection.modules)
    elif base == "toplayers25":
        sel = select(scan_path, top_percent=25.0, model=model)
        budget = sum(ts.selected_numel for ts in sel.types.values())
        layers, patterns, _ = top_layers(_layer_table(model), budget)
        selection = Selection.from_patterns(patterns)
        cfg = TrainConfig(method="spectrum")
        info.update(top_layers=sorted(layers), matched_to=budget)
    elif base in ("lora", "qlora"):
        sel = select(scan_path, top_percent=25.0, model=model)
        budget = sum(ts.selected_numel for ts in sel.types.values())
        rank, _ = lora_rank_for(decoder_linears(model), budget)
        if base == "qlora":
            from peft import prepare_model_for_kbit_training

            info["lowbit"] = lowbit.qlora_base(model, device).to_json()
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        cfg = TrainConfig(method="lora", lora_rank=rank)
        info.update(lora_rank=rank, lora_matched_to=budget)
    else:
        raise ValueError(method)
    prepared = prepare_model(cfg, model, selection, source="", upcast=True)
    if precision:
        info["lowbit"] = lowbit.frozen_linears(prepared.model, precision, device).to_json()
    info["trainable_params"] = prepared.trainable_params
    info["total_params"] = total_before  # counted before adapters and quantization
    info["trainable_fraction"] = info["trainable_params"] / info["total_params"]
    return prepared.model, info


def child_train(spec: dict) -> None:
    import torch

    dev = torch.device(spec["device"])
    out: dict = {"status": "running", "model": spec["label"], "method": spec["method"]}
    cfg = _model_config(spec["model"], spec["tiny"])
    torch.manual_seed(0)
    t0 = time.monotonic()
    from transformers import LlamaForCausalLM

    model: Any
    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, info = setup_method(model, spec["method"], DATA / SHAPES[spec["model"]]["scan"])
    out.update(info)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt: Any
    if spec["method"] == "qlora" and dev.type == "cuda":  # QLoRA's paged 8-bit AdamW, as the paper trains
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-5)
        out["optimizer"] = "paged_adamw_8bit"
    else:
        opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda", foreach=None if dev.type == "cuda" else True)
    out["build_s"] = round(time.monotonic() - t0, 2)
    seq, vocab = spec["seq_len"], cfg.vocab_size
    gen = torch.Generator(device=dev).manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    child_save(spec, out)
    say(
        f"{spec['label']} {spec['method']}: {info['trainable_params'] / 1e6:,.1f}M trainable "
        f"({100 * info['trainable_fraction']:.1f}%), built in {out['build_s']} s"
    )

    def step(batch: int) -> float:
        x = torch.randint(0, vocab, (batch, seq), device=dev, generator=gen)
        sync(dev)
        t = time.monotonic()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        if not math.isfinite(float(loss)):
            raise RuntimeError(f"loss is {float(loss)}")
        return time.monotonic() - t

    def trial(batch: int, steps: int) -> list[float] | None:
        """Step times at this micro-batch, or None when it does not fit in GPU memory."""
        oom = False
        try:
            times = [step(batch) for _ in range(steps)]
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            return None
        return times

    mb = spec["micro_batch"]
    times = trial(mb, spec["warmup"] + spec["steps"])
    if times is None:
        out["fixed"] = {"micro_batch": mb, "status": "OOM"}
    else:
        st = statistics.median(times[spec["warmup"] :])
        out["fixed"] = {
            "micro_batch": mb,
            "step_s": round(st, 4),
            "tokens_per_s": round(mb * seq / st, 1),
            "peak_mib": peak_mib(dev),
            "peak_reserved_mib": reserved_mib(dev),
            "steps": len(times) - spec["warmup"],
        }
    child_save(spec, out)
    say(f"{spec['label']} {spec['method']}: fixed micro-batch {mb}: {out['fixed']}")

    # largest micro-batch: double from the fixed one, then bisect, within a cap and a time limit
    t_search = time.monotonic()
    ok, bad = (mb, None) if times is not None else (0, mb)
    best = dict(out["fixed"]) if times is not None else {}
    capped = False

    def measure(b: int) -> bool:
        nonlocal best
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ts = trial(b, 2)
        if ts is None:
            say(f"{spec['label']} {spec['method']}: micro-batch {b} does not fit")
            return False
        best = {
            "micro_batch": b,
            "step_s": round(ts[-1], 4),
            "tokens_per_s": round(b * seq / ts[-1], 1),
            "peak_mib": peak_mib(dev),
            "peak_reserved_mib": reserved_mib(dev),
        }
        say(f"{spec['label']} {spec['method']}: micro-batch {b} fits, {best['tokens_per_s']:,.0f} tokens/s")
        return True

    while bad is None:
        if ok >= spec["max_batch"] or time.monotonic() - t_search > spec["search_s"]:
            capped = True
            break
        b = min(max(1, 2 * ok), spec["max_batch"])
        if measure(b):
            ok = b
        else:
            bad = b
        out["largest"] = {**best, "capped": capped, "search_s": round(time.monotonic() - t_search, 1)}
        child_save(spec, out)
    while bad is not None and bad - ok > 1:
        if time.monotonic() - t_search > spec["search_s"]:
            capped = True
            break
        b = (ok + bad) // 2
        if measure(b):
            ok = b
        else:
            bad = b
        out["largest"] = {**best, "capped": capped, "search_s": round(time.monotonic() - t_search, 1)}
        child_save(spec, out)
    out["largest"] = (
        {**best, "capped": capped, "search_s": round(time.monotonic() - t_search, 1)}
        if ok
        else {"micro_batch": 0, "status": "OOM at micro-batch 1"}
    )
    out["status"] = "ok"
    child_save(spec, out)


def part_train(args, report: Report, deadline: float) -> None:
    for key in args.models:
        for method in args.methods:
            left = deadline - time.monotonic()
            need = args.train_min_s
            if left < need:
                report.data["skipped"].append(
                    f"train {SHAPES[key]['label']} {method}: {left:.0f} s of the budget left, {need:.0f} s needed"
                )
                report.save()
                say(f"skipping {key} {method}: budget")
                continue
            if method in LOWBIT_METHODS and importlib.util.find_spec("bitsandbytes") is None:
                report.data["skipped"].append(
                    f"train {SHAPES[key]['label']} {method}: bitsandbytes is not installed "
                    "(pip install 'spectrum-llm[quant]')"
                )
                report.save()
                say(f"skipping {key} {method}: no bitsandbytes")
                continue
            spec = {
                "model": key,
                "label": SHAPES[key]["label"],
                "method": method,
                "device": args.device,
                "tiny": args.tiny,
                "seq_len": args.seq_len,
                "micro_batch": args.micro_batch,
                "steps": args.steps,
                "warmup": args.warmup,
                "max_batch": args.max_batch,
                "search_s": args.search_s,
            }
            row = run_measurement("train", spec, args.work, f"train-{key}-{method}", min(args.train_timeout_s, left))
            row.setdefault("model", SHAPES[key]["label"])
            row.setdefault("method", method)
            report.data["train"].append(row)
            report.save()
