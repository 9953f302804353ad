"""Counting parameters: of a model (in memory or on the meta device), of part of a tensor, and of a scan's
modules by type.

A model's tensors are counted as ``named_parameters()`` lists them: each tensor once, so a head tied to the
embedding counts once (as the embedding), under the name Axolotl's patterns match.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .grids import column_type
from .results import RANKED_KINDS, ModuleScore, ScanResult


def numel(p: Any) -> int:
    """A parameter's size, also when DeepSpeed ZeRO-3 built it partitioned (the tensor itself is then empty)."""
    return int(getattr(p, "ds_numel", None) or p.numel())


def shape(p: Any) -> tuple[int, ...]:
    """A parameter's full shape, also when DeepSpeed ZeRO-3 built it partitioned."""
    return tuple(getattr(p, "ds_shape", None) or p.shape)


def count_params(model: Any, where: Callable[[str, Any], bool] | None = None) -> tuple[int, int]:
    """Trainable and total parameters of a model, of the tensors ``where(name, param)`` accepts if given."""
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
