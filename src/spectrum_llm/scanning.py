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
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import torch

from . import __version__, cache, distributed, estimators
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .errors import SpectrumError
from .estimators import score, unscorable
from .naming import fused_parts, is_quantization_aux, parse
from .progress import progress_bar
from .quantized import method_label, stored_dtype
from .results import ModuleScore, ScanResult, check_writable, load_scan, output_error
from .spectra import METHODS, float64_note, gram, resolve_device, singular_values, singular_values_from_gram

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "FLOAT64", "FLOAT32", "FLOAT16", "BFLOAT16"}
_GGUF_DEQUANTIZABLE = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_K",
    "IQ4_NL",
    "IQ4_XS",
)


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def readable(info: TensorInfo) -> bool:
    """Float weights, GGUF blocks that dequantize exactly to what llama.cpp computes with, fp8 and MXFP4."""
    return not is_quantization_aux(info.name) and (
        info.dtype.upper() in _FLOAT_DTYPES or info.dtype in _GGUF_DEQUANTIZABLE or info.dequantizable
    )


def _unreadable(info: TensorInfo) -> str:
    """Why a tensor's values cannot be read: the quantization method and the fix where it is known."""
    if info.scheme is not None and info.scheme.why:
        return info.scheme.why
    return (
        f"quantized or integer tensor ({info.dtype}): its values cannot be read exactly. "
        "Scan the unquantized (bf16/fp16/fp32) checkpoint of this model."
    )


def _mark_storage(modules: list[ModuleScore], ckpt: Checkpoint) -> None:
    """Record each module's stored dtype and, where its values were dequantized, how."""
    by_name = {t.name: t for t in ckpt.tensors}
    for m in modules:
        info = by_name.get(m.param)
        if info is None:
            continue
        m.dtype = stored_dtype(info)
        if info.dequantizable:
            assert info.scheme is not None  # dequantizable implies a scheme
            m.dequantized = info.scheme.label
        elif info.dtype in _GGUF_DEQUANTIZABLE and info.dtype not in _FLOAT_DTYPES:
            m.dequantized = f"gguf {info.dtype}"


def _whole(info: TensorInfo, skipped: str | None = None) -> ModuleScore:
    """The entry of a tensor scored (or skipped) as one module."""
    p = parse(info.name, len(info.shape))
    return ModuleScore(
        name=p.module,
        type=p.type,
        layer=p.layer,
        shape=list(info.shape),
        snr=None,
        kind=p.kind,
        param=info.name,
        expert=p.expert,
        numel=_numel(info.shape),
        skipped=skipped,
    )


def _skip(info: TensorInfo, reason: str) -> list[ModuleScore]:
    return [_whole(info, reason)]


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _fill(mod: ModuleScore, s: torch.Tensor, estimator: str) -> ModuleScore:
    """Put the score of a matrix with singular values ``s`` (or why it has none) into ``mod``."""
    m, n = mod.shape
    why = unscorable(s, m, n, estimator)
    if why:
        mod.skipped = why
        return mod
    sc = score(s, m, n, estimator)
    mod.snr, mod.stats = sc.snr, sc.stats()
    return mod


