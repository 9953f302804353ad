"""Figures of a scan: the score heatmap, a difference heatmap, one module's spectrum, trainable parameters.

Scores span many decades and some are +inf or missing, so the colour scale is fitted to the finite values
(log where they are wide) and the rest is drawn grey, never allowed to stretch it. Figures are drawn with
matplotlib's Agg canvas directly (no pyplot), so nothing global changes and no display is needed;
``png_bytes`` turns one into the PNG that the report embeds and the CLI writes.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from .errors import require

require("matplotlib", extra="report")
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm, Normalize, SymLogNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .grids import ScoreGrid  # noqa: E402

MASK_COLOUR = "#d0d0d0"
SELECTED_COLOUR = "#e4002b"


def colour_norm(values: np.ndarray, diverging: bool = False) -> tuple[Normalize, str]:
    """A colour scale fitted to the finite values, robust to heavy tails; and how it was made.

    Scores span many decades (0.03 to 1e27 in the reference Qwen2-MoE scan), so non-negative scores
    spread over more than a factor of 20 get a log scale; when some are 0 (the mp estimator's "no signal
    above the edge") it is a symmetric-log scale, linear near 0, so that zeros are drawn, not masked.
    Limits are the 1st and 99th percentiles so that one outlier cannot flatten every other cell; the
    colour bar shows arrows beyond them.
    """
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Normalize(0.0, 1.0), "linear scale"
    if diverging:
        span = float(np.percentile(np.abs(finite), 99)) or 1.0
        return TwoSlopeNorm(0.0, -span, span), "linear scale, centred on 0"
    lo, hi = (float(x) for x in np.percentile(finite, [1, 99]))
    positive = finite[finite > 0]
    if float(finite.min()) >= 0 and positive.size and hi / float(np.percentile(positive, 1)) > 20:
        if lo > 0:
            return LogNorm(lo, hi), "log scale"
        linthresh = float(np.percentile(positive, 5))
        return SymLogNorm(linthresh, vmin=0.0, vmax=hi, base=10), f"log scale, linear below {linthresh:.2g}"
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi), "linear scale"


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG, drawn on its own Agg canvas."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _layer_ticks(ax, layers: list[int]) -> None:
    step = max(1, math.ceil(len(layers) / 40))
    idx = list(range(0, len(layers), step))
    ax.set_yticks(idx)
    ax.set_yticklabels([str(layers[i]) for i in idx], fontsize=7)
    ax.set_ylabel("layer")


def _type_ticks(ax, types: list[str]) -> None:
    ax.set_xticks(range(len(types)))
    ax.set_xticklabels(types, rotation=55, ha="right", fontsize=7)


def _mark_cells(ax, grid: ScoreGrid) -> int:
    rows, cols = np.nonzero(grid.selected)
    if len(rows) == 0:
        return 0
    boxes = [Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in zip(rows, cols)]
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=SELECTED_COLOUR, linewidth=1.4))
    return len(rows)


def _grid_figure(grid: ScoreGrid) -> Figure:
    width = max(4.5, 0.42 * len(grid.types) + 3.0)
    height = max(3.5, 0.14 * len(grid.layers) + 2.6)
    return Figure(figsize=(width, height), layout="constrained")


def _draw_grid(ax, grid: ScoreGrid, cmap_name: str, norm: Normalize):
    """Finite cells in colour, cells with modules but no finite score in grey, empty cells blank."""
    image = ax.imshow(
        np.ma.masked_invalid(grid.values), cmap=colormaps[cmap_name], norm=norm, aspect="auto", interpolation="nearest"
    )
    masked = grid.masked()
    if masked.any():
        ax.imshow(
            np.ma.masked_where(~masked, np.ones(masked.shape)),
            cmap=ListedColormap([MASK_COLOUR]),
            aspect="auto",
            interpolation="nearest",
        )
    _layer_ticks(ax, grid.layers)
    _type_ticks(ax, grid.types)
    return image


def heatmap_figure(grid: ScoreGrid, estimator: str, title: str = "") -> Figure:
    """Score by layer (rows) and type (columns); masked cells grey; selected cells outlined in red."""
    fig = _grid_figure(grid)
    ax = fig.add_subplot()
    norm, scale = colour_norm(grid.values)
    image = _draw_grid(ax, grid, "viridis", norm)
    marked = _mark_cells(ax, grid)
    bar = fig.colorbar(image, ax=ax, extend="both", fraction=0.08, pad=0.02)
    bar.set_label(
        f"SNR score ({estimator or 'unknown'} estimator; {scale})\nhigher = more signal = trained first", fontsize=8
    )
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(_wrap(legend_text(grid, marked), 90), fontsize=7)
    return fig


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def legend_text(grid: ScoreGrid, marked: int | None = None) -> str:
    """What the heatmap's marks mean, in one or two short lines."""
    parts = []
    masked = int(grid.masked().sum())
    if masked:
        parts.append(f"grey: {masked} cells without a finite score (+inf or skipped), masked from the colour scale")
    if grid.moe:
        parts.append(f"MoE: cell = median over up to {int(grid.count.max())} experts")
    marked = int((grid.selected > 0).sum()) if marked is None else marked
    if marked:
        parts.append("red box: a cell with a selected expert" if grid.moe else "red box: a selected module")
    return "; ".join(parts)


def diff_figure(grid: ScoreGrid, label: str, title: str = "") -> Figure:
    """A difference grid on a diverging scale centred on zero."""
    fig = _grid_figure(grid)
    ax = fig.add_subplot()
    norm, scale = colour_norm(grid.values, diverging=True)
    image = _draw_grid(ax, grid, "RdBu_r", norm)
    bar = fig.colorbar(image, ax=ax, extend="both", fraction=0.08, pad=0.02)
    bar.set_label(f"{label} ({scale})", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    masked = int(grid.masked().sum())
    if masked:
        ax.set_xlabel(
            _wrap(f"grey: {masked} cells without a finite difference (+inf or skipped in either scan)", 90), fontsize=7
        )
    return fig


@dataclass
class Spectrum:
    """The singular values of one module and what the estimators make of them."""

    name: str
    shape: tuple[int, int]
    values: np.ndarray
    sigma: float
    edge: float
    threshold: float
    estimator: str
    snr: float


def spectrum_figure(sp: Spectrum) -> Figure:
    """Histogram of singular values against the Marchenko-Pastur density of the fitted noise scale."""
    from .estimators import mp_density  # imports torch, which the other figures do not need

    m, n = sp.shape
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    s = sp.values
    top = max(float(s.max()), sp.edge, sp.threshold) * 1.02
    bins = np.linspace(0.0, top, min(120, max(20, len(s) // 4)))
    # matplotlib's stubs type bins as Sequence[float]; an ndarray of edges is what it documents and accepts
    ax.hist(
        s,
        bins=cast(Sequence[float], bins),
        density=True,
        color="#7a9cc6",
        alpha=0.85,
        label=f"singular values ({len(s)})",
    )
    x = np.linspace(top / 2000, top, 800)
    ax.plot(x, mp_density(x, sp.sigma, m, n), color="black", lw=1.2, label=f"Marchenko-Pastur, sigma={sp.sigma:.3g}")
    ax.axvline(sp.edge, color=SELECTED_COLOUR, lw=1.2, ls="--", label=f"MP edge {sp.edge:.3g}")
    if not math.isclose(sp.threshold, sp.edge, rel_tol=1e-9):
        ax.axvline(sp.threshold, color="#ff8c00", lw=1.2, ls=":", label=f"{sp.estimator} threshold {sp.threshold:.3g}")
    ax.set_yscale("symlog", linthresh=max(1e-6, float(mp_density(x, sp.sigma, m, n).max()) / 50))
    ax.set_xlabel("singular value")
    ax.set_ylabel("density")
    ax.set_title(f"{sp.name} {m}x{n}: {sp.estimator} SNR {sp.snr:.4g}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def params_figure(rows: list[tuple[str, int, int]], unit: str) -> Figure:
    """Selected against total, per type, as horizontal bars."""
    fig = Figure(figsize=(6.0, max(2.5, 0.28 * len(rows) + 1.2)), layout="constrained")
    ax = fig.add_subplot()
    names = [r[0] for r in rows]
    y = np.arange(len(rows))
    ax.barh(y, [r[2] for r in rows], color="#dddddd", label="all")
    ax.barh(y, [r[1] for r in rows], color=SELECTED_COLOUR, label="selected (trainable)")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend(fontsize=7, loc="lower right")
    return fig
