"""Scan speed and memory: spectrum-llm against the reference method, side by side in one run.

The reference method loads the whole model with transformers in fp32 and calls ``svdvals`` on every
module, as the reference tool does. Ours streams tensors from disk (``spectrum_llm.scan``). Each run is a
fresh subprocess; the parent samples its /proc status every 20 ms for peak RssAnon (memory the process
owns: mmapped file pages are not counted) and peak RSS, so the two are measured the same way.

Each checkpoint is also measured against this machine's own limit, in the same run: the float64 and float32
matrix-product rates (a 2048 x 2048 GEMM), the read rate of the checkpoint's files and the eigensolver's rate
at each matrix size the checkpoint has. The floor is bytes / read rate + (Gram + eigensolver FLOPs) / float64
GEMM rate, with 2 m^2 n FLOPs for the Gram of an m x n matrix (m <= n) and 4/3 m^3 for the eigenvalues (the
tridiagonal reduction); the "LAPACK floor" replaces the eigensolver term by the time eigvalsh really takes at
those sizes here. Our scan time is the in-process time of ``spectrum_llm.scan``.

    python benchmarks/scan.py            # default model + ~1 GB sharded fp32 Llama
    python benchmarks/scan.py --quick    # default model + ~0.25 GB model
    python benchmarks/scan.py --big-gb 16  # also a 16 GB bf16 checkpoint the reference cannot load here
    python benchmarks/scan.py --skip-reference   # ours against the floor only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
import sys, time
sys.path.insert(0, {src!r})
import spectrum_llm
t = time.perf_counter()
r = spectrum_llm.scan(sys.argv[1], estimator="reference")
print("scan_s", time.perf_counter() - t)
print("modules", len(r.ranked()))
"""

BASELINE_CODE = r"""
import sys
sys.path.insert(0, {src!r})
import torch, numpy, spectrum_llm.scanning, spectrum_llm.checkpoint
try:
    import gguf
except ImportError:
    pass
print("modules", 0)
"""

RATES_CODE = r"""
import json, sys, time, torch
sys.path.insert(0, {src!r})
sizes = json.loads(sys.argv[1])

def best(f, reps=3):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return min(times)

out = {{"threads": torch.get_num_threads()}}
for name, dt in (("f64", torch.float64), ("f32", torch.float32)):
    a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
    out["gemm_" + name + "_gflops"] = 2 * 2048**3 / best(lambda: a @ b) / 1e9
from spectrum_llm.spectra import singular_values_from_gram
eig = {{}}
for m in sizes:
    w = torch.randn(m, 2 * m, dtype=torch.float64)
    g = w @ w.T
    eig[str(m)] = best(lambda: singular_values_from_gram(g), reps=2)
out["eigvalsh_s"] = eig
print(json.dumps(out))
print("modules", 0)
"""


def measure(code: str, args: list[str]) -> dict:
    """Run code in a fresh interpreter; return wall time, peak RssAnon and peak RSS (MiB)."""
    src = str(HERE.parent / "src")
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", code.format(src=src), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
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
    r = {
        "wall_s": round(wall, 2),
        "peak_anon_mib": round(peak_anon / 1024, 1),
        "peak_rss_mib": round(peak_rss / 1024, 1),
        "modules": int(out.split()[-1]),
    }
    for line in out.splitlines():
        if line.startswith("scan_s "):
            r["scan_s"] = round(float(line.split()[1]), 2)
        elif line.startswith("{"):
            r["data"] = json.loads(line)
    return r


def read_rate(files: list[Path], passes: int = 2) -> float:
    """Bytes per second reading the files in 64 MiB pieces (the page cache, when they were just written)."""
    buf = bytearray(64 * 2**20)
    view = memoryview(buf)
    best = math.inf
    for _ in range(passes):
        t = time.perf_counter()
        total = 0
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
        dt = time.perf_counter() - t
        best = min(best, dt)
    return total / best