def _finite(w: torch.Tensor, chunk: int = 2**22) -> bool:
    """No NaN or Inf in ``w``, checked in chunks so the boolean mask never costs a quarter of the tensor."""
    if not isinstance(w, torch.Tensor):  # a QuantizedTensor checks itself a chunk at a time, never whole
        return bool(torch.isfinite(w).all())
    flat = w.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def plan_tensor(
    info: TensorInfo, w: torch.Tensor | None, config: dict
) -> list[tuple[ModuleScore, torch.Tensor | None]]:
    """The modules one checkpoint tensor yields (one matrix, one per expert, plus fused parts), each with the
    matrix to decompose, or None where the module is skipped (the reason is already in it)."""
    if not readable(info):
        return [(m, None) for m in _skip(info, _unreadable(info))]
    if len(info.shape) <= 1:
        return [(m, None) for m in _skip(info, "1-D weight (norm or bias): not ranked")]
    if len(info.shape) > 3:
        return [(m, None) for m in _skip(info, f"{len(info.shape)}-D tensor: not a weight matrix")]
    assert w is not None
    if not _finite(w):
        bad = int((~torch.isfinite(w)).sum())
        return [
            (m, None)
            for m in _skip(
                info, f"{bad} NaN/Inf values inside the weight: the checkpoint is damaged; re-download or re-convert it"
            )
        ]
    p = parse(info.name, len(info.shape))
    out: list[tuple[ModuleScore, torch.Tensor | None]] = []
    if len(info.shape) == 3:
        base, leaf = p.module.rsplit(".", 1)
        for e in range(info.shape[0]):
            out.append(
                (
                    ModuleScore(
                        name=f"{base}.{e}.{leaf}",
                        type=p.type,
                        layer=p.layer,
                        shape=list(info.shape[1:]),
                        snr=None,
                        kind=p.kind,
                        param=info.name,
                        expert=e,
                        rows=[e, e + 1],
                        numel=_numel(info.shape[1:]),
                    ),
                    w[e],
                )
            )
    else:
        out.append((_whole(info), w))
        for part, dim, a, b in fused_parts(info.name, info.shape, config):
            piece = w[a:b] if dim == 0 else w[:, a:b]
            out.append(
                (
                    ModuleScore(
                        name=f"{p.module}.{part}",
                        type=f"{p.type}.{part}",
                        layer=p.layer,
                        shape=list(piece.shape),
                        snr=None,
                        kind=p.kind,
                        param=info.name,
                        expert=p.expert,
                        part=part,
                        rows=[a, b],
                        dim=dim,
                        numel=piece.numel(),
                    ),
                    piece,
                )
            )
    for mod, _mat in out:
        if min(mod.shape) < 2:
            mod.skipped = f"{mod.shape[0]}x{mod.shape[1]} matrix: too few singular values for a noise estimate"
    return [(mod, None if mod.skipped else mat) for mod, mat in out]


def score_tensor(
    info: TensorInfo, w: torch.Tensor | None, estimator: str, config: dict, device: str = "cpu", method: str = "gram"
) -> list[ModuleScore]:
    """All module scores one checkpoint tensor yields: one matrix, one per expert, plus fused parts."""
    out = []
    for mod, mat in plan_tensor(info, w, config):
        out.append(mod if mat is None else _fill(mod, singular_values(mat, device, method), estimator))
    return out


