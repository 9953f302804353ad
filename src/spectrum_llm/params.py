"""Counting parameters: of a model (in memory or on the meta device), of part of a tensor, and of a scan's
modules (by name, as a selection counts them, and by type).

A model's tensors are counted as ``named_parameters()`` lists them: each tensor once, so a head tied to the
embedding counts once (as the embedding), under the name Axolotl's patterns match. A scan's counts come from
the shapes it records (reference scans record none: there the counts are None or 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from .models import load_meta_model, tied_aliases
from .naming import column_type
from .results import RANKED_KINDS, ModuleScore, ScanResult


def numel(p: Any) -> int:
    """A parameter's size, also when DeepSpeed ZeRO-3 built it partitioned (the tensor itself is then empty)."""
    return int(getattr(p, "ds_numel", None) or p.numel())


def shape(p: Any) -> tuple[int, ...]:
    """A parameter's full shape, also when DeepSpeed ZeRO-3 built it partitioned."""
    return tuple(getattr(p, "ds_shape", None) or p.shape)


def count_params(model: Any, where: Callable[[str, Any], bool] | None = None) -> tuple[int, int]:
    """Trainable and total parameters of a model, of the tensors ``where(name, param)`` accepts if given.

    ``scan_param_count`` counts a scan's modules instead."""
    trainable = total = 0
    for name, p in model.named_parameters():
        if where is not None and not where(name, p):
            continue
        total += numel(p)
        trainable += numel(p) if p.requires_grad else 0
    return trainable, total


def trainable_by_type(scan: ScanResult, selected: Iterable[str]) -> tuple[list[tuple[str, int, int]], str]:
    """Per column type: (type, selected amount, total amount), in parameters when the scan knows them.

    Totals cover the ranked kinds plus every type with a selected module (norms, embeddings). A fused
    projection counts once: as its parts when the selection picked parts, else as the whole. Reference
    scans record no shapes, so there the amount is a count of modules.
    """
    chosen = set(selected)
    parts = [m for m in scan.modules if m.part is not None]
    use_parts = any(m.name in chosen for m in parts)
    split = {m.name.rsplit(".", 1)[0] for m in parts}
    picked_types = {column_type(m) for m in scan.modules if m.name in chosen}

    def counted(m: ModuleScore) -> bool:
        if (m.part is not None) != use_parts and (m.part is not None or m.name in split):
            return False
        return m.kind in RANKED_KINDS or column_type(m) in picked_types

    mods = [m for m in scan.modules if counted(m)]
    by_params = all(m.numel > 0 for m in mods)
    totals: dict[str, list[int]] = {}
    for m in mods:
        amount = m.numel if by_params else 1
        t = totals.setdefault(column_type(m), [0, 0])
        t[1] += amount
        if m.name in chosen:
            t[0] += amount
    rows = [(t, a, b) for t, (a, b) in totals.items()]
    return rows, ("parameters" if by_params else "modules (the scan records no shapes)")


def part_params(numel: int, kept: int, of: int) -> int:
    """Parameters in ``kept`` of a tensor's ``of`` equal leading slices (rows, or row x column cells)."""
    return kept * (numel // max(of, 1))


def model_sizes(model: Any) -> tuple[dict[str, int], bool]:
    """Parameter sizes by name, each tensor once under the name Axolotl matches (``named_parameters()``), and
    whether lm_head is tied to the embeddings; from a module or a model folder (built on the meta device)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_meta_model(model)
    tied = any(a.endswith("lm_head.weight") for a in tied_aliases(model))
    return {n: p.numel() for n, p in model.named_parameters()}, tied


def module_numel(m: ModuleScore, by_param: dict[str, int] | None) -> int:
    """A scanned module's parameters: from the scan, else from the model's sizes (``model_sizes``); 0 if unknown."""
    if m.numel:
        return m.numel
    if by_param is None:
        return 0
    if m.rows is not None and m.param in by_param:
        return 0  # a slice: only the scan knows its size
    return sum(n for p, n in by_param.items() if p == m.param or p.startswith(m.name + "."))


def bias_numel(m: ModuleScore, biases: dict[str, int], by_param: dict[str, int] | None) -> int:
    """The bias a whole module's pattern ``^<module>.(weight|bias)$`` also trains: its size (``biases``: the scan's
    bias sizes by parameter name), or 0 when ``module_numel`` already counted it or there is none."""
    if m.rows is not None or m.param != m.name + ".weight":
        return 0
    if not m.numel:
        return 0  # module_numel summed every parameter under the module from the model already
    bias = m.name + ".bias"
    return biases.get(bias) or (by_param or {}).get(bias, 0)


def scan_total_params(scan: ScanResult, by_param: dict[str, int] | None = None) -> int | None:
    """The model's parameters: the sum of ``by_param`` (a model's sizes) if given, else from the scan's shapes
    (None where a shape is missing)."""
    if by_param is not None:
        return sum(by_param.values())
    by_tensor: dict[str, list[ModuleScore]] = {}
    for m in scan.modules:
        if m.part is None:
            by_tensor.setdefault(m.param or m.name, []).append(m)
    if not by_tensor or not all(m.numel for ms in by_tensor.values() for m in ms):
        return None
    # a tensor listed whole counts once; one listed only per expert counts as the sum of its slices
    return sum(
        next((m.numel for m in ms if m.rows is None), None) or sum(m.numel for m in ms) for ms in by_tensor.values()
    )


def scan_param_count(scan: ScanResult, names: Iterable[str]) -> tuple[int | None, int | None]:
    """Trainable and total parameters of the scanned modules ``names``, from the scan's shapes, as ``select``
    counts them (a whole module with its bias; a tied head once, as the embedding). None where shapes are missing.

    ``count_params`` counts a model's parameters instead."""
    chosen = set(names)
    biases = {m.param: m.numel for m in scan.modules if m.kind == "bias"}
    mods = [m for m in scan.modules if m.name in chosen]
    total = scan_total_params(scan)
    if not total or not all(m.numel for m in mods):
        return None, total
    return sum(m.numel + bias_numel(m, biases, None) for m in mods), total