def matrices(path: str) -> tuple[list[Path], list[tuple[int, int]]]:
    """A checkpoint's weight files and the (m, n) of every matrix the scan decomposes, m <= n."""
    from spectrum_llm.checkpoint import open_checkpoint
    from spectrum_llm.naming import fused_parts
    from spectrum_llm.scanning import readable

    ckpt = open_checkpoint(path)
    mats: list[tuple[int, ...]] = []
    for t in ckpt.tensors:
        if not readable(t) or len(t.shape) not in (2, 3):
            continue
        shape = tuple(t.shape[-2:])
        mats += [tuple(sorted(shape))] * (t.shape[0] if len(t.shape) == 3 else 1)
        for _, dim, a, b in fused_parts(t.name, t.shape, ckpt.config):
            part = (b - a, shape[1]) if dim == 0 else (shape[0], b - a)
            mats.append(tuple(sorted(part)))
    return ckpt.files, [(m[0], m[1]) for m in mats if m[0] >= 2]


def floor(path: str, rates: dict, read_bps: float) -> dict:
    """The time this machine needs at least: read every byte, then the Gram and eigensolver FLOPs at GEMM speed."""
    files, mats = matrices(path)
    size = sum(f.stat().st_size for f in files)
    gram = sum(2.0 * m * m * n for m, n in mats)
    eig = sum(4.0 / 3.0 * m**3 for m, _ in mats)
    gemm = rates["gemm_f64_gflops"] * 1e9
    eig_measured = sum(rates["eigvalsh_s"][str(m)] for m, _ in mats)
    return {
        "bytes": size,
        "matrices": len(mats),
        "read_s": round(size / read_bps, 2),
        "gram_s": round(gram / gemm, 2),
        "eig_s": round(eig / gemm, 2),
        "floor_s": round(size / read_bps + (gram + eig) / gemm, 2),
        "eig_lapack_s": round(eig_measured, 2),
        "lapack_floor_s": round(size / read_bps + gram / gemm + eig_measured, 2),
    }


def largest_float32_mib(path: str) -> float:
    from spectrum_llm.checkpoint import open_checkpoint

    ckpt = open_checkpoint(path)
    return max(4 * math.prod(t.shape) for t in ckpt.tensors) / 2**20


def synthetic_llama(path: Path, layers: int, hidden: int, intermediate: int, vocab: int, dtype: str) -> Path:
    """A random Llama in fp32 or bf16, sharded at 200 MB, written once and reused."""
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 128,
        tie_word_embeddings=False,
    )
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


