"""What one checkpoint tensor yields: its modules, each with the matrix to decompose or the reason it is skipped.

A 2-D weight is one module (plus its fused q/k/v or gate/up parts), a 3-D expert tensor one module per expert;
1-D weights, quantized values that cannot be read exactly and damaged tensors are skipped with a reason. Both
scan runners (``scan_cpu``, ``scan_gpu``) and the report's single-module view go through ``plan_tensor``, so a
module is always cut the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import cast

import torch

from . import estimators
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .errors import SpectrumError
from .estimators import Estimator
from .naming import fused_parts, is_quantization_aux, parse
from .quantized import stored_dtype
from .results import ModuleScore
from .spectra import singular_values

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


def mark_storage(modules: list[ModuleScore], ckpt: Checkpoint) -> None:
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
        numel=numel(info.shape),
        skipped=skipped,
    )


def skip(info: TensorInfo, reason: str) -> list[ModuleScore]:
    """The entries of a tensor that is not scored: the tensor as one module, with ``reason`` recorded."""
    return [_whole(info, reason)]


def numel(shape: Iterable[int]) -> int:
    """The number of elements of a tensor of this shape."""
    n = 1
    for s in shape:
        n *= int(s)
    return n


def fill(mod: ModuleScore, s: torch.Tensor, estimator: Estimator) -> ModuleScore:
    """Put the score of a matrix with singular values ``s`` (or why it has none) into ``mod``."""
    m, n = mod.shape
    why = estimator.unscorable(s, m, n)
    if why:
        mod.skipped = why
        return mod
    sc = estimator.score(s, m, n)
    mod.snr, mod.stats = sc.snr, sc.stats()
    return mod


def finite(w: torch.Tensor, chunk: int = 2**22) -> bool:
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
        return [(m, None) for m in skip(info, _unreadable(info))]
    if len(info.shape) <= 1:
        return [(m, None) for m in skip(info, "1-D weight (norm or bias): not ranked")]
    if len(info.shape) > 3:
        return [(m, None) for m in skip(info, f"{len(info.shape)}-D tensor: not a weight matrix")]
    assert w is not None
    if not finite(w):
        bad = int((~torch.isfinite(w)).sum())
        return [
            (m, None)
            for m in skip(
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
                        numel=numel(info.shape[1:]),
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
    info: TensorInfo,
    w: torch.Tensor | None,
    estimator: Estimator,
    config: dict,
    device: str = "cpu",
    method: str = "gram",
) -> list[ModuleScore]:
    """All module scores one checkpoint tensor yields: one matrix, one per expert, plus fused parts."""
    out = []
    for mod, mat in plan_tensor(info, w, config):
        out.append(mod if mat is None else fill(mod, singular_values(mat, device, method), estimator))
    return out


def module_singular_values(
    model: str | os.PathLike, module: ModuleScore, estimator: str
) -> tuple[tuple[int, int], torch.Tensor]:
    """The shape and singular values of the matrix a scan scored as ``module``, read again from ``model``.

    The tensor goes through ``plan_tensor`` as in the scan, so an expert or a fused part is cut exactly as it
    was scored, and a matrix the scan could not score (with the estimator named ``estimator``) is refused for
    the same reason.
    """
    est = estimators.get(estimator)
    ckpt = open_checkpoint(model)
    param = module.param or module.name + ".weight"
    info = next((t for t in ckpt.tensors if t.name == param), None)
    if info is None:
        raise SpectrumError(
            f"{model} has no tensor {param!r}, which the scan scored for {module.name}. Pass the "
            "checkpoint this scan was made from (--model)."
        )
    # a QuantizedTensor stands in for a Tensor (torch functions reach it through __torch_function__), as in a scan
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
    why = mod.skipped if s is None else est.unscorable(s, mod.shape[0], mod.shape[1])
    if why or s is None:
        raise SpectrumError(
            f"{module.name} has no spectrum to draw: {why}. Pick another module "
            "(`spectrum show SCAN` lists the scored ones)."
        )
    return (mod.shape[0], mod.shape[1]), s
