"""See a scan: a heatmap of score by layer and module type, a module's spectrum, and an HTML report.

People decide what to train by looking at which depths and projections carry signal. The heatmap
aggregates before it plots (one cell per layer and type; MoE experts summarised by their median), so a
28,800-module DeepSeek-V2 scan renders as fast as a 7B dense one. Scores of +inf (norms, or no singular
value below the threshold) and missing scores are masked rather than allowed to stretch the colour scale.
Figures are drawn with matplotlib's Agg canvas directly (no pyplot), so nothing global changes and no
display is needed; the HTML embeds them as base64 PNG and needs no network to view.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import SpectrumError, require
from .results import (RANKED_KINDS, ModuleScore, ScanResult, check_writable, load_scan, storage_summary,
                      write_bytes_atomic, write_text_atomic)

require("matplotlib", extra="report")
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm, Normalize, SymLogNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+\.")
MASK_COLOUR = "#d0d0d0"
SELECTED_COLOUR = "#e4002b"


def column_type(m: ModuleScore) -> str:
    """The heatmap column of a module: its type with any expert index taken out.

    Our scans already group experts (``mlp.experts.down_proj`` with ``expert`` set); the reference
    tool's MoE files keep one type per expert (``mlp.experts.0.down_proj``), which would make hundreds
    of columns.
    """
    return _EXPERT_INDEX.sub(r"\1experts.", m.type)


def as_scan(scan: ScanResult | str | os.PathLike) -> ScanResult:
    return scan if isinstance(scan, ScanResult) else load_scan(scan)


# ---------------------------------------------------------------------------------------------- grid


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


def score_grid(scan: ScanResult, selected: Iterable[str] = (), kinds: tuple[str, ...] = RANKED_KINDS,
               value: Callable[[ModuleScore], float | None] = _score_of) -> ScoreGrid:
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


# ------------------------------------------------------------------------------------------- figures


def _png(fig: Figure, dpi: int = 110) -> bytes:
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
    image = ax.imshow(np.ma.masked_invalid(grid.values), cmap=colormaps[cmap_name], norm=norm, aspect="auto",
                      interpolation="nearest")
    masked = grid.masked()
    if masked.any():
        ax.imshow(np.ma.masked_where(~masked, np.ones(masked.shape)), cmap=ListedColormap([MASK_COLOUR]),
                  aspect="auto", interpolation="nearest")
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
    bar.set_label(f"SNR score ({estimator or 'unknown'} estimator; {scale})\nhigher = more signal = trained first",
                  fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(_wrap(legend_text(grid, marked), 90), fontsize=7)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

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
        ax.set_xlabel(_wrap(f"grey: {masked} cells without a finite difference (+inf or skipped in either scan)",
                            90), fontsize=7)
    return fig


def mp_density(x: np.ndarray, sigma: float, m: int, n: int) -> np.ndarray:
    """Marchenko-Pastur density of the singular values of an m x n noise matrix with entry scale sigma.

    With lo = min(m, n), hi = max(m, n) and beta = lo / hi, t = s^2 / (hi sigma^2) has density
    sqrt((b - t)(t - a)) / (2 pi beta t) on [a, b] = [(1 - sqrt beta)^2, (1 + sqrt beta)^2]; the density
    of s follows by the change of variable ds = dt * hi sigma^2 / (2 s).
    """
    lo, hi = sorted((m, n))
    beta = lo / hi
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    t = x**2 / (hi * sigma**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.sqrt(np.clip((b - t) * (t - a), 0, None)) / (2 * math.pi * beta * t)
        out = f * 2 * x / (hi * sigma**2)
    return np.where(np.isfinite(out), out, 0.0)


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
    m, n = sp.shape
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.add_subplot()
    s = sp.values
    top = max(float(s.max()), sp.edge, sp.threshold) * 1.02
    bins = np.linspace(0.0, top, min(120, max(20, len(s) // 4)))
    ax.hist(s, bins=bins, density=True, color="#7a9cc6", alpha=0.85, label=f"singular values ({len(s)})")
    x = np.linspace(top / 2000, top, 800)
    ax.plot(x, mp_density(x, sp.sigma, m, n), color="black", lw=1.2,
            label=f"Marchenko-Pastur, sigma={sp.sigma:.3g}")
    ax.axvline(sp.edge, color=SELECTED_COLOUR, lw=1.2, ls="--", label=f"MP edge {sp.edge:.3g}")
    if not math.isclose(sp.threshold, sp.edge, rel_tol=1e-9):
        ax.axvline(sp.threshold, color="#ff8c00", lw=1.2, ls=":",
                   label=f"{sp.estimator} threshold {sp.threshold:.3g}")
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


# ----------------------------------------------------------------------------------------- selection


def selected_modules(selection: Any, scan: ScanResult) -> list[str]:
    """Names of the selected modules that this scan contains.

    Takes whatever ``selection.load_selection`` reads: a Selection, a .yaml/.json/.txt file, or a list of
    patterns (plain module names are patterns too). A selection that shares no module with the scan was
    made for another model.
    """
    if selection is None:
        return []
    from .axolotl import pattern_module
    from .selection import load_selection

    sel = load_selection(selection)
    names = list(dict.fromkeys([*sel.modules, *(m for m in map(pattern_module, sel.extras) if m)]))
    known = {m.name for m in scan.modules}
    hits = [n for n in names if n in known]
    if names and not hits:
        raise SpectrumError(
            f"None of the {len(names)} selected modules (e.g. {names[0]!r}) is in the scan of {scan.model!r}. "
            "Pass the selection made from this scan (`spectrum select SCAN ...`)."
        )
    return hits


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


# ------------------------------------------------------------------------------------------ spectrum


def _find_module(scan: ScanResult, module: str) -> ModuleScore:
    by_name = {m.name: m for m in scan.modules}
    m = by_name.get(module)
    if m is None:
        import difflib

        close = difflib.get_close_matches(module, list(by_name), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `spectrum show SCAN` lists the module names."
        raise SpectrumError(f"Module {module!r} is not in the scan of {scan.model!r}.{hint}")
    return m


def module_weight(model: str | os.PathLike, m: ModuleScore):
    """The matrix a module score was computed from: its checkpoint tensor, cut to its expert or part."""
    from .checkpoint import open_checkpoint

    ckpt = open_checkpoint(model)
    param = m.param or m.name + ".weight"
    info = next((t for t in ckpt.tensors if t.name == param), None)
    if info is None:
        raise SpectrumError(f"{model} has no tensor {param!r}, which the scan scored for {m.name}. Pass the "
                            "checkpoint this scan was made from (--model).")
    w = ckpt.load(info)
    if m.rows is not None:
        a, b = m.rows
        w = w.narrow(m.dim, a, b - a)
        if w.ndim == 3:
            w = w.squeeze(m.dim)
    if w.ndim != 2:
        raise SpectrumError(f"{m.name} has a {w.ndim}-D weight {tuple(w.shape)}; only matrices have a spectrum. "
                            "Pick a linear module (see `spectrum show SCAN`).")
    return w


def module_spectrum(scan: ScanResult, module: str, model: str | os.PathLike) -> Spectrum:
    """Load one module's weight from the checkpoint; its singular values, MP noise scale, edge and score."""
    from . import estimators, spectra

    m = _find_module(scan, module)
    w = module_weight(model, m)
    rows, cols = (int(x) for x in w.shape)
    s = spectra.singular_values(w)
    if min(rows, cols) < 2 or float(s.max()) == 0.0:
        raise SpectrumError(f"{module} ({rows}x{cols}) has no spectrum to draw (too small or all zero). "
                            "Pick another module.")
    estimator = scan.estimator if scan.estimator in estimators.REGISTRY else "reference"
    sc = estimators.score(s, rows, cols, estimator)
    sigma = estimators.mp_sigma(s, rows, cols)
    return Spectrum(module, (rows, cols), s.numpy(), sigma, estimators.mp_edge(sigma, rows, cols), sc.threshold,
                    estimator, sc.snr)


