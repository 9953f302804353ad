"""The HTML report of a scan (and a selection): ``spectrum report``.

People decide what to train by looking at which depths and projections carry signal. The report puts the
score heatmap, one module's spectrum against the Marchenko-Pastur law, the parameters a selection trains by
type and a table of every module type in one self-contained file: images as base64 PNG, CSS inline, nothing
to fetch. Everything is computed before anything is written.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import estimators
from .axolotl import pattern_module
from .errors import SpectrumError
from .figures import Spectrum, heatmap_figure, legend_text, params_figure, png_bytes, spectrum_figure
from .files import check_writable, write_bytes_atomic, write_text_atomic
from .grids import ScoreGrid, as_scan, score_grid
from .models import tied_head
from .params import scan_param_count, trainable_by_type
from .results import RANKED_KINDS, ModuleScore, ScanResult, storage_summary
from .scanning import module_singular_values
from .selection_file import load_selection
from .selection_text import rule_text
from .tables import format_score


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
    return png_bytes(heatmap_figure(grid, scan.estimator, _title(scan)))


def _title(scan: ScanResult) -> str:
    return f"{scan.model or 'scan'}: score by layer and module type"


def _require_cells(grid: ScoreGrid, scan: ScanResult) -> None:
    if not grid.layers:
        raise SpectrumError(
            f"The scan of {scan.model!r} has no scored linear modules inside layers, so there is "
            "nothing to draw. Check the scan (`spectrum show SCAN`) or re-run it without --modules."
        )


def report(
    scan: ScanResult | str | os.PathLike,
    selection: Any = None,
    output: str | os.PathLike | None = "report.html",
    png: str | os.PathLike | None = None,
    module: str | None = None,
    model: str | os.PathLike | None = None,
) -> ReportFiles:
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
        sel = load_selection(selection)
    chosen = selected_modules(sel, scan)
    grid = score_grid(scan, chosen)
    _require_cells(grid, scan)
    heat = png_bytes(heatmap_figure(grid, scan.estimator, _title(scan)))
    spectrum = None
    if module is not None:
        assert model is not None  # refused above: --module needs --model
        spectrum = module_spectrum(scan, module, model)
    html_text = None
    if output is not None:
        html_text = render_html(scan, grid, heat, chosen, sel, spectrum)
    png_path = write_bytes_atomic(png, heat) if png is not None else None
    html_path = write_text_atomic(output, html_text) if output is not None and html_text is not None else None
    return ReportFiles(html_path, png_path, grid, chosen)


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


def type_rows(scan: ScanResult, selected: Iterable[str]) -> list[dict[str, Any]]:
    """One summary row per type in the scan (every kind), types in file order."""
    chosen = set(selected)
    out = []
    for t, mods in scan.by_type().items():
        scores = [m.snr for m in mods if m.ranked and m.snr is not None]
        finite = [s for s in scores if math.isfinite(s)]
        out.append(
            {
                "type": t,
                "kind": mods[0].kind,
                "modules": len(mods),
                "scored": len(scores),
                "inf": len(scores) - len(finite),
                "median": float(np.median(finite)) if finite else None,
                "max": max(finite) if finite else None,
                "selected": sum(m.name in chosen for m in mods),
            }
        )
    return out


def selection_text(scan: ScanResult, sel: Any, selected: list[str]) -> str:
    """The one count of a selection: its rule, its ranked modules (the red boxes) and what else it trains."""
    ranked_names = {m.name for m in scan.modules if m.kind in RANKED_KINDS}
    ranked = [n for n in selected if n in ranked_names]
    others = [n for n in selected if n not in ranked_names]
    trainable, total = scan_param_count(scan, selected)
    what = f"{len(ranked)} ranked modules (the red boxes)"
    if others:
        tied = tied_head(scan)
        names = [n + (" (tied to lm_head)" if tied and n.endswith("embed_tokens") else "") for n in others]
        listed = ", ".join(names[:4]) + (" …" if len(names) > 4 else "")
        what += (
            f" and {listed}" if len(names) == 1 else f" and {len(names)} more modules ({listed})"
        ) + ", which the heatmap does not draw"
    if trainable is not None and total:
        amount = f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%)"
    else:
        amount = f"{len(selected)} of {len(scan.modules)} modules (the scan records no shapes to count parameters)"
    rule = rule_text(sel)
    how = (
        f"Chosen by {rule}."
        if rule
        else f"The rule is not recorded in {sel.rule.get('source', 'the selection')}"
        " (a .json selection from `spectrum select` records it)."
    )
    return f"Trains {amount}: {what}. {how}"


def render_html(
    scan: ScanResult, grid: ScoreGrid, heat_png: bytes, selected: list[str], sel: Any, spectrum: Spectrum | None
) -> str:
    esc = html.escape
    figures = [
        f"<figure>{_img(heat_png, 'score heatmap')}<figcaption>Rows: layers; columns: module types "
        f"({esc(scan.estimator or 'unknown')} estimator). A higher score means more signal above the noise "
        "of a random matrix of the same shape: selection trains the highest-scoring modules first. "
        f"{esc(legend_text(grid))}.</figcaption></figure>"
    ]
    if spectrum is not None:
        figures.append(
            f"<figure>{_img(png_bytes(spectrum_figure(spectrum)), 'spectrum of ' + spectrum.name)}"
            "<figcaption>Singular values of the module against the Marchenko-Pastur density of a pure-"
            "noise matrix of the same shape and fitted noise scale; values right of the edge are signal."
            "</figcaption></figure>"
        )
    parts = [
        f"<h1>Spectrum report: {esc(scan.model or 'scan')}</h1>",
        f'<p class="meta">estimator: <b>{esc(scan.estimator or "unknown")}</b> · {len(scan.modules)} entries: '
        f"{esc(scan.tally())} · {len(grid.layers)} layers · {len(scan.types())} types · layout {esc(scan.layout)}"
        + (f" · fingerprint {esc(scan.fingerprint[:16])}" if scan.fingerprint else "")
        + "</p>",
    ]
    storage = storage_summary(scan)
    if storage:
        parts.append(
            f'<p class="meta">{esc(storage)}: quantization rounding adds noise to their '
            "spectra (see docs/estimators.md).</p>"
        )
    if sel is not None:
        parts.append(f"<p><b>Selection.</b> {esc(selection_text(scan, sel, selected))}</p>")
    parts.append('<div class="row">' + "".join(figures) + "</div>")
    if sel is not None:
        rows, unit = trainable_by_type(scan, selected)
        parts.append(
            f"<h2>Selected by type</h2><p>Per module type: selected (red) against all (grey) {esc(unit)}."
            "</p>" + _img(png_bytes(params_figure(rows, unit)), "trainable parameters by type")
        )
    if grid.outside:
        names = ", ".join(esc(m.name) for m in grid.outside[:12])
        parts.append(
            f'<p class="meta">Outside the layers (not in the heatmap): {names}'
            + (" …" if len(grid.outside) > 12 else "")
            + "</p>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("type", "kind", "modules", "scored", "+inf", "median", "max", "selected"))
    body = "".join(
        f"<tr><td>{esc(r['type'])}</td><td>{esc(r['kind'])}</td><td>{r['modules']}</td><td>{r['scored']}</td>"
        f"<td>{r['inf']}</td><td>{format_score(r['median'])}</td><td>{format_score(r['max'])}</td>"
        f"<td>{r['selected']}</td></tr>"
        for r in type_rows(scan, selected)
    )
    parts.append(f"<h2>Module types</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    title = esc(f"Spectrum report: {scan.model}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def selected_modules(selection: Any, scan: ScanResult) -> list[str]:
    """Names of the selected modules that this scan contains.

    Takes whatever ``selection.load_selection`` reads: a Selection, a .yaml/.json/.txt file, or a list of
    patterns (plain module names are patterns too). A selection that shares no module with the scan was
    made for another model.
    """
    if selection is None:
        return []
    sel = load_selection(selection)
    names = list(dict.fromkeys([*sel.modules, *(m for m in map(pattern_module, sel.extras) if m)]))
    known = {m.name for m in scan.modules}
    hits = [n for n in names if n in known]
    if names and not hits:
        raise SpectrumError(
            f"None of the {len(names)} selected modules (e.g. {names[0]!r}) is in the scan of {scan.model!r}. "
            "Pass the selection made from this scan (`spectrum select SCAN ...`)."
        )
    tied = "lm_head" if tied_head(scan) else None  # a tied head is the embedding, listed once
    absent = [n for n in names if n not in known and n != tied]
    for pattern in (p for p in sel.extras if pattern_module(p) is None):  # a regex: does it name any tensor?
        try:
            rx = re.compile(pattern)
        except re.error:
            absent.append(pattern)
            continue
        if not any(rx.search(f"{n}.weight") or rx.search(n) for n in known):
            absent.append(pattern)
    if absent:
        logging.getLogger("spectrum_llm").warning(
            "%d selection pattern(s) match nothing in the scan of %r and are not drawn: %s",
            len(absent),
            scan.model,
            ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else ""),
        )
    return hits


def _find_module(scan: ScanResult, module: str) -> ModuleScore:
    by_name = {m.name: m for m in scan.modules}
    m = by_name.get(module)
    if m is None:
        import difflib

        close = difflib.get_close_matches(module, list(by_name), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `spectrum show SCAN` lists the module names."
        raise SpectrumError(f"Module {module!r} is not in the scan of {scan.model!r}.{hint}")
    return m


def module_spectrum(scan: ScanResult, module: str, model: str | os.PathLike) -> Spectrum:
    """One module's singular values, read again from the checkpoint as the scan read them; its MP noise
    scale, edge and score."""
    estimator = scan.estimator if scan.estimator in estimators.SPECTRAL else "reference"
    (rows, cols), s = module_singular_values(model, _find_module(scan, module), estimator)
    sc = estimators.score(s, rows, cols, estimator)
    sigma = estimators.mp_sigma(s, rows, cols)
    return Spectrum(
        module, (rows, cols), s.numpy(), sigma, estimators.mp_edge(sigma, rows, cols), sc.threshold, estimator, sc.snr
    )
