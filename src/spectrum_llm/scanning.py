"""Scan a checkpoint: every weight matrix -> singular values -> one SNR score.

One tensor is in memory at a time (the next one is read while the current one is decomposed). Each
finished tensor is appended to a journal beside the output, so a killed scan resumes where it stopped;
the final JSON is written atomically and a repeated scan of an unchanged checkpoint returns it at once.
Under ``torchrun`` every rank scans its share and rank 0 writes the merged result.

This module holds ``scan`` and what it decides: the estimator (looked up once, here), the cache, the journal,
the ranks' shares and the runner. The parts: ``scan_plan`` (what a tensor yields, and its score),
``scan_job`` (one process's work), ``scan_cpu`` and ``scan_gpu`` (the two runners), ``journal``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from . import __version__, cache, distributed, estimators, scan_cpu, scan_gpu
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .errors import SpectrumError
from .estimators import Estimator
from .files import check_writable, output_error
from .journal import Journal
from .quantized import method_label
from .results import ModuleScore, ScanResult
from .scan_files import load_scan
from .scan_job import ScanJob, share
from .scan_plan import mark_storage, module_singular_values, plan_tensor, readable, score_tensor, skip
from .spectra import METHODS, resolve_device

# imported by the report (``module_singular_values``), the benchmarks (``readable``) and callers planning tensors
__all__ = ["module_singular_values", "plan_tensor", "readable", "scan", "score_tensor"]


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def scan(
    model: str | os.PathLike | torch.nn.Module,
    *,
    output: str | os.PathLike | None = None,
    estimator: str = estimators.DEFAULT,
    device: str = "cpu",
    modules: str | None = None,
    reference_json: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = False,
    method: str = "gram",
) -> ScanResult:
    """Score every weight matrix of a checkpoint (folder, file, hub id in the cache) or an in-memory model.

    Returns the ScanResult and, with ``output``, writes it as JSON. ``modules`` is a regex on tensor names;
    ``reference_json`` is a folder that also gets the reference tool's flat ``snr_results_<slug>.json``.
    """
    est = estimators.get(estimator)  # the one lookup: an unknown name fails here, listing the known ones
    if est.family != "snr":
        est.score(torch.zeros(1), 1, 1)  # says, in one line, that `spectrum score` makes these
    if method not in METHODS:
        raise SpectrumError(f"Unknown singular-value method {method!r}; use one of {', '.join(METHODS)}.")
    resolve_device(device)
    try:
        pattern = re.compile(modules) if modules else None
    except re.error as e:
        raise SpectrumError(f"--modules {modules!r} is not a valid regular expression ({e}).") from None
    if isinstance(model, torch.nn.Module):
        return _scan_module(model, est, device, pattern, method, output)

    ckpt = open_checkpoint(model)
    tensors = [t for t in ckpt.tensors if pattern is None or pattern.search(t.name)]
    if not tensors:
        raise SpectrumError(f"--modules {modules!r} matches none of the {len(ckpt.tensors)} tensors in {model}.")
    fingerprint = ckpt.fingerprint()
    out = Path(output) if output else None
    if out is not None:
        check_writable(out)
    if reference_json is not None:
        check_writable(reference_json, folder=True)
    header = {
        "fingerprint": fingerprint,
        "estimator": est.name,
        "estimator_version": est.version,
        "modules_regex": modules,
        "method": method,
    }
    key = cache.source_fingerprint(ckpt.root) if ckpt.format == "safetensors" else None
    cache_file = cache.scan_path(key or fingerprint, est.name, method) if modules is None else None
    cached = _cached(out, header) if out is not None and resume and out.is_file() else None
    if cached is None and resume and cache_file is not None and cache_file.is_file():
        cached = _cached(cache_file, header, key)
        cached = cache.as_named(cached, model) if cached is not None else None  # the cache may hold another's name
        if cached is not None and out is not None and distributed.is_main():
            cached.save(out)
    if cached is not None:
        cached.cached = True
        if distributed.is_main():
            _write_reference(cached, reference_json)
        return cached

    rank, world = distributed.process_group()
    if world > 1 and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per rank under torchrun
    mine = share(tensors, rank, world) if world > 1 else tensors
    journal = None
    done: dict[str, list[dict]] = {}
    base = out if out is not None else cache_file  # a scan without an output still resumes, from the cache
    if base is not None:
        suffix = f".rank{rank}.partial" if world > 1 else ".partial"
        journal = Journal(base.with_name(base.name + suffix), header)
        done = journal.load() if resume else {}
        try:
            journal.start(done)
        except OSError as e:
            if out is not None:
                raise output_error(journal.path, e) from None
            journal, done = None, {}  # an unwritable cache: scan without a journal
    results: dict[str, list[ModuleScore]] = {p: [ModuleScore.from_json(m) for m in ms] for p, ms in done.items()}
    todo = [t for t in mine if t.name not in results]
    job = ScanJob(ckpt, todo, est, device, method, results, journal, progress and rank == 0, len(mine))
    _runner(device)(job)

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, {p: [m.to_json() for m in ms] for p, ms in results.items()})
        results = {p: [ModuleScore.from_json(m) for m in ms] for part in gathered for p, ms in part.items()}
    flat = [m for p in sorted(results, key=_natural_key) for m in results[p]]
    mark_storage(flat, ckpt)
    result = ScanResult(
        model=str(model),
        estimator=est.name,
        modules=flat,
        fingerprint=fingerprint,
        version=__version__,
        modules_regex=modules,
        config=_config_summary(ckpt),
        estimator_version=est.version,
    )
    if rank == 0:
        if out is not None:
            result.save(out)
        _write_reference(result, reference_json)
        if cache_file is not None and cache_file != out:
            try:
                result.save(cache_file)
            except SpectrumError:
                pass  # the cache is a convenience: a read-only home must not fail the scan
    if journal is not None:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        journal.path.unlink(missing_ok=True)
    return result


def _runner(device: str) -> Callable[[ScanJob], None]:
    """The staged runner for the devices it is built for (``scan_gpu.STAGED_DEVICES``), else the CPU one."""
    return scan_gpu.run if torch.device(device).type in scan_gpu.STAGED_DEVICES else scan_cpu.run


def _cached(out: Path, header: dict, source: str | None = None) -> ScanResult | None:
    """The scan in ``out`` if it was made from these weights (or from the GGUF they were converted from)."""
    try:
        data = json.loads(out.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, UnicodeDecodeError):
        return None
    same = (
        data.get("fingerprint") in (header["fingerprint"], source)
        and data.get("estimator") == header["estimator"]
        and data.get("estimator_version", 1) == header["estimator_version"]  # unrecorded: made by version 1
        and data.get("modules_regex") == header["modules_regex"]
    )
    return load_scan(out) if same else None


def _config_summary(ckpt: Checkpoint) -> dict:
    keys = (
        "model_type",
        "architectures",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_local_experts",
        "num_experts",
        "n_layer",
        "n_embd",
        "gguf_name",
        "tie_word_embeddings",
    )
    cfg = {k: ckpt.config[k] for k in keys if k in ckpt.config}
    cfg["format"] = ckpt.format
    if method_label(ckpt.config):
        cfg["quantization"] = method_label(ckpt.config)
    return cfg


def _write_reference(result: ScanResult, folder: str | os.PathLike | None) -> None:
    if folder is None:
        return
    from .reference import write_json

    write_json(result, folder)


def _scan_module(model: torch.nn.Module, estimator: Estimator, device: str, pattern, method: str, output) -> ScanResult:
    """Scan a model already in memory. Offloaded (meta) parameters are reported as skipped, never as NaN."""
    # torch types a Module's attributes as Tensor | Module; ``config`` is a transformers PretrainedConfig
    config = cast(Any, model).config.to_dict() if hasattr(model, "config") else {}
    mods: list[ModuleScore] = []
    for name, param in model.named_parameters():
        if pattern is not None and not pattern.search(name):
            continue
        info = TensorInfo(name, tuple(param.shape), str(param.dtype).removeprefix("torch."), "<memory>", name)
        if param.device.type == "meta":
            mods.extend(
                skip(
                    info,
                    "parameter is offloaded (on the meta device): scan the checkpoint folder "
                    "instead, which reads every tensor from disk",
                )
            )
            continue
        mods.extend(score_tensor(info, param.detach(), estimator, config, device, method))
    if not mods:
        raise SpectrumError("The model has no parameters to scan (or --modules matched none).")
    result = ScanResult(
        model=getattr(model, "name_or_path", type(model).__name__),
        estimator=estimator.name,
        modules=mods,
        version=__version__,
        config={k: config[k] for k in ("model_type",) if k in config},
        estimator_version=estimator.version,
    )
    if output:
        result.save(output)
    return result
