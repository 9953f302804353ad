"""Scan a checkpoint: every weight matrix -> singular values -> one SNR score.

One tensor is in memory at a time (the next one is read while the current one is decomposed). Each
finished tensor is appended to a journal beside the output, so a killed scan resumes where it stopped;
the final JSON is written atomically and a repeated scan of an unchanged checkpoint returns it at once.
Under ``torchrun`` every rank scans its share and rank 0 writes the merged result.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import torch

from . import __version__
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .errors import SpectrumError
from .estimators import ESTIMATORS, score, unscorable
from .naming import is_quantization_aux, parse
from .results import ModuleScore, ScanResult
from .spectra import resolve_device, singular_values

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "FLOAT64", "FLOAT32", "FLOAT16", "BFLOAT16"}
_GGUF_DEQUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                       "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS")


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def fused_parts(name: str, shape: tuple[int, ...], config: dict) -> list[tuple[str, int, int, int]]:
    """(part, dim, start, stop) of each projection packed into a fused tensor, where the config says how.

    Linear weights are [out, in], so parts are row ranges; GPT-2's Conv1D ``c_attn`` is stored [in, out],
    so its parts are column ranges.
    """
    if len(shape) != 2 or not name.endswith(".weight"):
        return []
    leaf = name[: -len(".weight")].rsplit(".", 1)[-1]
    heads = config.get("num_attention_heads") or config.get("n_head")
    hidden = config.get("hidden_size") or config.get("n_embd")
    parts: list[tuple[str, int, int, int]] = []
    if leaf == "qkv_proj" and heads and hidden:
        kv = config.get("num_key_value_heads") or heads
        hd = config.get("head_dim") or hidden // heads
        q, k = heads * hd, kv * hd
        parts = [("q", 0, 0, q), ("k", 0, q, q + k), ("v", 0, q + k, q + 2 * k)]
    elif leaf == "W_pack" and hidden:
        parts = [(p, 0, i * hidden, (i + 1) * hidden) for i, p in enumerate("qkv")]
    elif leaf == "c_attn" and hidden:
        parts = [(p, 1, i * hidden, (i + 1) * hidden) for i, p in enumerate("qkv")]
    elif leaf == "gate_up_proj" and config.get("intermediate_size"):
        i = config["intermediate_size"]
        parts = [("gate", 0, 0, i), ("up", 0, i, 2 * i)]
    if parts and parts[-1][3] != shape[parts[-1][1]]:
        return []
    return parts


def _readable(info: TensorInfo) -> bool:
    """Float weights, or GGUF blocks that dequantize exactly to what llama.cpp computes with."""
    return not is_quantization_aux(info.name) and (info.dtype.upper() in _FLOAT_DTYPES
                                                   or info.dtype in _GGUF_DEQUANTIZABLE)


def _skip(info: TensorInfo, reason: str) -> list[ModuleScore]:
    p = parse(info.name, len(info.shape))
    return [ModuleScore(p.module, p.type, p.layer, list(info.shape), None, p.kind, info.name, p.expert,
                        numel=_numel(info.shape), skipped=reason)]


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _score_matrix(w: torch.Tensor, estimator: str, device, method: str) -> tuple[float | None, dict, str | None]:
    m, n = w.shape
    if min(m, n) < 2:
        return None, {}, f"{m}x{n} matrix: too few singular values for a noise estimate"
    s = singular_values(w, device, method)
    why = unscorable(s, m, n, estimator)
    if why:
        return None, {}, why
    sc = score(s, m, n, estimator)
    return sc.snr, sc.stats(), None


def score_tensor(info: TensorInfo, w: torch.Tensor | None, estimator: str, config: dict,
                 device: str = "cpu", method: str = "auto") -> list[ModuleScore]:
    """All module scores one checkpoint tensor yields: one matrix, one per expert, plus fused parts."""
    if not _readable(info):
        return _skip(info, f"quantized or integer tensor ({info.dtype}): its values cannot be read exactly. "
                           "Scan the unquantized (bf16/fp16/fp32) checkpoint of this model.")
    if len(info.shape) <= 1:
        return _skip(info, "1-D weight (norm or bias): not ranked")
    assert w is not None
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        return _skip(info, f"{bad} NaN/Inf values inside the weight: the checkpoint is damaged; "
                           "re-download or re-convert it")
    p = parse(info.name, len(info.shape))
    if len(info.shape) == 3:
        out = []
        base, leaf = p.module.rsplit(".", 1)
        for e in range(info.shape[0]):
            snr, stats, why = _score_matrix(w[e], estimator, device, method)
            out.append(ModuleScore(f"{base}.{e}.{leaf}", p.type, p.layer, list(info.shape[1:]), snr, p.kind,
                                   info.name, e, rows=[e, e + 1], numel=_numel(info.shape[1:]), skipped=why,
                                   stats=stats))
        return out
    if len(info.shape) > 3:
        return _skip(info, f"{len(info.shape)}-D tensor: not a weight matrix")
    snr, stats, why = _score_matrix(w, estimator, device, method)
    out = [ModuleScore(p.module, p.type, p.layer, list(info.shape), snr, p.kind, info.name, p.expert,
                       numel=_numel(info.shape), skipped=why, stats=stats)]
    for part, dim, a, b in fused_parts(info.name, info.shape, config):
        piece = w[a:b] if dim == 0 else w[:, a:b]
        snr, stats, why = _score_matrix(piece, estimator, device, method)
        out.append(ModuleScore(f"{p.module}.{part}", f"{p.type}.{part}", p.layer, list(piece.shape), snr, p.kind,
                               info.name, p.expert, part=part, rows=[a, b], dim=dim, numel=piece.numel(),
                               skipped=why, stats=stats))
    return out


class _Journal:
    """Append-only record of finished tensors, so an interrupted scan loses at most the tensor in flight."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header

    def load(self) -> dict[str, list[dict]]:
        if not self.path.is_file():
            return {}
        done: dict[str, list[dict]] = {}
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        try:
            if not lines or json.loads(lines[0]) != self.header:
                return {}
        except json.JSONDecodeError:
            return {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written when the scan stopped
            done[rec["param"]] = rec["modules"]
        return done

    def start(self, done: dict) -> None:
        if not done:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header) + "\n", encoding="utf-8")

    def append(self, param: str, modules: list[ModuleScore]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"param": param, "modules": [m.to_json() for m in modules]}, allow_nan=False) + "\n")
            f.flush()


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _cost(t: TensorInfo) -> int:
    """Work to score a tensor: the Gram product costs about numel * min(rows, cols)."""
    return _numel(t.shape) * (min(t.shape[-2:]) if len(t.shape) > 1 else 1)


