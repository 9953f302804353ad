"""The terminal view of a scan (``spectrum show``): modules sorted by score, and how a score is written.

``format_score`` is the one way a score appears in text (the show table, the report's type table and the
compare table): four significant digits, ``+inf`` spelled out, and a dash for none.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import SpectrumError
from .grids import column_type
from .results import RANKED_KINDS, ModuleScore, ScanResult, storage_summary


def view_scan(arg: ScanResult | str | os.PathLike) -> ScanResult:
    """The scan that ``report``, ``show`` and ``compare`` draw: a scan file, or a model id in the catalogue
    (yours first, then the published scans), as ``select`` takes it. Nothing is scanned here."""
    if isinstance(arg, ScanResult):
        return arg
    from .catalogue import find, near
    from .scan_files import load_scan

    text = str(arg)
    path = Path(text).expanduser()
    if path.is_file() or path.name.endswith((".json", ".json.gz")):
        return load_scan(path)
    entry = find(text)
    if entry is not None:
        return entry.load()
    hint = near(text)
    raise SpectrumError(
        f"{text} is neither a scan file nor a model in the catalogue"
        + (f" (did you mean {', '.join(hint)}?)" if hint else "")
        + f". Scan the model first (`spectrum scan {text} -o scan.json`, for a folder, weight file, builtin or hub "
        "id in the local cache) and pass scan.json, or use a published scan: `spectrum catalogue` lists them."
    )


def format_score(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def top_modules(
    scan: ScanResult, top: int | None = None, type: str | None = None, kinds: tuple[str, ...] | None = RANKED_KINDS
) -> list[ModuleScore]:
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
            raise SpectrumError(
                f"No module of type {type!r} in the scan of {scan.model!r}. "
                f"Types: {', '.join(avail[:30])}" + (" …" if len(avail) > 30 else "")
            )
    mods = sorted(mods, key=lambda m: (not m.ranked, -(m.snr if m.ranked and m.snr is not None else 0.0)))
    return mods[:top] if top is not None else mods


def scan_table(scan: ScanResult, top: int | None = None, type: str | None = None, all_kinds: bool = False):
    """A rich Table of ``top_modules`` for the terminal."""
    from rich.table import Table

    kinds = None if all_kinds else RANKED_KINDS
    mods = top_modules(scan, top, type, kinds)
    caption = f"{len(mods)} shown of {len(scan.modules)} modules"
    if type is not None:
        caption = f"{len(mods)} shown of {len(top_modules(scan, None, type, kinds))} {type} modules"
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
        row = [str(i), m.name, format_score(m.snr) if m.ranked else "[dim]skipped[/]"]
        row += ["x".join(map(str, m.shape))] if shapes else []
        row += [_stored(m)] if stored else []
        table.add_row(*row)
    return table


def _stored(m: ModuleScore) -> str:
    return f"{m.dtype or '?'}, dequantized" if m.dequantized else (m.dtype or "")
