"""Where two scans of the same architecture differ (a base model against its instruct version, say).

Scores are compared module by module, so the scans must hold the same modules with the same shapes
and come from the same estimator (the two estimators' scores live on different scales). The
difference is B - A; +inf on either side gives no finite difference and is masked, never ranked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SpectrumError
from .figures import diff_figure, png_bytes
from .files import check_writable, write_bytes_atomic
from .grids import ScoreGrid, as_scan, score_grid
from .results import ModuleScore, ScanResult

if TYPE_CHECKING:
    from rich.console import JustifyMethod


@dataclass
class ModuleDiff:
    name: str
    type: str
    layer: int | None
    a: float | None
    b: float | None

    @property
    def diff(self) -> float | None:
        if self.a is None or self.b is None or not (math.isfinite(self.a) and math.isfinite(self.b)):
            return None
        return self.b - self.a

    @property
    def relative(self) -> float | None:
        """B / A - 1: a change of the same size means more on a small score than on a large one."""
        d = self.diff
        return d / abs(self.a) if d is not None and self.a else None


@dataclass
class ScanDiff:
    """Per-module differences of two scans, largest change first (relative or absolute, as asked)."""

    model_a: str
    model_b: str
    estimator: str
    modules: list[ModuleDiff]
    grid: ScoreGrid
    png: Path | None = None

    def top(self, n: int | None = None) -> list[ModuleDiff]:
        return self.modules[:n] if n is not None else list(self.modules)


def _score(m: ModuleScore) -> float | None:
    return m.snr if m.ranked else None


def check_comparable(a: ScanResult, b: ScanResult) -> None:
    """Refuse scans that cannot be compared module by module, saying what differs and what to do."""
    names_a, names_b = {m.name for m in a.modules}, {m.name for m in b.modules}
    if names_a != names_b:
        only_a, only_b = sorted(names_a - names_b), sorted(names_b - names_a)
        detail = "; ".join(
            f"{len(only)} only in {label} (e.g. {only[0]})" for only, label in ((only_a, "A"), (only_b, "B")) if only
        )
        raise SpectrumError(
            f"The scans hold different modules ({detail}), so they cannot be compared cell by cell. "
            "Compare scans of the same architecture (e.g. a base model and its instruct version), "
            "made with the same --modules."
        )
    shape_b = {m.name: m.shape for m in b.modules}
    for m in a.modules:
        other = shape_b[m.name]
        if m.shape and other and list(m.shape) != list(other):
            raise SpectrumError(
                f"{m.name} has shape {m.shape} in A but {other} in B: these are different "
                "architectures. Compare scans of the same model family and size."
            )
    if a.estimator and b.estimator and a.estimator != b.estimator:
        raise SpectrumError(
            f"Scan A was scored with the {a.estimator!r} estimator and B with {b.estimator!r}; their "
            f"scores are on different scales. Re-scan one with --estimator {a.estimator}."
        )


def compare(
    scan_a: ScanResult | str | os.PathLike,
    scan_b: ScanResult | str | os.PathLike,
    png: str | os.PathLike | None = None,
    relative: bool = True,
) -> ScanDiff:
    """Differences B - A per module and per heatmap cell; writes the difference heatmap to ``png`` if given.

    The heatmap shows the relative change B / A - 1 (in percent) by default, because scores span decades
    and an absolute heatmap shows only the largest-scoring type; ``relative=False`` shows B - A.
    """
    a, b = as_scan(scan_a), as_scan(scan_b)
    if png is not None and Path(png).suffix.lower() != ".png":
        raise SpectrumError(f"{png}: the difference heatmap is written as PNG; give a file name ending in .png.")
    if png is not None:
        check_writable(png)
    check_comparable(a, b)
    by_b = {m.name: m for m in b.modules}
    diffs = [ModuleDiff(m.name, m.type, m.layer, _score(m), _score(by_b[m.name])) for m in a.modules]
    metric = (lambda d: d.relative) if relative else (lambda d: d.diff)
    diffs.sort(key=lambda d: (metric(d) is None, -abs(metric(d) or 0.0)))
    grid = diff_grid(a, diffs, relative)
    result = ScanDiff(a.model, b.model, a.estimator or b.estimator, diffs, grid)
    if png is not None:
        what = "change B / A - 1, %" if relative else "score B - A"
        fig = diff_figure(grid, f"{what}, {result.estimator or 'unknown'} estimator", f"A: {a.model}\nB: {b.model}")
        result.png = write_bytes_atomic(png, png_bytes(fig))
    return result


def diff_grid(a: ScanResult, diffs: list[ModuleDiff], relative: bool = True) -> ScoreGrid:
    """The layer x type grid of median differences (percent changes if ``relative``), laid out like A's heatmap."""
    d = {x.name: (None if x.relative is None else 100 * x.relative) if relative else x.diff for x in diffs}
    return score_grid(a, value=lambda m: d[m.name])


def diff_table(result: ScanDiff, top: int | None = 20, relative: bool = True):
    """A rich Table of the largest changes."""
    from rich.table import Table

    from .tables import format_score

    rows = result.top(top)
    table = Table(
        title=f"A = {result.model_a}  B = {result.model_b}  ({result.estimator} estimator)",
        box=None,
        pad_edge=False,
        caption=f"{len(rows)} largest {'relative' if relative else 'absolute'} changes "
        f"of {len(result.modules)} modules",
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("module", "left"),
        ("A", "right"),
        ("B", "right"),
        ("B - A", "right"),
        ("change", "right"),
    )
    for col, just in columns:
        table.add_column(col, justify=just)
    for d in rows:
        change = f"{100 * d.relative:+.2f}%" if d.relative is not None else "–"
        diff = f"{d.diff:+.4g}" if d.diff is not None else "–"
        table.add_row(d.name, format_score(d.a), format_score(d.b), diff, change)
    return table
