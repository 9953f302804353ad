"""A scan as a grid: one cell per layer and module type, which is what the heatmaps draw.

Aggregating before plotting (MoE experts summarised by their median) makes a 28,800-module DeepSeek-V2 scan
draw as fast as a 7B dense one. Cells keep +inf and missing scores apart from finite ones, so the figures
can mask them rather than let them stretch the colour scale.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .naming import column_type
from .results import RANKED_KINDS, ModuleScore, ScanResult
from .scan_files import load_scan


def as_scan(scan: ScanResult | str | os.PathLike) -> ScanResult:
    return scan if isinstance(scan, ScanResult) else load_scan(scan)


@dataclass
class ScoreGrid:
    """Scores aggregated to one cell per (layer, column type): what the heatmap draws.

    ``values`` is NaN where a cell has no module, +inf where its summary score is infinite, and the
    median of its modules' scores otherwise. ``count`` is the number of scored modules per cell
    (the experts of an MoE layer), ``selected`` how many of a cell's modules are selected.
    """

    layers: list[int]
    types: list[str]
    values: np.ndarray
    count: np.ndarray
    selected: np.ndarray
    present: np.ndarray
    outside: list[ModuleScore] = field(default_factory=list)

    @property
    def moe(self) -> bool:
        return bool((self.count > 1).any())

    def masked(self) -> np.ndarray:
        """Cells that hold modules but no finite score (+inf, or every module skipped)."""
        return self.present & ~np.isfinite(self.values)


def _score_of(m: ModuleScore) -> float | None:
    return m.snr if m.ranked else None


def score_grid(
    scan: ScanResult,
    selected: Iterable[str] = (),
    kinds: tuple[str, ...] = RANKED_KINDS,
    value: Callable[[ModuleScore], float | None] = _score_of,
) -> ScoreGrid:
    """Aggregate a scan's modules of ``kinds`` into a layer x type grid of the median ``value``.

    Modules outside the layers (embeddings, lm_head, final norm; any kind) have no row and are returned
    in ``outside``. Parts of fused projections are their own columns (``self_attn.qkv_proj.q``).
    """
    chosen = set(selected)
    cells: dict[tuple[int, str], list[ModuleScore]] = {}
    outside: list[ModuleScore] = []
    for m in scan.modules:
        if m.layer is None:
            outside.append(m)
            continue
        if m.kind not in kinds:
            continue
        cells.setdefault((m.layer, column_type(m)), []).append(m)
    layers = sorted({layer for layer, _ in cells})
    types = list(dict.fromkeys(t for _, t in cells))
    row = {layer: i for i, layer in enumerate(layers)}
    col = {t: j for j, t in enumerate(types)}
    shape = (len(layers), len(types))
    values = np.full(shape, np.nan)
    count = np.zeros(shape, dtype=int)
    sel = np.zeros(shape, dtype=int)
    present = np.zeros(shape, dtype=bool)
    for (layer, t), mods in cells.items():
        i, j = row[layer], col[t]
        present[i, j] = True
        scores = [v for v in map(value, mods) if v is not None]
        count[i, j] = len(scores)
        if scores:
            values[i, j] = float(np.median(scores))
        sel[i, j] = sum(m.name in chosen for m in mods)
    return ScoreGrid(layers, types, values, count, sel, present, outside)
