"""GPU benchmark: scan speed against the reference method, and the training cost of each method, in one command.

    PYTHONPATH=src python3 benchmarks/gpu.py --out OUT          # one H100-class GPU, under 8 minutes
    PYTHONPATH=src python3 benchmarks/gpu.py --tiny --out OUT   # tiny shapes on the CPU, seconds (the tests run this)

(a) ``scan``: a synthetic checkpoint with Llama-3.1-8B's layer shapes (``--scan-layers`` decoder layers plus the
    128256 x 4096 embedding and lm_head, random bf16 weights written to local disk) is scanned by
    ``spectrum_llm.scan(device=...)`` and by the reference method (the model loaded in fp32 onto the GPU, then
    ``torch.linalg.svdvals`` per module, as the reference tool does), each in a fresh process. The singular values
    of a few matrices are also checked against the float64 CPU computation.
(b) ``train``: Llama-3.2-1B and -3B shapes (``--models``; 8B too if asked), random weights built on the GPU from
    the config, bf16 weights, fp32 master copies and AdamW states for the trained parameters (as
    ``spectrum_llm.train`` keeps them), autocast bf16, gradient checkpointing on. Methods: full fine-tuning,
    Spectrum-25 and -50 (selected from the model's published scan in ``benchmarks/data/``) and LoRA on all linear
    modules at the rank whose size matches Spectrum-25's linear part. Each method runs in a fresh process: peak
    CUDA memory and median step time at a fixed micro-batch, then the largest micro-batch that fits (doubling,
    then bisection, capped and time-limited) with its tokens/s.

Results are written after every measurement to ``OUT/gpu.json`` and ``OUT/gpu.md`` (so a run cut short still
leaves what it measured); progress lines go to stdout. ``--budget-s`` skips what would not finish in time.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
DATA = HERE / "data"
NEEDED = ("torch", "transformers", "peft", "safetensors", "numpy")
FORBIDDEN_AT_IMPORT = ("datasets", "gguf", "trl")  # absent on the GPU machine

# Published model shapes (config.json of each model).
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
               scan="snr_results_meta-llama-Llama-3.2-1B.json", label="Llama-3.2-1B"),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
               scan="snr_results_meta-llama-Llama-3.2-3B.json", label="Llama-3.2-3B"),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
               scan="snr_results_meta-llama-Meta-Llama-3.1-8B.json", label="Llama-3.1-8B"),
}
# --tiny keeps each model's layer count (so its published scan's selection applies) and shrinks the widths.
TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            vocab_size=256)
METHODS = ("full", "spectrum25", "spectrum50", "lora")


def say(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# ------------------------------------------------------------------------------------------ pre-flight


def preflight(args) -> dict:
    """Check and print everything the run needs before doing any work; exit 2 with the reason otherwise."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"missing Python packages: {', '.join(missing)}. This benchmark needs {', '.join(NEEDED)} "
             "(accelerate optional); install them, or carry their wheels to this machine.")
    sys.path.insert(0, str(SRC))
    try:
        for mod in ("spectrum_llm", "spectrum_llm.freezing", "spectrum_llm.scanning", "spectrum_llm.selection",
                    "spectrum_llm.training"):
            importlib.import_module(mod)
    except Exception as e:
        fail(f"cannot import spectrum_llm from {SRC} ({type(e).__name__}: {e}). Run from the repository root "
             "with PYTHONPATH=src.")
    import numpy
    import peft
    import safetensors
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "safetensors": safetensors.__version__, "numpy": numpy.__version__,
            "accelerate": _version("accelerate"), "cpus": os.cpu_count(), "device": args.device}
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"--device {args.device} but torch {torch.__version__} sees no CUDA GPU. Use a GPU machine, or "
                 "--tiny (CPU) to check the script.")
        dev = torch.device(args.device)
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(total / 2**30, 1),
                    gpu_free_gib=round(free / 2**30, 1), cuda=torch.version.cuda)
        if not torch.cuda.is_bf16_supported():
            fail(f"{props.name} has no bf16 support; the training part needs it (Ampere or newer).")
    for key in args.models:
        if not (DATA / SHAPES[key]["scan"]).is_file():
            fail(f"the published scan {DATA / SHAPES[key]['scan']} is missing: it ships in benchmarks/data/.")
    need = _scan_bytes(args) * 1.1 if "scan" in args.parts else 0
    args.work.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(args.work).free
    if free_disk < need:
        fail(f"{args.work} has {free_disk / 2**30:.1f} GiB free; the synthetic checkpoint needs {need / 2**30:.1f} "
             "GiB. Pass --work on a larger disk or fewer --scan-layers.")
    info["work"] = str(args.work)
    say("environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


def _version(mod: str) -> str | None:
    try:
        return importlib.import_module(mod).__version__
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ report


class Report:
    """The results so far, rewritten (atomically) as JSON and Markdown after every measurement."""

    def __init__(self, out: Path, settings: dict, env: dict):
        self.out = out
        self.data = {"settings": settings, "environment": env, "scan": None, "train": [], "skipped": [],
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "finished": None}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.json", json.dumps(self.data, indent=2, default=str) + "\n"),
                           ("gpu.md", markdown(self.data))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)


