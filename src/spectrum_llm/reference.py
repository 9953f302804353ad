"""What the reference tool writes for a model, rebuilt from our scan of it, byte for byte.

The reference tool (QuixiAI/spectrum, formerly cognitivecomputations/spectrum, ``spectrum.py``) loads the model
and walks ``named_modules()``. Its rules, read from its code:

* every module with a ``weight`` is scored: 2-D weights, 1-D weights (norms) as a 1 x n matrix, whose one
  singular value gives signal / noise / max = 1.0 (``inf`` for an all-zero vector), and a tied ``lm_head``
  as a module of its own (the embedding matrix again, so the same score);
* a module's type is its name after the first all-digit part, or the whole name when there is none
  (``model.embed_tokens``, ``model.norm``, ``lm_head``);
* types are visited in its sort order (group by the first dot-separated part, groups sorted, names sorted
  within each), and a type collects every module whose name contains it; a module two types collect keeps
  its first place in the file and the last type's entry;
* the scan file is ``json.dump(..., indent=4)`` (no final newline, NaN/Infinity as such) of
  ``{name: {"snr": s, "type": t}}``, named ``snr_results_<slug>.json`` with ``/`` and ``_`` of the model id
  turned into ``-``;
* the YAML: the two extra patterns, then per type in file order ``sorted(key=snr, reverse=True)`` (stable),
  the first ``int(n * P / 100)`` names under a ``# <type> layers`` comment.

Our default mode differs on purpose (only weight matrices ranked, anchored patterns, our types); this module
is only for ``--compat`` and ``--reference-json``, and for reading the reference tool's two layouts back. Within
a type, modules come in our scan's (layer) order, which is the model's except where one type name contains
another inside the same layer.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .axolotl import EMBED_TOKENS, LM_HEAD
from .errors import SpectrumError
from .files import write_text_atomic
from .models import tied_head
from .results import ModuleScore, ScanResult

#: what the reference tool always unfreezes, first, in this order.
REFERENCE_EXTRAS = (LM_HEAD, EMBED_TOKENS)


def reference_type(name: str) -> str:
    """The reference tool's type of a module: the name after its first all-digit part, else the name."""
    parts = name.split(".")
    i = next((k for k, p in enumerate(parts) if p.isdigit()), -1)
    return ".".join(parts[i + 1 :]) if i != -1 else name


def sort_types(types: list[str]) -> list[str]:
    """The reference tool's order of types: grouped by first part, groups sorted, sorted within a group."""
    groups: dict[str, list[str]] = {}
    for t in types:
        groups.setdefault(t.split(".")[0], []).append(t)
    return [t for g in sorted(groups) for t in sorted(groups[g])]


def model_id(scan: ScanResult) -> str:
    """The model id the reference tool would be run with: a hub id as given, a builtin's hub id, else the
    folder or file name."""
    from .checkpoint import BUILTIN_IDS

    text = scan.model
    if text in BUILTIN_IDS:
        return BUILTIN_IDS[text]
    path = Path(text)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return text


def slug(model_id: str) -> str:
    """Axolotl's and the reference tool's file-name form of a model id: ``/`` and ``_`` become ``-``."""
    return str(model_id).replace("/", "-").replace("_", "-")


def file_name(model: str) -> str:
    return f"snr_results_{slug(model)}.json"


def _score(m: ModuleScore) -> float:
    """The reference tool's number for a module we scanned (or skipped)."""
    if m.snr is not None:
        return float(m.snr)
    if len(m.shape) == 1 or (len(m.shape) == 2 and min(m.shape) == 1):
        return 1.0  # one singular value: signal / noise / max = s / 1 / s
    if m.skipped and m.skipped.startswith("all-zero"):
        return math.inf
    return math.nan  # what the reference writes for a layer it fails on


def entries(scan: ScanResult) -> list[tuple[str, str, float]]:
    """(name, type, snr) in the order of the reference tool's scan file."""
    if scan.layout.startswith("reference"):
        return [(m.name, m.type, math.nan if m.snr is None else m.snr) for m in scan.modules]
    mods = [m for m in scan.modules if m.kind != "bias" and m.part is None and m.rows is None]
    score = {m.name: _score(m) for m in mods}
    names = [m.name for m in mods]
    if tied_head(scan) and "lm_head" not in score:
        emb = next((m for m in mods if m.kind == "embedding"), None)
        if emb is not None:
            names.append("lm_head")
            score["lm_head"] = score[emb.name]
    found: dict[str, tuple[str, float]] = {}
    for t in sort_types(list(dict.fromkeys(reference_type(n) for n in names))):
        for n in names:
            if t in n:
                found[n] = (t, score[n])
    return [(n, t, s) for n, (t, s) in found.items()]


def to_json_text(scan: ScanResult) -> str:
    """The reference tool's scan file for this model (what ``json.dump(data, f, indent=4)`` writes)."""
    return json.dumps({n: {"snr": s, "type": t} for n, t, s in entries(scan)}, indent=4)


def write_json(scan: ScanResult, folder: str | os.PathLike) -> Path:
    """Write ``snr_results_<slug>.json`` into ``folder``, named after the model as the reference tool names it."""
    return write_text_atomic(Path(folder) / file_name(model_id(scan)), to_json_text(scan))


def top_by_type(scan: ScanResult, top_percent: float) -> dict[str, list[tuple[str, float]]]:
    """Per type in file order, the kept (name, snr), sorted exactly as the reference tool sorts them."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for name, type_, snr in entries(scan):
        groups.setdefault(type_, []).append((name, snr))
    return {
        t: sorted(ms, key=lambda x: x[1], reverse=True)[: int(len(ms) * top_percent / 100)] for t, ms in groups.items()
    }


# ---- reading the reference tool's scan files (``scan_files.parse_scan`` hands their JSON here) ----------------

_LAYER = re.compile(r"\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER.search(name + ".")
    return int(m.group(1)) if m else None


def _reference_kind(name: str) -> str:
    low = name.lower()
    if "embed" in low or "wte" in low:
        return "embedding"
    if "lm_head" in low:
        return "lm_head"
    if "norm" in low or "ln_" in low:
        return "norm"
    return "linear"


def _finite_or_none(v: Any, name: str, where: str) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise SpectrumError(f"{where}: the score of {name!r} is {v!r}, not a number. Re-run the scan.") from None
    return f if not math.isnan(f) else None


def from_reference(data: dict[str, Any], where: str, model: str) -> ScanResult:
    """Read the reference tool's flat or grouped layout, keeping its types and file order."""
    first = next(iter(data.values()))
    modules: list[ModuleScore] = []
    if isinstance(first, dict) and "snr" in first:
        layout = "reference-flat"
        items: Iterable[tuple[str, str, Any]] = ((n, v.get("type", ""), v.get("snr")) for n, v in data.items())
    else:
        layout = "reference-grouped"
        items = ((n, t, s) for t, group in data.items() for n, s in group.items())
    for name, type_, raw in items:
        snr = _finite_or_none(raw, name, where)
        skipped = None
        if snr is None:
            skipped = "the scan recorded no score (NaN)"
        modules.append(
            ModuleScore(
                name=name,
                type=type_,
                layer=_layer_of(name),
                shape=[],
                snr=snr,
                kind=_reference_kind(name),
                param=name + ".weight",
                skipped=skipped,
            )
        )
    return ScanResult(model=model, estimator="reference", modules=modules, layout=layout)
