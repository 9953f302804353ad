"""Scan speed and memory: spectrum-llm against the reference method, side by side in one run.

The reference method loads the whole model with transformers in fp32 and calls ``svdvals`` on every
module, as the reference tool does. Ours streams tensors from disk (``spectrum_llm.scan``). Each run is a
fresh subprocess; the parent samples its /proc status every 20 ms for peak RssAnon (memory the process
owns: mmapped file pages are not counted) and peak RSS, so the two are measured the same way.

    python benchmarks/scan.py            # default model + ~1 GB sharded fp32 Llama
    python benchmarks/scan.py --quick    # default model + ~0.25 GB model
    python benchmarks/scan.py --big-gb 16  # also a 16 GB bf16 checkpoint the reference cannot load here
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

REFERENCE_CODE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
sys.path.insert(0, {src!r})
from spectrum_llm.estimators import reference_snr
path, gguf = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
kw = dict(gguf_file=gguf) if gguf else {{}}
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
n = 0
for name, mod in model.named_modules():
    if isinstance(mod, torch.nn.Linear) or isinstance(mod, torch.nn.Embedding):
        w = mod.weight.detach()
        s = torch.linalg.svdvals(w)
        reference_snr(s, *w.shape)
        n += 1
print("modules", n)
"""

OURS_CODE = r"""
import sys
sys.path.insert(0, {src!r})
import spectrum_llm
r = spectrum_llm.scan(sys.argv[1], estimator="reference")
print("modules", len(r.ranked()))
"""


def measure(code: str, args: list[str]) -> dict:
    """Run code in a fresh interpreter; return wall time, peak RssAnon and peak RSS (MiB)."""
    src = str(HERE.parent / "src")
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code.format(src=src), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak_anon = peak_rss = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        peak_anon = max(peak_anon, int(fields.get("RssAnon", "0 kB").split()[0]))
        peak_rss = max(peak_rss, int(fields.get("VmRSS", "0 kB").split()[0]))
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{err[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_anon_mib": round(peak_anon / 1024, 1),
            "peak_rss_mib": round(peak_rss / 1024, 1), "modules": int(out.split()[-1])}


def synthetic_llama(path: Path, layers: int, hidden: int, intermediate: int, vocab: int, dtype: str) -> Path:
    """A random Llama in fp32 or bf16, sharded at 200 MB, written once and reused."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                      tie_word_embeddings=False)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path, max_shard_size="200MB")
    return path


def big_checkpoint(path: Path, gb: float) -> Path:
    """Many GB of bf16 [256, 65536] matrices in 2 GB shards: cheap to score, too big to load in fp32 here."""
    import torch
    from safetensors.torch import save_file

    per = 256 * 65536 * 2
    count = int(gb * 2**30 // per)
    if (path / "model.safetensors.index.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    weight_map, shard, shard_id, size = {}, {}, 0, 0
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        shard[name] = torch.randn(256, 65536, generator=g, dtype=torch.float32).to(torch.bfloat16)
        size += per
        if size >= 2 * 2**30 or i == count - 1:
            fname = f"model-{shard_id:05d}.safetensors"
            save_file(shard, path / fname)
            weight_map.update({k: fname for k in shard})
            shard, shard_id, size = {}, shard_id + 1, 0
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def default_model() -> tuple[str, str | None]:
    from spectrum_llm.checkpoint import resolve

    gguf = resolve("builtin:smollm2-135m")
    return str(gguf.parent), gguf.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller synthetic model (a few minutes in all)")
    ap.add_argument("--big-gb", type=float, default=0, help="also scan a synthetic bf16 checkpoint of this size")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "spectrum-bench")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))

    rows = []
    folder, gguf = default_model()
    rows.append(("SmolLM2-135M (GGUF Q4_1)", measure(REFERENCE_CODE, [folder, gguf]),
                 measure(OURS_CODE, [str(Path(folder) / gguf)])))
    shape = (8, 768, 2048, 32000) if args.quick else (16, 1024, 2816, 32000)
    for dtype in ("float32", "bfloat16"):
        llama = synthetic_llama(args.work / f"llama-{'x'.join(map(str, shape))}-{dtype}", *shape, dtype)
        size_gb = sum(f.stat().st_size for f in llama.glob("*.safetensors")) / 2**30
        label = f"Llama {shape[0]}L h{shape[1]} {dict(float32='fp32', bfloat16='bf16')[dtype]}, {size_gb:.2f} GB sharded"
        rows.append((label, measure(REFERENCE_CODE, [str(llama)]), measure(OURS_CODE, [str(llama)])))
    big = None
    if args.big_gb:
        path = big_checkpoint(args.work / f"big-{args.big_gb:g}gb", args.big_gb)
        gb = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30
        big = (f"synthetic {gb:.1f} GB bf16 (reference needs {2 * gb:.0f} GB fp32)", measure(OURS_CODE, [str(path)]))

    header = f"{'checkpoint':48} {'method':10} {'wall s':>8} {'RssAnon MiB':>12} {'RSS MiB':>9}"
    print(header)
    print("-" * len(header))
    report = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "runs": []}
    for label, ref, ours in rows:
        for method, r in (("reference", ref), ("ours", ours)):
            print(f"{label:48} {method:10} {r['wall_s']:8.1f} {r['peak_anon_mib']:12.0f} {r['peak_rss_mib']:9.0f}")
        speed, mem = ref["wall_s"] / ours["wall_s"], ref["peak_anon_mib"] / max(ours["peak_anon_mib"], 1)
        print(f"{'':48} {'ratio':10} {speed:7.1f}x faster, {mem:.1f}x less anonymous memory")
        report["runs"].append({"checkpoint": label, "reference": ref, "ours": ours,
                               "speedup": round(speed, 2), "memory_ratio": round(mem, 2)})
    if big:
        label, r = big
        print(f"{label:48} {'ours':10} {r['wall_s']:8.1f} {r['peak_anon_mib']:12.0f} {r['peak_rss_mib']:9.0f}")
        report["runs"].append({"checkpoint": label, "reference": None, "ours": r})
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("scan-quick.json" if args.quick else "scan.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