def default_model() -> tuple[str, str]:
    from spectrum_llm.checkpoint import resolve

    gguf = resolve("builtin:smollm2-135m")
    return str(gguf.parent), gguf.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller synthetic model (a few minutes in all)")
    ap.add_argument("--big-gb", type=float, default=0, help="also scan a synthetic bf16 checkpoint of this size")
    ap.add_argument("--skip-reference", action="store_true", help="only our scan against the machine's floor")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "spectrum-bench")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))

    folder, gguf = default_model()
    checkpoints: list[tuple[str, str, list[str] | None]] = [
        ("SmolLM2-135M (GGUF Q4_1)", str(Path(folder) / gguf), [folder, gguf])
    ]
    shape = (8, 768, 2048, 32000) if args.quick else (16, 1024, 2816, 32000)
    for dtype in ("float32", "bfloat16"):
        llama = synthetic_llama(args.work / f"llama-{'x'.join(map(str, shape))}-{dtype}", *shape, dtype)
        size_gb = sum(f.stat().st_size for f in llama.glob("*.safetensors")) / 2**30
        label = (
            f"Llama {shape[0]}L h{shape[1]} {dict(float32='fp32', bfloat16='bf16')[dtype]}, {size_gb:.2f} GB sharded"
        )
        checkpoints.append((label, str(llama), [str(llama)]))
    if args.big_gb:
        big = big_checkpoint(args.work / f"big-{args.big_gb:g}gb", args.big_gb)
        gb = sum(f.stat().st_size for f in big.glob("*.safetensors")) / 2**30
        checkpoints.append((f"synthetic {gb:.1f} GB bf16 (reference needs {2 * gb:.0f} GB fp32)", str(big), None))

    sizes = sorted({m for _, path, _ in checkpoints for m, _ in matrices(path)[1]})
    rates = measure(RATES_CODE, [json.dumps(sizes)])["data"]
    baseline = measure(BASELINE_CODE, [])
    print(
        f"machine: {rates['threads']} threads, GEMM float64 {rates['gemm_f64_gflops']:.1f} GFLOP/s, float32 "
        f"{rates['gemm_f32_gflops']:.1f} GFLOP/s; an idle process with torch imported holds "
        f"{baseline['peak_anon_mib']:.0f} MiB anonymous memory",
        flush=True,
    )

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "rates": rates,
            "baseline_anon_mib": baseline["peak_anon_mib"],
        },
        "runs": [],
    }
    for label, path, ref_args in checkpoints:
        ref = measure(REFERENCE_CODE, ref_args) if ref_args and not args.skip_reference else None
        bps = read_rate(matrices(path)[0])
        ours = measure(OURS_CODE, [path])
        fl = floor(path, rates, bps)
        run = {
            "checkpoint": label,
            "reference": ref,
            "ours": ours,
            "floor": fl,
            "read_gbps": round(bps / 1e9, 2),
            "times_floor": round(ours["scan_s"] / fl["floor_s"], 2),
            "times_lapack_floor": round(ours["scan_s"] / fl["lapack_floor_s"], 2),
            "own_anon_mib": round(ours["peak_anon_mib"] - baseline["peak_anon_mib"], 1),
            "largest_float32_mib": round(largest_float32_mib(path), 1),
        }
        if ref:
            run["speedup"] = round(ref["wall_s"] / ours["wall_s"], 2)
            run["memory_ratio"] = round(ref["peak_anon_mib"] / max(ours["peak_anon_mib"], 1), 2)
        report["runs"].append(run)
        print(
            f"{label}: ours {ours['scan_s']:.1f} s, floor {fl['floor_s']:.1f} s ({run['times_floor']:.2f}x), "
            f"LAPACK floor {fl['lapack_floor_s']:.1f} s ({run['times_lapack_floor']:.2f}x)",
            flush=True,
        )

    header = f"{'checkpoint':48} {'method':10} {'wall s':>8} {'RssAnon MiB':>12} {'RSS MiB':>9}"
    print("\n" + header)
    print("-" * len(header))
    for r in report["runs"]:
        for method in ("reference", "ours"):
            m = r[method]
            if m:
                print(
                    f"{r['checkpoint']:48} {method:10} {m['wall_s']:8.1f} {m['peak_anon_mib']:12.0f} "
                    f"{m['peak_rss_mib']:9.0f}"
                )
        if r.get("speedup"):
            print(f"{'':48} {'ratio':10} {r['speedup']:7.1f}x faster, {r['memory_ratio']:.1f}x less anonymous memory")
    header = (
        f"{'checkpoint':48} {'GB':>6} {'read s':>7} {'Gram s':>7} {'eig s':>6} {'floor s':>8} "
        f"{'LAPACK eig s':>13} {'ours s':>7} {'x floor':>8} {'x LAPACK floor':>15}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in report["runs"]:
        f = r["floor"]
        print(
            f"{r['checkpoint']:48} {f['bytes'] / 1e9:6.2f} {f['read_s']:7.2f} {f['gram_s']:7.2f} {f['eig_s']:6.2f} "
            f"{f['floor_s']:8.2f} {f['eig_lapack_s']:13.2f} {r['ours']['scan_s']:7.1f} {r['times_floor']:8.2f} "
            f"{r['times_lapack_floor']:15.2f}"
        )
    print("\nanonymous memory of our scan above an idle process with torch imported:")
    for r in report["runs"]:
        print(
            f"  {r['checkpoint']:48} {r['own_anon_mib']:7.0f} MiB = {r['own_anon_mib'] / r['largest_float32_mib']:.2f}"
            f" x its largest tensor in float32 ({r['largest_float32_mib']:.0f} MiB)"
        )
    RESULTS.mkdir(exist_ok=True)
    name = "scan-quick" if args.quick else "scan"
    out = RESULTS / (name + ("-floor.json" if args.skip_reference else ".json"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
