"""Memory of scanning an fp8 checkpoint: peak anonymous memory against its largest dequantized tensor.

A synthetic DeepSeek-layout checkpoint (float8_e4m3fn weights, float32 ``weight_scale_inv`` per 128x128
block): Llama-3-8B layers at full size (q/o 4096 x 4096, k/v 1024 x 4096, gate/up 14336 x 4096, down
4096 x 14336), whose largest dequantized tensor is a 14336 x 4096 float32 matrix (224 MiB), then wide
256 x 65536 fp8 matrices (cheap to score, as in benchmarks/scan.py's 16 GB checkpoint) until the files pass
1 GB. The first layer is also written in bf16 and scanned the same way, at the same time in a second process:
peak memory depends on the largest tensor, not on how many there are. Each scan is a fresh process; the parent samples
its /proc status every 20 ms for peak RssAnon (memory it owns; memory-mapped file pages are not counted), as
benchmarks/scan.py does.

    python benchmarks/quantized_memory.py              # 1 full layer + 51 wide matrices: 1.07 GB of fp8
    python benchmarks/quantized_memory.py --layers 5   # 5 full layers (1.1 GB), about 4x the compute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(HERE.parent))

from benchmarks.scan import measure  # noqa: E402

SCAN_CODE = r"""
import sys
sys.path.insert(0, {src!r})
import spectrum_llm
r = spectrum_llm.scan(sys.argv[1])
print("modules", len(r.ranked()))
"""

SHAPES = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (1024, 4096),
    "self_attn.v_proj": (1024, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (14336, 4096),
    "mlp.up_proj": (14336, 4096),
    "mlp.down_proj": (4096, 14336),
}
LAYER_BYTES = sum(m * n for m, n in SHAPES.values())  # one byte per fp8 value


def build(work: Path, layers: int) -> tuple[Path, Path]:
    """The fp8 checkpoint (one shard per layer) and the same weights in bf16, written once and reused."""
    import torch
    from safetensors.torch import save_file

    from benchmarks.quantizers import fp8_block_quantize

    wide = max(0, -(-(2**30 - layers * LAYER_BYTES) // (256 * 65536)))
    fp8, bf16 = work / f"fp8-llama8b-{layers}L-{wide}w", work / "bf16-llama8b-1L"
    if (fp8 / "model.safetensors.index.json").exists() and (bf16 / "model.safetensors.index.json").exists():
        return fp8, bf16
    cfg = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    }
    maps: dict[Path, dict[str, str]] = {fp8: {}, bf16: {}}
    for p in maps:
        p.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for layer in range(layers):
        q_shard, b_shard = {}, {}
        for name, shape in SHAPES.items():
            key = f"model.layers.{layer}.{name}.weight"
            w = torch.randn(*shape, generator=g) * 0.02
            q, s = fp8_block_quantize(w)
            q_shard[key], q_shard[key + "_scale_inv"] = q, s
            b_shard[key] = w.to(torch.bfloat16)
        if layer == layers - 1:
            for i in range(wide):
                key = f"model.layers.{layers + i}.mlp.up_proj.weight"
                q_shard[key], q_shard[key + "_scale_inv"] = fp8_block_quantize(torch.randn(256, 65536, generator=g))
        fname = f"model-{layer:05d}.safetensors"
        save_file(q_shard, fp8 / fname)
        maps[fp8].update({k: fname for k in q_shard})
        if layer == 0:
            save_file(b_shard, bf16 / fname)
            maps[bf16].update({k: fname for k in b_shard})
    for p, wm in maps.items():
        extra = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}} if p == fp8 else {}
        (p / "config.json").write_text(json.dumps({**cfg, **extra}))
        (p / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    return fp8, bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=1, help="full-size Llama-3-8B layers (then wide matrices to 1 GB)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "spectrum-bench")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "quantized-memory.json")
    args = ap.parse_args()
    start = time.monotonic()
    fp8, bf16 = build(args.work, args.layers)
    print(f"checkpoints ready in {time.monotonic() - start:.0f} s", flush=True)
    largest = max(m * n for m, n in SHAPES.values()) * 4 / 2**20
    runs = ((f"fp8 block 128x128, {args.layers}L + wide", fp8), ("bf16, the same layer 0", bf16))
    with ThreadPoolExecutor(len(runs)) as pool:  # two processes side by side; each is sampled on its own
        results = list(pool.map(lambda run: measure(SCAN_CODE, [str(run[1])]), runs))
    rows = []
    for (label, path), r in zip(runs, results):
        gb = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**30
        rows.append({"checkpoint": label, "size_gb": round(gb, 2), **r})
        print(
            f"{label:30} {gb:5.2f} GB  wall {r['wall_s']:7.1f} s  peak RssAnon {r['peak_anon_mib']:7.0f} MiB  "
            f"peak RSS {r['peak_rss_mib']:7.0f} MiB  modules {r['modules']}",
            flush=True,
        )
    print(f"largest dequantized tensor: 14336 x 4096 float32 = {largest:.0f} MiB; twice that: {2 * largest:.0f} MiB")
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "layers": args.layers,
        "largest_dequantized_mib": largest,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