def module_singular_values(
    model: str | os.PathLike, module: ModuleScore, estimator: str
) -> tuple[tuple[int, int], torch.Tensor]:
    """The shape and singular values of the matrix a scan scored as ``module``, read again from ``model``.

    The tensor goes through ``plan_tensor`` as in the scan, so an expert or a fused part is cut exactly as it
    was scored, and a matrix the scan could not score is refused for the same reason.
    """
    ckpt = open_checkpoint(model)
    param = module.param or module.name + ".weight"
    info = next((t for t in ckpt.tensors if t.name == param), None)
    if info is None:
        raise SpectrumError(
            f"{model} has no tensor {param!r}, which the scan scored for {module.name}. Pass the "
            "checkpoint this scan was made from (--model)."
        )
    # a QuantizedTensor stands in for a Tensor (torch functions reach it through __torch_function__), as in _run
    w = cast("torch.Tensor | None", ckpt.load(info) if len(info.shape) > 1 and readable(info) else None)
    rows = list(module.rows) if module.rows is not None else None
    planned = next(
        ((m, mat) for m, mat in plan_tensor(info, w, ckpt.config) if (m.rows, m.part) == (rows, module.part)), None
    )
    if planned is None:
        raise SpectrumError(
            f"{model} does not cut {param!r} {tuple(info.shape)} into {module.name} as the scan did. "
            "Pass the checkpoint this scan was made from (--model)."
        )
    mod, mat = planned
    s = singular_values(mat) if mat is not None else None
    why = mod.skipped if s is None else unscorable(s, mod.shape[0], mod.shape[1], estimator)
    if why or s is None:
        raise SpectrumError(
            f"{module.name} has no spectrum to draw: {why}. Pick another module "
            "(`spectrum show SCAN` lists the scored ones)."
        )
    return (mod.shape[0], mod.shape[1]), s


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
    version = estimators.get(estimator).version
    if method not in METHODS:
        raise SpectrumError(f"Unknown singular-value method {method!r}; use one of {', '.join(METHODS)}.")
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
    if out is not None:
        check_writable(out)
    if reference_json is not None:
        check_writable(reference_json, folder=True)
    header = {
        "fingerprint": fingerprint,
        "estimator": estimator,
        "estimator_version": version,
        "modules_regex": modules,
        "method": method,
    }
    key = cache.source_fingerprint(ckpt.root) if ckpt.format == "safetensors" else None
    cache_file = cache.scan_path(key or fingerprint, estimator, method) if modules is None else None
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
    mine = _share(tensors, rank, world) if world > 1 else tensors
    journal = None
    done: dict[str, list[dict]] = {}
    base = out if out is not None else cache_file  # a scan without an output still resumes, from the cache
    if base is not None:
        suffix = f".rank{rank}.partial" if world > 1 else ".partial"
        journal = _Journal(base.with_name(base.name + suffix), header)
        done = journal.load() if resume else {}
        try:
            journal.start(done)
        except OSError as e:
            if out is not None:
                raise output_error(journal.path, e) from None
            journal, done = None, {}  # an unwritable cache: scan without a journal
    results: dict[str, list[ModuleScore]] = {p: [ModuleScore.from_json(m) for m in ms] for p, ms in done.items()}
    todo = [t for t in mine if t.name not in results]
    _runner(device)(ckpt, todo, results, journal, estimator, device, method, progress and rank == 0, len(mine))

    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, {p: [m.to_json() for m in ms] for p, ms in results.items()})
        results = {p: [ModuleScore.from_json(m) for m in ms] for part in gathered for p, ms in part.items()}
    flat = [m for p in sorted(results, key=_natural_key) for m in results[p]]
    _mark_storage(flat, ckpt)
    result = ScanResult(
        model=str(model),
        estimator=estimator,
        modules=flat,
        fingerprint=fingerprint,
        version=__version__,
        modules_regex=modules,
        config=_config_summary(ckpt),
        estimator_version=version,
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


def _run(
    ckpt: Checkpoint,
    todo: list[TensorInfo],
    results: dict,
    journal: _Journal | None,
    estimator: str,
    device: str,
    method: str,
    show: bool,
    total: int,
) -> None:
    """Score tensors in order, reading tensor i+1 on a thread while tensor i is decomposed."""
    import time

    def fetch(info: TensorInfo):
        if len(info.shape) <= 1 or not readable(info):
            return None
        return ckpt.load(info)

    start = time.monotonic()
    with progress_bar("scan", "tensors", "rate", show) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("scan", total=total, completed=total - len(todo), rate="")
        pending = pool.submit(fetch, todo[0]) if todo else None
        for i, info in enumerate(todo):
            try:
                assert pending is not None  # submitted for todo[i] before this iteration
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


_STAGED_DEVICES = ("cuda",)
_STAGE_DEPTH = 2
_BUCKET_BYTES = 256 * 2**20
_MAX_OPEN = 32


class _Stager:
    """Reads tensors on a thread and copies them to the device through pinned memory, ``depth`` tensors ahead.

    Each item is (info, tensor on the device or None, failure message or None). The copy runs on its own
    CUDA stream; the consumer waits on its event, so reading, the host-to-device copy and the maths overlap.
    """

    def __init__(self, ckpt: Checkpoint, todo: list[TensorInfo], device: torch.device, depth: int = _STAGE_DEPTH):
        import queue
        import threading

        self.ckpt, self.todo, self.device = ckpt, todo, device
        self.cuda = device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="spectrum-stager", daemon=True)

    def __enter__(self) -> _Stager:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import queue

        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()

    def _put(self, item) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            stream = torch.cuda.Stream(self.device) if self.cuda else None
            for info in self.todo:
                if self.stop.is_set():
                    return
                w, event, failure = None, None, None
                try:
                    if len(info.shape) > 1 and readable(info):
                        w = self.ckpt.load(info)
                except SpectrumError as e:
                    failure = str(e)
                if w is not None and self.cuda:
                    host = w.contiguous().pin_memory()
                    with torch.cuda.stream(stream):
                        w = host.to(self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                    del host
                if not self._put((info, w, event, failure)):
                    return
        except BaseException as e:  # surfaces in the consumer, never lost in the thread
            self._put(e)
            return
        self._put(None)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            info, w, event, failure = item
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                w.record_stream(current)
            yield info, w, failure


class _Solver:
    """Forms each Gram matrix on the device as its tensor arrives and eigensolves equal-sized ones together.

    Small matrices (k_proj, v_proj, experts) then cost one batched eigensolver call instead of one each.
    A batch is solved once its Gram matrices fill ``bucket_bytes``, or when ``max_open`` tensors wait.
    ``add`` and ``flush`` return the tensors whose modules are all scored.
    """

    def __init__(
        self,
        device: torch.device,
        method: str,
        estimator: str,
        bucket_bytes: int = _BUCKET_BYTES,
        max_open: int = _MAX_OPEN,
    ):
        self.device, self.method, self.estimator = device, method, estimator
        self.bucket_bytes, self.max_open = bucket_bytes, max_open
        self.buckets: dict[int, list[tuple[str, ModuleScore, torch.Tensor]]] = {}
        self.left: dict[str, int] = {}

    def add(self, key: str, jobs: list[tuple[ModuleScore, torch.Tensor]]) -> list[str]:
        self.left[key] = len(jobs)
        for mod, mat in jobs:
            if self.method == "svd":
                _fill(mod, singular_values(mat, self.device, "svd"), self.estimator)
                self.left[key] -= 1
                continue
            g = gram(mat, self.device)
            n = g.shape[0]
            bucket = self.buckets.setdefault(n, [])
            bucket.append((key, mod, g))
            if len(bucket) * n * n * 8 >= self.bucket_bytes:
                self._solve(n)
        if len(self.left) > self.max_open:
            return self.flush()
        return self._finished()

    def flush(self) -> list[str]:
        for n in list(self.buckets):
            self._solve(n)
        return self._finished()

    def _solve(self, n: int) -> None:
        bucket = self.buckets.pop(n)
        grams = torch.stack([g for _, _, g in bucket]) if len(bucket) > 1 else bucket[0][2].unsqueeze(0)
        svs = singular_values_from_gram(grams).cpu()
        for (key, mod, _), s in zip(bucket, svs):
            _fill(mod, s, self.estimator)
            self.left[key] -= 1

    def _finished(self) -> list[str]:
        done = [k for k, v in self.left.items() if v == 0]
        for k in done:
            del self.left[k]
        return done


def _run_staged(
    ckpt: Checkpoint,
    todo: list[TensorInfo],
    results: dict,
    journal: _Journal | None,
    estimator: str,
    device: str,
    method: str,
    show: bool,
    total: int,
) -> None:
    """The GPU scan: tensors staged ahead through pinned memory, Gram and eigensolver on the device, batched."""
    import sys
    import time

    dev = resolve_device(device)
    note = float64_note(dev)
    if note and show:
        print(f"note: {note}", file=sys.stderr, flush=True)
    solver = _Solver(dev, method, estimator)
    mods: dict[str, list[ModuleScore]] = {}
    start, finished = time.monotonic(), 0
    with progress_bar("scan", "tensors", "rate", show) as bar, _Stager(ckpt, todo, dev) as stager:
        task = bar.add_task("scan", total=total, completed=total - len(todo), rate="")

        def record(keys: list[str]) -> None:
            nonlocal finished
            for key in keys:
                scores = mods.pop(key)
                results[key] = scores
                if journal is not None:
                    journal.append(key, scores)
                finished += 1
                bar.update(task, advance=1, rate=f"{finished / max(time.monotonic() - start, 1e-9):.1f}/s")

        for info, w, failure in stager:
            plan = [(m, None) for m in _skip(info, failure)] if failure else plan_tensor(info, w, ckpt.config)
            mods[info.name] = [m for m, _ in plan]
            record(solver.add(info.name, [(m, mat) for m, mat in plan if mat is not None]))
            del w, plan
        record(solver.flush())


def _runner(device: str):
    return _run_staged if torch.device(device).type in _STAGED_DEVICES else _run


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


def _scan_module(model: torch.nn.Module, estimator: str, device: str, pattern, method: str, output) -> ScanResult:
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
                _skip(
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
        estimator=estimator,
        modules=mods,
        version=__version__,
        config={k: config[k] for k in ("model_type",) if k in config},
        estimator_version=estimators.get(estimator).version,
    )
    if output:
        result.save(output)
    return result
