"""(a) of the GPU benchmark: a synthetic Llama-3.1-8B-shaped checkpoint scanned by ``spectrum_llm.scan`` and by
the reference method (the model in fp32 on the GPU, ``svdvals`` per module), each in a fresh process.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_common import SHAPES, child_save, peak_mib, run_measurement, say, sync
from benchmarks.gpu_report import Report


def scan_shape(args) -> dict:
    if args.tiny:
        return dict(
            hidden_size=64,
            intermediate_size=160,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            vocab_size=512,
            num_hidden_layers=args.scan_layers,
        )
    s = {k: v for k, v in SHAPES["8b"].items() if k not in ("scan", "label", "tie_word_embeddings")}
    return {**s, "num_hidden_layers": args.scan_layers}


def scan_bytes(args) -> int:
    s = scan_shape(args)
    h, i, v, kv = s["hidden_size"], s["intermediate_size"], s["vocab_size"], s["num_key_value_heads"] * s["head_dim"]
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return 2 * (s["num_hidden_layers"] * layer + 2 * v * h + h)


def write_checkpoint(path: Path, shape: dict, dev) -> Path:
    """Random bf16 weights in Llama names and shapes, one shard per layer, generated on the device."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    q, kv = shape["num_attention_heads"] * shape["head_dim"], shape["num_key_value_heads"] * shape["head_dim"]
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*size):
        return (torch.randn(*size, generator=g, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict) -> None:
        save_file(tensors, path / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    shard("embed.safetensors", {"model.embed_tokens.weight": rand(v, h)})
    for n in range(shape["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shard(
            f"layer-{n:03d}.safetensors",
            {
                p + "self_attn.q_proj.weight": rand(q, h),
                p + "self_attn.k_proj.weight": rand(kv, h),
                p + "self_attn.v_proj.weight": rand(kv, h),
                p + "self_attn.o_proj.weight": rand(h, q),
                p + "mlp.gate_proj.weight": rand(i, h),
                p + "mlp.up_proj.weight": rand(i, h),
                p + "mlp.down_proj.weight": rand(h, i),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            },
        )
    shard("head.safetensors", {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    settings: dict[str, Any] = dict(tie_word_embeddings=False, max_position_embeddings=8192, rope_theta=500000.0)
    cfg = LlamaConfig(**shape, **settings)
    cfg.save_pretrained(path)
    return path


def child_scan_ours(spec: dict) -> None:
    import torch

    import spectrum_llm
    from spectrum_llm.checkpoint import open_checkpoint
    from spectrum_llm.spectra import singular_values

    dev = torch.device(spec["device"])
    out: dict = {"status": "running"}
    t0 = time.monotonic()
    if dev.type == "cuda":
        torch.zeros(1, device=dev)  # CUDA context before the clock starts, as for the reference
        torch.cuda.reset_peak_memory_stats(dev)
    out["init_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    result = spectrum_llm.scan(spec["path"], estimator="reference", device=spec["device"], resume=False)
    sync(dev)
    out.update(
        compute_s=round(time.monotonic() - t0, 2),
        load_s=None,
        modules=len(result.ranked()),
        peak_gpu_mib=peak_mib(dev),
        snr={m.name: m.snr for m in result.modules if m.ranked},
    )
    out["wall_s"] = out["compute_s"]
    child_save(spec, out)
    say(f"ours: {out['modules']} modules in {out['compute_s']:.1f} s")
    # accuracy: our device path and the reference's fp32 svdvals against float64 on the CPU
    ckpt = open_checkpoint(spec["path"])
    names = [
        n
        for n in (
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
        )
    ]
    infos = {t.name: t for t in ckpt.tensors}
    ours_err = ref_err = 0.0
    for name in names:
        w: Any = ckpt.load(infos[name])  # a bf16 tensor: the checkpoint is not quantized
        exact = singular_values(w, "cpu")
        top = float(exact[0])
        ours = singular_values(w, dev)
        ref = torch.linalg.svdvals(w.to(dev, torch.float32)).double().cpu()
        ours_err = max(ours_err, float((ours - exact).abs().max()) / top)
        ref_err = max(ref_err, float((ref - exact).abs().max()) / top)
    out["accuracy"] = {
        "matrices": [n.removeprefix("model.layers.0.").removesuffix(".weight") for n in names],
        "ours_max_rel": ours_err,
        "reference_fp32_max_rel": ref_err,
    }
    out["status"] = "ok"
    child_save(spec, out)
    say(f"ours: singular values within {ours_err:.1e} of the largest (reference fp32: {ref_err:.1e})")


def child_scan_reference(spec: dict) -> None:
    """The reference tool's method: the whole model in fp32 on the device, then svdvals and the formula per module."""
    import torch
    from transformers import AutoModelForCausalLM

    dev = torch.device(spec["device"])
    out: dict = {"status": "running", "snr": {}}
    t0 = time.monotonic()
    if dev.type == "cuda":
        torch.zeros(1, device=dev)
        torch.cuda.reset_peak_memory_stats(dev)
    out["init_s"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    kw = {"device_map": {"": str(dev)}} if dev.type == "cuda" and importlib.util.find_spec("accelerate") else {}
    model: Any = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32, **kw)
    model.to(dev)
    sync(dev)
    out["load_s"] = round(time.monotonic() - t0, 2)
    say(f"reference: model loaded in fp32 in {out['load_s']:.1f} s")
    t1 = time.monotonic()
    n = 0
    out["module_s"] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        tm = time.monotonic()
        w = mod.weight.detach()
        s = torch.linalg.svdvals(w)
        q75, q25 = torch.quantile(s, 0.75), torch.quantile(s, 0.25)
        sigma = (q75 - q25) / 1.349
        rows, cols = w.shape
        beta = min(rows, cols) / max(rows, cols)
        threshold = sigma * (1 + math.sqrt(beta))
        above = s > threshold
        signal = s[above].sum()
        noise = s[~above].sum() if bool((~above).any()) else torch.tensor(1.0, device=s.device)
        out["snr"][name] = float(signal / noise / s[0])  # .item(), as the reference tool: waits for the GPU
        out["module_s"][name] = round(time.monotonic() - tm, 3)
        n += 1
        out.update(modules=n, compute_s=round(time.monotonic() - t1, 2))
        child_save(spec, out)
    sync(dev)
    out.update(compute_s=round(time.monotonic() - t1, 2), modules=n, peak_gpu_mib=peak_mib(dev), status="ok")
    out["wall_s"] = round(out["load_s"] + out["compute_s"], 2)
    child_save(spec, out)
    say(f"reference: {n} modules in {out['compute_s']:.1f} s after loading")


def part_scan(args, report: Report, deadline: float) -> None:
    import torch

    shape = scan_shape(args)
    dev = torch.device(args.device)
    gb = scan_bytes(args) / 2**30
    label = (
        f"{'tiny Llama' if args.tiny else 'Llama-3.1-8B shapes'}, {shape['num_hidden_layers']} decoder layers "
        f"+ embedding + lm_head, bf16, {gb:.2f} GiB"
    )
    say(f"scan: writing {label} to {args.work}")
    t0 = time.monotonic()
    path = write_checkpoint(args.work / "scan-llama", shape, dev)
    torch.cuda.empty_cache() if dev.type == "cuda" else None
    s = {
        "checkpoint": label,
        "layers": shape["num_hidden_layers"],
        "gib": round(gb, 2),
        "write_s": round(time.monotonic() - t0, 1),
        "note": "files just written, so both methods read from page cache",
    }
    report.data["scan"] = s
    report.save()
    say(f"scan: written in {s['write_s']} s")
    spec = {"path": str(path), "device": args.device}
    for key, kind in (("ours", "scan-ours"), ("reference", "scan-reference")):
        left = deadline - time.monotonic()
        if left < 20:
            report.data["skipped"].append(f"scan {key}: only {left:.0f} s of the budget left")
            continue
        s[key] = run_measurement(kind, spec, args.work, kind, min(args.scan_timeout_s, left))
        report.save()
    ours, ref = s.get("ours") or {}, s.get("reference") or {}
    snr_o, snr_r = ours.pop("snr", {}), ref.pop("snr", {})
    if ours.get("wall_s") and ref.get("wall_s") and ref.get("status") == "ok":
        s["speedup"] = round(ref["wall_s"] / ours["wall_s"], 2)
        s["compute_speedup"] = round(ref["compute_s"] / ours["wall_s"], 2)
    elif ours.get("wall_s") and ref.get("status", "").startswith("timed out"):
        done = (ref.get("load_s") or 0) + (ref.get("compute_s") or 0)
        s["speedup_at_least"] = round(done / ours["wall_s"], 2)
    per = ref.get("module_s") or {}
    if per:
        head = [v for k, v in per.items() if ".layers." not in k]
        body = [v for k, v in per.items() if ".layers." in k]
        ref["embedding_lm_head_s"] = round(sum(head), 2)
        ref["per_layer_s"] = round(
            sum(body) / max(1, len({k.split(".layers.")[1].split(".")[0] for k in per if ".layers." in k})), 2
        )
    common = [k for k in snr_o if k in snr_r and snr_o[k]]
    if common:
        s["snr_max_rel_diff"] = max(abs(snr_o[k] - snr_r[k]) / abs(snr_o[k]) for k in common)
        s["snr_compared"] = len(common)
    report.save()
    shutil.rmtree(path, ignore_errors=True)
