"""What fp8 and MXFP4 rounding do to the scores, measured.

1. Planted signal: W = 0.02 * N(0, 1) [1024 x 2816] plus a rank-8 spike whose singular values are theta times
   the Marchenko-Pastur edge 0.02 (sqrt(m) + sqrt(n)), for theta from just above detection to strong, and
   pure noise (theta = 0). Each W is quantized to bf16, fp8 block 128x128 (DeepSeek layout), fp8 per-channel
   (compressed-tensors) and MXFP4 (gpt-oss, blocks of 32 along the input), dequantized as a scan reads it,
   and scored: rank found (true 8) and score drift against the unquantized fp32 scan, both estimators.
2. Real weights: every linear weight of SmolLM2-135M (the packaged default model, its Q4_1 values taken
   as the float weights) quantized the same way; per type, how the ranking and the top-50% selection move.

    python benchmarks/quantization_noise.py                # about 5 minutes on 2 cores
    python benchmarks/quantization_noise.py --only smollm2 # one part; the other's saved results are kept
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
if __package__ in (None, ""):  # run as a file: the repository root on the path, for the benchmarks package
    sys.path.insert(0, str(HERE.parent))

from benchmarks.quantizers import fp8_block_quantize, fp8_channel_quantize, mxfp4_quantize, plant  # noqa: E402
from spectrum_llm.errors import SpectrumError  # noqa: E402
from spectrum_llm.estimators import score  # noqa: E402
from spectrum_llm.quantized import dequantize_fp8, dequantize_mxfp4  # noqa: E402
from spectrum_llm.spectra import singular_values  # noqa: E402


def as_bf16(w):
    return w.to(torch.bfloat16).float()


def as_fp8_block(w):
    q, s = fp8_block_quantize(w)
    return dequantize_fp8(q, s, (128, 128))


def as_fp8_channel(w):
    q, s = fp8_channel_quantize(w, scale_dtype=torch.float32)
    return dequantize_fp8(q, s, (1, w.shape[1]))


def as_mxfp4(w):
    blocks, scales = mxfp4_quantize(w.T[None])  # gpt-oss groups 32 consecutive input features
    return dequantize_mxfp4(blocks, scales)[0].T


FORMATS = {"bf16": as_bf16, "fp8 block 128x128": as_fp8_block, "fp8 per-channel": as_fp8_channel, "mxfp4": as_mxfp4}


def scores(w):
    s = singular_values(w)
    m, n = w.shape
    return {e: score(s, m, n, e) for e in ("mp", "reference")}


def planted(thetas=(0.0, 0.6, 1.0, 2.0, 8.0), seeds=(0, 1, 2), shape=(1024, 2816), rank=8) -> list[dict]:
    rows = []
    for theta in thetas:
        acc: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            w = (
                plant(shape, rank=rank, strength=theta, seed=seed)
                if theta
                else plant(shape, rank=1, strength=0, seed=seed)
            )
            base = scores(w)
            for fmt, fn in {"fp32": lambda x: x, **FORMATS}.items():
                wq = fn(w)
                sc = base if fmt == "fp32" else scores(wq)
                a = acc.setdefault(fmt, {})
                a.setdefault("rank", []).append(sc["mp"].signal_rank)
                a.setdefault("err", []).append(float((wq - w).norm() / w.norm()))
                a.setdefault("sigma", []).append(sc["mp"].sigma / base["mp"].sigma - 1)
                for est in ("mp", "reference"):
                    a.setdefault(est, []).append(sc[est].snr / base[est].snr - 1 if base[est].snr else 0.0)
        for fmt, a in acc.items():
            rows.append(
                {
                    "theta": theta,
                    "format": fmt,
                    **{k: sum(v) / len(v) for k, v in a.items()},
                    "rank_min": min(a["rank"]),
                    "rank_max": max(a["rank"]),
                }
            )
            print(
                f"theta {theta:4} {fmt:18} rank {rows[-1]['rank']:5.2f}  weight err {rows[-1]['err']:.4f}  "
                f"sigma {100 * rows[-1]['sigma']:+6.2f}%  mp {100 * rows[-1]['mp']:+7.2f}%  "
                f"reference {100 * rows[-1]['reference']:+7.2f}%",
                flush=True,
            )
    return rows


def _spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _top(xs: list[float], k: int) -> set[int]:
    """Indices of the ``k`` largest values."""
    return set(sorted(range(len(xs)), key=lambda i: -xs[i])[:k])


def real_model() -> list[dict]:
    from spectrum_llm.checkpoint import open_checkpoint
    from spectrum_llm.naming import parse

    ckpt = open_checkpoint("builtin:smollm2-135m")
    mats = [
        (t, parse(t.name).type)
        for t in ckpt.tensors
        if len(t.shape) == 2 and parse(t.name).kind == "linear" and parse(t.name).layer is not None
    ]
    per: dict[str, dict[str, dict[str, list[float]]]] = {}
    for info, type_ in mats:
        w = ckpt.load(info).float()
        base = scores(w)
        for fmt, fn in {"fp32": lambda x: x, **FORMATS}.items():
            sc = base if fmt == "fp32" else scores(fn(w))
            d = per.setdefault(fmt, {}).setdefault(type_, {"mp": [], "reference": []})
            for est in ("mp", "reference"):
                d[est].append(sc[est].snr)
    rows: list[dict[str, Any]] = []
    for fmt in FORMATS:
        for est in ("mp", "reference"):
            rho: list[float] = []
            overlap: list[float] = []
            drift: list[tuple[float, float]] = []  # (relative change, fp32 score)
            for type_, d in per[fmt].items():
                a, b = per["fp32"][type_][est], d[est]
                rho.append(_spearman(a, b))
                k = max(1, len(a) // 2)
                overlap.append(len(_top(a, k) & _top(b, k)) / k)
                drift.extend((y / x - 1, x) for x, y in zip(a, b) if x)  # mp scores 0 when nothing clears the edge
            rows.append(
                {
                    "format": fmt,
                    "estimator": est,
                    "spearman_min": min(rho),
                    "spearman_mean": sum(rho) / len(rho),
                    "top50_overlap_min": min(overlap),
                    "top50_overlap_mean": sum(overlap) / len(overlap),
                    "drift_mean": sum(d for d, _ in drift) / len(drift),
                    "drift_max": max(drift, key=lambda d: abs(d[0]))[0],
                    "drift_max_fp32_score": max(drift, key=lambda d: abs(d[0]))[1],
                    "drift_max_above_median": max(
                        abs(d) for d, x in drift if x >= sorted(x for _, x in drift)[len(drift) // 2]
                    ),
                }
            )
            r = rows[-1]
            print(
                f"SmolLM2 {fmt:18} {est:9} spearman min {r['spearman_min']:.3f} mean {r['spearman_mean']:.3f}  "
                f"top-50% overlap min {r['top50_overlap_min']:.2f} mean {r['top50_overlap_mean']:.3f}  "
                f"score drift mean {100 * r['drift_mean']:+.1f}% max {100 * r['drift_max']:+.1f}% (at fp32 score "
                f"{r['drift_max_fp32_score']:.3g}), max |drift| over the upper half of scores "
                f"{100 * r['drift_max_above_median']:.1f}%",
                flush=True,
            )
    return rows


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["planted", "smollm2"], help="run one part, keep the other's saved results")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = HERE / "results" / "quantization-noise.json"
    report = json.loads(out.read_text()) if args.only and out.exists() else {}
    report["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    if args.only != "smollm2":
        report["planted"] = planted()
    if args.only != "planted":
        try:
            report["smollm2"] = real_model()
        except SpectrumError as e:  # the packaged model is optional
            print(f"SmolLM2 part skipped: {e}")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