def _share(tensors: list[TensorInfo], rank: int, world: int) -> list[TensorInfo]:
    """Costliest tensors first, each to the rank with the least work so far."""
    load = [0] * world
    mine = []
    for t in sorted(tensors, key=_cost, reverse=True):
        r = load.index(min(load))
        load[r] += _cost(t)
        if r == rank:
            mine.append(t)
    return mine


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]scan"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"),
                    TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("left"),
                    TimeRemainingColumn(), disable=not enabled)


def scan(model: str | os.PathLike | torch.nn.Module, *, output: str | os.PathLike | None = None,
         estimator: str = "mp", device: str = "cpu", modules: str | None = None,
         reference_json: str | os.PathLike | None = None, resume: bool = True, progress: bool = False,
         method: str = "auto") -> ScanResult:
    """Score every weight matrix of a checkpoint (folder, file, hub id in the cache) or an in-memory model.

    Returns the ScanResult and, with ``output``, writes it as JSON. ``modules`` is a regex on tensor names;
    ``reference_json`` is a folder that also gets the reference tool's flat ``snr_results_<slug>.json``.
    """
    if estimator not in ESTIMATORS:
        raise SpectrumError(f"Unknown estimator {estimator!r}. Use one of: {', '.join(ESTIMATORS)}.")
    resolve_device(device)
    try:
        pattern = re.compile(modules) if modules else None
    except re.error as e:
        raise SpectrumError(f"--modules {modules!r} is not a valid regular expression ({e}).") from None
    if isinstance(model, torch.nn.Module):
        return _scan_module(model, estimator, device, pattern, method, output)

    ckpt = open_checkpoint(model)
    tensors = [t for t in ckpt.tensors if pattern is None or pattern.search(t.name)]
    if not tensors:
        raise SpectrumError(f"--modules {modules!r} matches none of the {len(ckpt.tensors)} tensors in {model}.")
    fingerprint = ckpt.fingerprint()
    out = Path(output) if output else None
    header = {"fingerprint": fingerprint, "estimator": estimator, "modules_regex": modules,
              "method": method}
    if out is not None and resume and out.is_file():
        cached = _cached(out, header)
        if cached is not None:
            _write_reference(cached, reference_json)
            return cached

    rank, world = _dist()
    mine = _share(tensors, rank, world) if world > 1 else tensors
    journal = None
    done: dict[str, list[dict]] = {}
    if out is not None:
        suffix = f".rank{rank}.partial" if world > 1 else ".partial"
        journal = _Journal(out.with_name(out.name + suffix), header)
        done = journal.load() if resume else {}
        journal.start(done)
    results: dict[str, list[ModuleScore]] = {p: [ModuleScore.from_json(m) for m in ms] for p, ms in done.items()}
    todo = [t for t in mine if t.name not in results]
    _run(ckpt, todo, results, journal, estimator, device, method, progress and rank == 0, len(mine))

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, {p: [m.to_json() for m in ms] for p, ms in results.items()})
        results = {p: [ModuleScore.from_json(m) for m in ms] for part in gathered for p, ms in part.items()}
    flat = [m for p in sorted(results, key=_natural_key) for m in results[p]]
    result = ScanResult(model=str(model), estimator=estimator, modules=flat, fingerprint=fingerprint,
                        version=__version__, modules_regex=modules, config=_config_summary(ckpt))
    if rank == 0:
        if out is not None:
            result.save(out)
        _write_reference(result, reference_json)
    if journal is not None:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        journal.path.unlink(missing_ok=True)
    return result


