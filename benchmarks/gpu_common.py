"""What the GPU benchmark's command (``gpu.py``) and its two measurements (``gpu_scan.py``, ``gpu_train.py``)
share: the model shapes, progress lines, device memory readings and the measurement processes.

Only the standard library at module level: the GPU machine has torch, transformers, peft and accelerate.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.benchlib import child_log, run_child

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
DATA = HERE / "data"
SCRIPT = HERE / "gpu.py"  # every measurement runs as ``gpu.py --worker SPEC --result RESULT``

# Published model shapes (config.json of each model).
SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        scan="snr_results_meta-llama-Llama-3.2-1B.json",
        label="Llama-3.2-1B",
    ),
    "3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=True,
        scan="snr_results_meta-llama-Llama-3.2-3B.json",
        label="Llama-3.2-3B",
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=False,
        scan="snr_results_meta-llama-Meta-Llama-3.1-8B.json",
        label="Llama-3.1-8B",
    ),
}
# --tiny keeps each model's layer count (so its published scan's selection applies) and shrinks the widths.
TINY: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=256
)
# the low-bit bases need bitsandbytes (spectrum-llm[quant]); without it they are skipped with a note
LOWBIT_METHODS = ("spectrum25-int8", "spectrum25-nf4", "qlora")
# toplayers25: every linear module of the top layers at Spectrum-25's budget, embeddings frozen (backward stops there)
METHODS = ("full", "spectrum25", "spectrum50", "toplayers25", "lora", *LOWBIT_METHODS)


def say(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def run_measurement(kind: str, spec: dict, work: Path, name: str, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter (``benchlib.run_child``, its progress lines shown live); its
    result file survives a timeout or a crash, and comes back with its ``status`` and ``process_wall_s``."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
    }
    out = run_child(SCRIPT, {**spec, "kind": kind}, work, name, timeout=timeout, check=False, echo=True, env=env)
    if out["status"].startswith("failed"):
        say(f"{kind} child failed: {child_log(work, name).read_text(errors='replace').strip()[-1500:]}")
    elif out["status"] != "ok":
        say(f"{kind} child {out['status']}")
    return out


def child_save(spec: dict, data: dict[str, Any]) -> None:
    """Write a measurement's result so far (atomically): what a timeout or a crash leaves."""
    tmp = spec["result"] + ".tmp"
    Path(tmp).write_text(json.dumps(data, default=str))
    os.replace(tmp, spec["result"])


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_mib(dev) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


def reserved_mib(dev) -> float | None:
    import torch

    return round(torch.cuda.max_memory_reserved(dev) / 2**20, 1) if dev.type == "cuda" else None