# -------------------------------------------------------------------------------------------- report


@dataclass
class ReportFiles:
    """What ``report`` wrote."""

    html: Path | None
    png: Path | None
    grid: ScoreGrid
    selected: list[str]


def _check_image_path(path: str | os.PathLike | None) -> None:
    if path is not None and Path(path).suffix.lower() != ".png":
        raise SpectrumError(f"{path}: the heatmap is written as PNG; give a file name ending in .png.")


def heatmap_png(scan: ScanResult | str | os.PathLike, selected: Iterable[str] = ()) -> bytes:
    scan = as_scan(scan)
    grid = score_grid(scan, selected)
    _require_cells(grid, scan)
    return _png(heatmap_figure(grid, scan.estimator, _title(scan)))


def _title(scan: ScanResult) -> str:
    return f"{scan.model or 'scan'}: score by layer and module type"


def _require_cells(grid: ScoreGrid, scan: ScanResult) -> None:
    if not grid.layers:
        raise SpectrumError(f"The scan of {scan.model!r} has no scored linear modules inside layers, so there is "
                            "nothing to draw. Check the scan (`spectrum show SCAN`) or re-run it without --modules.")


def report(scan: ScanResult | str | os.PathLike, selection: Any = None, output: str | os.PathLike | None = "report.html",
           png: str | os.PathLike | None = None, module: str | None = None,
           model: str | os.PathLike | None = None) -> ReportFiles:
    """Write a self-contained HTML report of a scan (and a selection), and/or the heatmap alone as PNG.

    The report holds the heatmap, the spectrum of ``module`` read from the checkpoint ``model`` against
    its Marchenko-Pastur density, the trainable parameters by type when a selection is given, and a
    table naming every module type. Everything is computed before anything is written.
    """
    scan = as_scan(scan)
    _check_image_path(png)
    if module is not None and model is None:
        raise SpectrumError(f"--module {module} needs the checkpoint it was scanned from: add --model PATH.")
    for path in (output, png):
        if path is not None:
            check_writable(path)
    sel = None
    if selection is not None:
        from .selection import load_selection

        sel = load_selection(selection)
    chosen = selected_modules(sel, scan)
    grid = score_grid(scan, chosen)
    _require_cells(grid, scan)
    heat = _png(heatmap_figure(grid, scan.estimator, _title(scan)))
    spectrum = module_spectrum(scan, module, model) if module is not None else None
    html_text = None
    if output is not None:
        html_text = render_html(scan, grid, heat, chosen, sel, spectrum)
    png_path = write_bytes_atomic(png, heat) if png is not None else None
    html_path = write_text_atomic(output, html_text) if html_text is not None else None
    return ReportFiles(html_path, png_path, grid, chosen)