def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 1e7 else f"{n / 1e6:.2f}M"


def markdown(d: dict) -> str:
    env = d["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpus')} cores)"
    lines = [f"# GPU benchmark on {where}", "",
             f"torch {env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}; "
             f"started {d['started']}, finished {d['finished'] or '(not finished)'}.", ""]
    s = d.get("scan")
    if s:
        lines += [f"## Scan: {s['checkpoint']}", "",
                  "| method | wall s (process) | load s | compute s | modules | peak GPU MiB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, label in (("ours", "spectrum-llm (Gram + eigvalsh, float64, staged)"),
                           ("reference", "reference method (fp32 model, svdvals per module)")):
            r = s.get(key) or {}
            status = "" if r.get("status", "ok") == "ok" else f" ({r.get('status')})"
            lines.append(f"| {label}{status} | {_fmt(r.get('wall_s'), '.1f')} | {_fmt(r.get('load_s'), '.1f')} | "
                         f"{_fmt(r.get('compute_s'), '.1f')} | {r.get('modules', '-')} | "
                         f"{_fmt(r.get('peak_gpu_mib'), '.0f')} |")
        if s.get("speedup_at_least"):
            done = (s.get("reference") or {}).get("modules", 0)
            lines.append(f"\nThe reference method did not finish ({done} modules done): spectrum-llm is at least "
                         f"{s['speedup_at_least']:.2f}x faster end to end.")
        if s.get("speedup"):
            lines.append(f"\nspectrum-llm is {s['speedup']:.2f}x faster end to end; the reference method's svdvals "
                         f"alone, without its loading, take {s.get('compute_speedup') or 0:.2f}x our whole scan.")
        ref = s.get("reference") or {}
        if ref.get("per_layer_s") is not None:
            lines.append(f"The reference method's svdvals took {ref['per_layer_s']:.2f} s per decoder layer and "
                         f"{ref['embedding_lm_head_s']:.2f} s on the embedding and lm_head together.")
        acc = (s.get("ours") or {}).get("accuracy")
        if acc:
            lines.append(f"Largest difference of our device singular values from float64 on the CPU: "
                         f"{acc['ours_max_rel']:.1e} of the largest singular value (the reference method's fp32 "
                         f"svdvals: {acc['reference_fp32_max_rel']:.1e}), over {', '.join(acc['matrices'])}.")
        if s.get("snr_max_rel_diff") is not None:
            lines.append(f"Largest relative difference of the reference SNR, ours vs the reference method: "
                         f"{s['snr_max_rel_diff']:.1e}.")
        lines.append("")
    rows = d.get("train") or []
    if rows:
        lines += ["## Training cost", "",
                  f"Sequence length {d['settings']['seq_len']}, fixed micro-batch {d['settings']['micro_batch']}, "
                  "bf16 weights, fp32 master copies and AdamW states for trained parameters, autocast bf16, "
                  "gradient checkpointing.", "",
                  "| model | method | trainable | peak MiB @ fixed | step s @ fixed | tokens/s @ fixed | "
                  "largest micro-batch | tokens/s @ largest | peak MiB @ largest |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            if r.get("status", "ok") != "ok" and not r.get("fixed"):
                lines.append(f"| {r['model']} | {r['method']} | - | {r.get('status')} | | | | | |")
                continue
            fx, mx = r.get("fixed") or {}, r.get("largest") or {}
            trainable = f"{_millions(r['trainable_params'])} ({100 * r['trainable_fraction']:.1f}%)" \
                if r.get("trainable_params") else "-"
            big = mx.get("micro_batch")
            big_s = "-" if big is None else f"{big}{'+' if mx.get('capped') else ''}"
            peak = _fmt(fx.get("peak_mib"), ".0f", fx.get("status", "-"))
            lines.append(f"| {r['model']} | {r['method']} | {trainable} | {peak} | "
                         f"{_fmt(fx.get('step_s'), '.3f')} | {_fmt(fx.get('tokens_per_s'), ',.0f')} | {big_s} | "
                         f"{_fmt(mx.get('tokens_per_s'), ',.0f')} | {_fmt(mx.get('peak_mib'), '.0f')} |")
        lora = [r for r in rows if r["method"] == "lora" and r.get("lora_rank")]
        if lora:
            lines.append("\nLoRA ranks (matched to Spectrum-25's linear parameters): "
                         + ", ".join(f"{r['model']} r={r['lora_rank']}" for r in lora) + ".")
        lines.append("`+` after a micro-batch: the search stopped at its cap or time limit, not at an out-of-memory.")
        lines.append("")
    if d.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {x}" for x in d["skipped"]] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ children


def run_child(kind: str, spec: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter; its result file survives a timeout or a crash."""
    fd, result = tempfile.mkstemp(prefix=f"gpu-bench-{kind}-", suffix=".json")
    os.close(fd)
    spec = {**spec, "result": result}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--spec", json.dumps(spec)]
    start = time.monotonic()
    status = "ok"
    proc = subprocess.Popen(cmd, env=env, stdout=None, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=max(timeout, 1))
        if proc.returncode != 0:
            status = f"failed (exit {proc.returncode})"
            say(f"{kind} child failed: {err.strip()[-1500:]}")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        status = f"timed out after {timeout:.0f} s"
        say(f"{kind} child {status}")
    try:
        out = json.loads(Path(result).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        out = {}
    Path(result).unlink(missing_ok=True)
    out.setdefault("status", status)
    if status != "ok":
        out["status"] = status
    out["process_wall_s"] = round(time.monotonic() - start, 2)
    return out


def _child_save(spec: dict, data: dict) -> None:
    tmp = spec["result"] + ".tmp"
    Path(tmp).write_text(json.dumps(data, default=str))
    os.replace(tmp, spec["result"])


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_mib(dev) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def _reserved_mib(dev) -> float | None:
    import torch

    return round(torch.cuda.max_memory_reserved(dev) / 2**20, 1) if dev.type == "cuda" else None


# ------------------------------------------------------------------------------------------ (a) scan


def _scan_shape(args) -> dict:
    if args.tiny:
        return dict(hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    vocab_size=512, num_hidden_layers=args.scan_layers)
    s = {k: v for k, v in SHAPES["8b"].items() if k not in ("scan", "label", "tie_word_embeddings")}
    return {**s, "num_hidden_layers": args.scan_layers}


def _scan_bytes(args) -> int:
    s = _scan_shape(args)
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
        shard(f"layer-{n:03d}.safetensors", {
            p + "self_attn.q_proj.weight": rand(q, h), p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i), p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    shard("head.safetensors", {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16), "lm_head.weight": rand(v, h)})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, max_position_embeddings=8192, rope_theta=500000.0)
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
    _sync(dev)
    out.update(compute_s=round(time.monotonic() - t0, 2), load_s=None, modules=len(result.ranked()),
               peak_gpu_mib=_peak_mib(dev), snr={m.name: m.snr for m in result.modules if m.ranked})
    out["wall_s"] = out["compute_s"]
    _child_save(spec, out)
    say(f"ours: {out['modules']} modules in {out['compute_s']:.1f} s")
    # accuracy: our device path and the reference's fp32 svdvals against float64 on the CPU
    ckpt = open_checkpoint(spec["path"])
    names = [n for n in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                         "model.layers.0.mlp.down_proj.weight")]
    infos = {t.name: t for t in ckpt.tensors}
    ours_err = ref_err = 0.0
    for name in names:
        w = ckpt.load(infos[name])
        exact = singular_values(w, "cpu")
        top = float(exact[0])
        ours = singular_values(w, dev)
        ref = torch.linalg.svdvals(w.to(dev, torch.float32)).double().cpu()
        ours_err = max(ours_err, float((ours - exact).abs().max()) / top)
        ref_err = max(ref_err, float((ref - exact).abs().max()) / top)
    out["accuracy"] = {"matrices": [n.removeprefix("model.layers.0.").removesuffix(".weight") for n in names],
                       "ours_max_rel": ours_err, "reference_fp32_max_rel": ref_err}
    out["status"] = "ok"
    _child_save(spec, out)
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
    model = AutoModelForCausalLM.from_pretrained(spec["path"], dtype=torch.float32, **kw)
    model.to(dev)
    _sync(dev)
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
        _child_save(spec, out)
    _sync(dev)
    out.update(compute_s=round(time.monotonic() - t1, 2), modules=n, peak_gpu_mib=_peak_mib(dev), status="ok")
    out["wall_s"] = round(out["load_s"] + out["compute_s"], 2)
    _child_save(spec, out)
    say(f"reference: {n} modules in {out['compute_s']:.1f} s after loading")


def part_scan(args, report: Report, deadline: float) -> None:
    import torch

    shape = _scan_shape(args)
    dev = torch.device(args.device)
    gb = _scan_bytes(args) / 2**30
    label = (f"{'tiny Llama' if args.tiny else 'Llama-3.1-8B shapes'}, {shape['num_hidden_layers']} decoder layers "
             f"+ embedding + lm_head, bf16, {gb:.2f} GiB")
    say(f"scan: writing {label} to {args.work}")
    t0 = time.monotonic()
    path = write_checkpoint(args.work / "scan-llama", shape, dev)
    torch.cuda.empty_cache() if dev.type == "cuda" else None
    s = {"checkpoint": label, "layers": shape["num_hidden_layers"], "gib": round(gb, 2),
         "write_s": round(time.monotonic() - t0, 1), "note": "files just written, so both methods read from page cache"}
    report.data["scan"] = s
    report.save()
    say(f"scan: written in {s['write_s']} s")
    spec = {"path": str(path), "device": args.device}
    for key, kind in (("ours", "scan-ours"), ("reference", "scan-reference")):
        left = deadline - time.monotonic()
        if left < 20:
            report.data["skipped"].append(f"scan {key}: only {left:.0f} s of the budget left")
            continue
        s[key] = run_child(kind, spec, min(args.scan_timeout_s, left))
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
        ref["per_layer_s"] = round(sum(body) / max(1, len({k.split(".layers.")[1].split(".")[0] for k in per
                                                           if ".layers." in k})), 2)
    common = [k for k in snr_o if k in snr_r and snr_o[k]]
    if common:
        s["snr_max_rel_diff"] = max(abs(snr_o[k] - snr_r[k]) / abs(snr_o[k]) for k in common)
        s["snr_compared"] = len(common)
    report.save()
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------------------ (b) training


def _model_config(key: str, tiny: bool):
    from transformers import LlamaConfig

    shape = {k: v for k, v in SHAPES[key].items() if k not in ("scan", "label")}
    if tiny:
        shape.update(TINY)
    return LlamaConfig(**shape, max_position_embeddings=8192, rope_theta=500000.0, use_cache=False)


def lora_rank_for(model, budget: int) -> tuple[int, int]:
    """The LoRA rank whose adapters on every decoder linear module come closest to ``budget`` parameters."""
    import torch

    per_rank = sum(m.in_features + m.out_features for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".layers." in n)
    r = max(1, round(budget / per_rank))
    return r, r * per_rank


def setup_method(model, method: str, scan_path: Path) -> dict:
    """Make the method's parameters trainable, as spectrum_llm.train does; returns what trains."""
    from spectrum_llm import freeze, select
    from spectrum_llm.params import count_params
    from spectrum_llm.training import TrainConfig, apply_lora, lora_kwargs, upcast_trainable

    info: dict = {}
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method.startswith("spectrum"):
        sel = select(scan_path, top_percent=float(method.removeprefix("spectrum")), model=model)
        summary = freeze(model, sel)
        info.update(selected_modules=len(sel.modules), trainable_params=summary.trainable_params)
    elif method == "lora":
        sel = select(scan_path, top_percent=25.0, model=model)
        budget = sum(ts.selected_numel for ts in sel.types.values())
        rank, size = lora_rank_for(model, budget)
        kwargs, _ = lora_kwargs(TrainConfig(method="lora", lora_rank=rank), "", model, resumed=False)
        model = apply_lora(model, kwargs)
        info.update(lora_rank=rank, lora_matched_to=budget)
    else:
        raise ValueError(method)
    upcast_trainable(model)
    trainable, total = count_params(model)
    info.setdefault("trainable_params", trainable)
    info["total_params"] = total if method != "lora" else total - trainable
    info["trainable_fraction"] = info["trainable_params"] / info["total_params"]
    return model, info


def child_train(spec: dict) -> None:
    import torch

    dev = torch.device(spec["device"])
    out: dict = {"status": "running", "model": spec["label"], "method": spec["method"]}
    cfg = _model_config(spec["model"], spec["tiny"])
    torch.manual_seed(0)
    t0 = time.monotonic()
    from transformers import LlamaForCausalLM

    with torch.device(dev):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model, info = setup_method(model, spec["method"], DATA / SHAPES[spec["model"]]["scan"])
    out.update(info)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=dev.type == "cuda", foreach=None if dev.type == "cuda" else True)
    out["build_s"] = round(time.monotonic() - t0, 2)
    seq, vocab = spec["seq_len"], cfg.vocab_size
    gen = torch.Generator(device=dev).manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    _child_save(spec, out)
    say(f"{spec['label']} {spec['method']}: {info['trainable_params'] / 1e6:,.1f}M trainable "
        f"({100 * info['trainable_fraction']:.1f}%), built in {out['build_s']} s")

    def step(batch: int) -> float:
        x = torch.randint(0, vocab, (batch, seq), device=dev, generator=gen)
        _sync(dev)
        t = time.monotonic()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
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
        st = statistics.median(times[spec["warmup"]:])
        out["fixed"] = {"micro_batch": mb, "step_s": round(st, 4), "tokens_per_s": round(mb * seq / st, 1),
                        "peak_mib": _peak_mib(dev), "peak_reserved_mib": _reserved_mib(dev),
                        "steps": len(times) - spec["warmup"]}
    _child_save(spec, out)
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
        best = {"micro_batch": b, "step_s": round(ts[-1], 4), "tokens_per_s": round(b * seq / ts[-1], 1),
                "peak_mib": _peak_mib(dev), "peak_reserved_mib": _reserved_mib(dev)}
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
        _child_save(spec, out)
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
        _child_save(spec, out)
    out["largest"] = {**best, "capped": capped, "search_s": round(time.monotonic() - t_search, 1)} if ok else \
        {"micro_batch": 0, "status": "OOM at micro-batch 1"}
    out["status"] = "ok"
    _child_save(spec, out)


def part_train(args, report: Report, deadline: float) -> None:
    for key in args.models:
        for method in args.methods:
            left = deadline - time.monotonic()
            need = args.train_min_s
            if left < need:
                report.data["skipped"].append(f"train {SHAPES[key]['label']} {method}: {left:.0f} s of the budget "
                                              f"left, {need:.0f} s needed")
                report.save()
                say(f"skipping {key} {method}: budget")
                continue
            spec = {"model": key, "label": SHAPES[key]["label"], "method": method, "device": args.device,
                    "tiny": args.tiny, "seq_len": args.seq_len, "micro_batch": args.micro_batch, "steps": args.steps,
                    "warmup": args.warmup, "max_batch": args.max_batch, "search_s": args.search_s}
            row = run_child("train", spec, min(args.train_timeout_s, left))
            row.setdefault("model", SHAPES[key]["label"])
            row.setdefault("method", method)
            report.data["train"].append(row)
            report.save()


# ------------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (seconds): checks the script")
    ap.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu (the default with --tiny)")
    ap.add_argument("--parts", default="scan,train", help="comma list of: scan, train (run in this order)")
    ap.add_argument("--work", type=Path, default=None, help="local disk for the synthetic checkpoint (default /tmp)")
    ap.add_argument("--budget-s", type=float, default=None, help="skip parts that would end after this many seconds (420; 900 with --tiny)")
    ap.add_argument("--scan-layers", type=int, default=None, help="decoder layers in the scan checkpoint (4)")
    ap.add_argument("--scan-timeout-s", type=float, default=None, help="limit for each scan process (120 s)")
    ap.add_argument("--models", default="1b,3b", help="comma list of: 1b, 3b, 8b")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (1024)")
    ap.add_argument("--micro-batch", type=int, default=None, help="the fixed micro-batch (4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps at the fixed micro-batch (3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--max-batch", type=int, default=None, help="cap of the largest-micro-batch search (64)")
    ap.add_argument("--search-s", type=float, default=None, help="time limit of each search (15 s)")
    ap.add_argument("--train-timeout-s", type=float, default=None, help="limit for each training process (75 s)")
    ap.add_argument("--train-min-s", type=float, default=None, help="budget a training process needs to start (35)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny
    defaults = dict(budget_s=900 if tiny else 420, device="cpu" if tiny else "cuda", scan_layers=2 if tiny else 4,
                    seq_len=32 if tiny else 1024,
                    micro_batch=2 if tiny else 4, steps=2 if tiny else 3, max_batch=4 if tiny else 64,
                    search_s=10 if tiny else 15, train_min_s=5 if tiny else 35,
                    scan_timeout_s=300 if tiny else 120, train_timeout_s=300 if tiny else 75)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.work = args.work or Path(tempfile.gettempdir()) / "spectrum-gpu-bench"
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, got, known in (("--parts", args.parts, ("scan", "train")), ("--models", args.models, tuple(SHAPES)),
                             ("--methods", args.methods, METHODS)):
        bad = [x for x in got if x not in known]
        if bad:
            fail(f"{name}: unknown {', '.join(bad)}; choose from {', '.join(known)}.")
    for name in ("scan_layers", "seq_len", "micro_batch", "steps", "max_batch"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1.")
    return args


def main(argv: list[str] | None = None) -> None:
    if argv is None and "--child" in sys.argv:
        i = sys.argv.index("--child")
        kind, spec = sys.argv[i + 1], json.loads(sys.argv[sys.argv.index("--spec") + 1])
        sys.path.insert(0, str(SRC))
        {"scan-ours": child_scan_ours, "scan-reference": child_scan_reference, "train": child_train}[kind](spec)
        return
    start = time.monotonic()
    args = parse(argv)
    env = preflight(args)
    deadline = start + args.budget_s
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("child", "spec", "out")}
    report = Report(args.out, settings, env)
    report.save()
    say(f"parts {', '.join(args.parts)}; budget {args.budget_s:.0f} s; results -> {args.out}")
    for part in args.parts:  # in the order given
        {"scan": part_scan, "train": part_train}[part](args, report, deadline)
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.data["total_s"] = round(time.monotonic() - start, 1)
    report.save()
    say(f"done in {report.data['total_s']} s")
    print(markdown(report.data), flush=True)


if __name__ == "__main__":
    main()