def _run(ckpt: Checkpoint, todo: list[TensorInfo], results: dict, journal: _Journal | None, estimator: str,
         device: str, method: str, show: bool, total: int) -> None:
    """Score tensors in order, reading tensor i+1 on a thread while tensor i is decomposed."""
    import time

    def fetch(info: TensorInfo):
        if len(info.shape) <= 1 or not _readable(info):
            return None
        return ckpt.load(info)

    start = time.monotonic()
    with _progress(show) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("scan", total=total, completed=total - len(todo), rate="")
        pending = pool.submit(fetch, todo[0]) if todo else None
        for i, info in enumerate(todo):
            try:
                w = pending.result()
                failure = None
            except SpectrumError as e:
                w, failure = None, str(e)
            pending = pool.submit(fetch, todo[i + 1]) if i + 1 < len(todo) else None
            scores = _skip(info, failure) if failure else score_tensor(info, w, estimator, ckpt.config, device, method)
            del w
            results[info.name] = scores
            if journal is not None:
                journal.append(info.name, scores)
            rate = (i + 1) / max(time.monotonic() - start, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f}/s")


def _cached(out: Path, header: dict) -> ScanResult | None:
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    same = (data.get("fingerprint") == header["fingerprint"] and data.get("estimator") == header["estimator"]
            and data.get("modules_regex") == header["modules_regex"])
    return ScanResult.load(out) if same else None


def _config_summary(ckpt: Checkpoint) -> dict:
    keys = ("model_type", "architectures", "num_hidden_layers", "hidden_size", "intermediate_size",
            "num_attention_heads", "num_key_value_heads", "num_local_experts", "num_experts", "n_layer", "n_embd",
            "gguf_name", "tie_word_embeddings")
    cfg = {k: ckpt.config[k] for k in keys if k in ckpt.config}
    cfg["format"] = ckpt.format
    return cfg


def slug(model: str) -> str:
    """The reference tool's file-name form of a model id: ``org/name`` -> ``org-name``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(model).strip("/").replace("/", "-")).strip("-")


def _write_reference(result: ScanResult, folder: str | os.PathLike | None) -> None:
    if folder is None:
        return
    from .reference import write_json

    write_json(result, folder)


def _scan_module(model: torch.nn.Module, estimator: str, device: str, pattern, method: str,
                 output) -> ScanResult:
    """Scan a model already in memory. Offloaded (meta) parameters are reported as skipped, never as NaN."""
    config = model.config.to_dict() if hasattr(model, "config") else {}
    mods: list[ModuleScore] = []
    for name, param in model.named_parameters():
        if pattern is not None and not pattern.search(name):
            continue
        info = TensorInfo(name, tuple(param.shape), str(param.dtype).removeprefix("torch."), "<memory>", name)
        if param.device.type == "meta":
            mods.extend(_skip(info, "parameter is offloaded (on the meta device): scan the checkpoint folder "
                                    "instead, which reads every tensor from disk"))
            continue
        mods.extend(score_tensor(info, param.detach(), estimator, config, device, method))
    if not mods:
        raise SpectrumError("The model has no parameters to scan (or --modules matched none).")
    result = ScanResult(model=getattr(model, "name_or_path", type(model).__name__), estimator=estimator,
                        modules=mods, version=__version__, config={k: config[k] for k in ("model_type",) if k in config})
    if output:
        result.save(output)
    return result