# ---------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row figure{margin:0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8em;color:#555;max-width:60em}
table{border-collapse:collapse;font-size:.85em}td,th{border-bottom:1px solid #ddd;padding:.25em .7em;text-align:right}
td:first-child,th:first-child{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace}
.meta{color:#555;font-size:.9em}
"""


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def type_rows(scan: ScanResult, selected: Iterable[str]) -> list[dict[str, Any]]:
    """One summary row per type in the scan (every kind), types in file order."""
    chosen = set(selected)
    out = []
    for t, mods in scan.by_type().items():
        scores = [m.snr for m in mods if m.ranked]
        finite = [s for s in scores if math.isfinite(s)]
        out.append({
            "type": t, "kind": mods[0].kind, "modules": len(mods),
            "scored": len(scores), "inf": len(scores) - len(finite),
            "median": float(np.median(finite)) if finite else None,
            "max": max(finite) if finite else None,
            "selected": sum(m.name in chosen for m in mods),
        })
    return out


def rule_text(sel: Any) -> str | None:
    """Which rule and percent made a selection, as far as its file records it (a .yaml or .txt does not)."""
    rule = dict(getattr(sel, "rule", None) or {})
    p = rule.get("top_percent")
    if rule.get("compat"):
        return f"the reference tool's rule (--compat): the top {p:g}% of each module type"
    if rule.get("rule") == "per-type":
        return f"the per-type rule (Spectrum-{p:g}): the top {p:g}% of each module type"
    if rule.get("rule") == "global":
        return f"the global rule: the top {p:g}% of all ranked modules together"
    if rule.get("rule") == "budget":
        return f"the budget rule: {rule.get('budget')} ({rule.get('budget_params', 0):,} parameters)"
    return None


def selection_text(scan: ScanResult, sel: Any, selected: list[str]) -> str:
    """The one count of a selection: its rule, its ranked modules (the red boxes) and what else it trains."""
    from .selection import count_params, tied_embeddings

    ranked_names = {m.name for m in scan.modules if m.kind in RANKED_KINDS}
    ranked = [n for n in selected if n in ranked_names]
    others = [n for n in selected if n not in ranked_names]
    trainable, total = count_params(scan, selected)
    what = f"{len(ranked)} ranked modules (the red boxes)"
    if others:
        tied = tied_embeddings(scan)
        names = [n + (" (tied to lm_head)" if tied and n.endswith("embed_tokens") else "") for n in others]
        listed = ", ".join(names[:4]) + (" …" if len(names) > 4 else "")
        what += (f" and {listed}" if len(names) == 1 else f" and {len(names)} more modules ({listed})") + \
            ", which the heatmap does not draw"
    if trainable is not None and total:
        amount = f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%)"
    else:
        amount = f"{len(selected)} of {len(scan.modules)} modules (the scan records no shapes to count parameters)"
    rule = rule_text(sel)
    how = (f"Chosen by {rule}." if rule else f"The rule is not recorded in {sel.rule.get('source', 'the selection')}"
           " (a .json selection from `spectrum select` records it).")
    return f"Trains {amount}: {what}. {how}"


def render_html(scan: ScanResult, grid: ScoreGrid, heat_png: bytes, selected: list[str], sel: Any,
                spectrum: Spectrum | None) -> str:
    esc = html.escape
    figures = [f"<figure>{_img(heat_png, 'score heatmap')}<figcaption>Rows: layers; columns: module types "
               f"({esc(scan.estimator or 'unknown')} estimator). A higher score means more signal above the noise "
               "of a random matrix of the same shape: selection trains the highest-scoring modules first. "
               f"{esc(legend_text(grid))}.</figcaption></figure>"]
    if spectrum is not None:
        figures.append(f"<figure>{_img(_png(spectrum_figure(spectrum)), 'spectrum of ' + spectrum.name)}"
                       "<figcaption>Singular values of the module against the Marchenko-Pastur density of a pure-"
                       "noise matrix of the same shape and fitted noise scale; values right of the edge are signal."
                       "</figcaption></figure>")
    parts = [f"<h1>Spectrum report: {esc(scan.model or 'scan')}</h1>",
             f'<p class="meta">estimator: <b>{esc(scan.estimator or "unknown")}</b> · {len(scan.modules)} entries: '
             f"{esc(scan.tally())} · {len(grid.layers)} layers · {len(scan.types())} types · layout {esc(scan.layout)}"
             + (f" · fingerprint {esc(scan.fingerprint[:16])}" if scan.fingerprint else "") + "</p>"]
    if storage_summary(scan):
        parts.append(f'<p class="meta">{esc(storage_summary(scan))}: quantization rounding adds noise to their '
                     "spectra (see docs/estimators.md).</p>")
    if sel is not None:
        parts.append(f"<p><b>Selection.</b> {esc(selection_text(scan, sel, selected))}</p>")
    parts.append('<div class="row">' + "".join(figures) + "</div>")
    if sel is not None:
        rows, unit = trainable_by_type(scan, selected)
        parts.append(f"<h2>Selected by type</h2><p>Per module type: selected (red) against all (grey) {esc(unit)}."
                     "</p>" + _img(_png(params_figure(rows, unit)), "trainable parameters by type"))
    if grid.outside:
        names = ", ".join(esc(m.name) for m in grid.outside[:12])
        parts.append(f"<p class=\"meta\">Outside the layers (not in the heatmap): {names}"
                     + (" …" if len(grid.outside) > 12 else "") + "</p>")
    head = "".join(f"<th>{h}</th>" for h in ("type", "kind", "modules", "scored", "+inf", "median", "max", "selected"))
    body = "".join(
        f"<tr><td>{esc(r['type'])}</td><td>{esc(r['kind'])}</td><td>{r['modules']}</td><td>{r['scored']}</td>"
        f"<td>{r['inf']}</td><td>{_fmt(r['median'])}</td><td>{_fmt(r['max'])}</td><td>{r['selected']}</td></tr>"
        for r in type_rows(scan, selected)
    )
    parts.append(f"<h2>Module types</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    title = esc(f"Spectrum report: {scan.model}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------- show


def top_modules(scan: ScanResult, top: int | None = None, type: str | None = None,
                kinds: tuple[str, ...] | None = RANKED_KINDS) -> list[ModuleScore]:
    """Modules sorted by score, highest first (+inf first, unscored last), optionally one type only.

    ``type`` matches a type as written in the scan or its expert-grouped column
    (``mlp.experts.down_proj`` matches the reference files' ``mlp.experts.3.down_proj``).
    """
    if top is not None and top < 1:
        raise SpectrumError(f"--top {top}: give a positive number of modules to show.")
    mods = [m for m in scan.modules if kinds is None or m.kind in kinds]
    if type is not None:
        mods = [m for m in mods if m.type == type or column_type(m) == type]
        if not mods:
            avail = list(dict.fromkeys(column_type(m) for m in scan.modules))
            raise SpectrumError(f"No module of type {type!r} in the scan of {scan.model!r}. "
                                f"Types: {', '.join(avail[:30])}" + (" …" if len(avail) > 30 else ""))
    mods = sorted(mods, key=lambda m: (not m.ranked, -(m.snr if m.ranked else 0.0)))
    return mods[:top] if top is not None else mods


def scan_table(scan: ScanResult, top: int | None = None, type: str | None = None, all_kinds: bool = False):
    """A rich Table of ``top_modules`` for the terminal."""
    from rich.table import Table

    mods = top_modules(scan, top, type, None if all_kinds else RANKED_KINDS)
    caption = f"{len(mods)} shown of {len(scan.modules)} modules"
    if storage_summary(scan):
        caption += f"; {storage_summary(scan)}"
    table = Table(title=f"{scan.model} ({scan.estimator} estimator)", box=None, pad_edge=False, caption=caption)
    shapes = any(m.shape for m in mods)
    stored = any(m.dequantized for m in scan.modules)
    table.add_column("#", justify="right")
    table.add_column("module", overflow="fold")
    table.add_column("score", justify="right", no_wrap=True)
    if shapes:
        table.add_column("shape", no_wrap=True)
    if stored:
        table.add_column("stored", no_wrap=True)
    for i, m in enumerate(mods, 1):
        row = [str(i), m.name, _fmt(m.snr) if m.ranked else "[dim]skipped[/]"]
        row += ["x".join(map(str, m.shape))] if shapes else []
        row += [_stored(m)] if stored else []
        table.add_row(*row)
    return table


def _stored(m: ModuleScore) -> str:
    return f"{m.dtype or '?'}, dequantized" if m.dequantized else (m.dtype or "")

