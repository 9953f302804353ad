"""From a scan to the modules to train: the rules, their order, and the Selection they produce.

A Selection carries both views a trainer needs: ``modules`` (the module names chosen) and
``patterns`` (Axolotl's ``unfrozen_parameters`` list, which ``freeze`` applies the same way Axolotl
does). Ranking order is fixed and documented so a selection never depends on sort accidents:

* finite scores high to low, ties in file (scan) order;
* then modules without a finite score (NaN/None, and +inf outside ``compat``) in file order;
* in ``compat`` mode +inf ranks above everything, exactly as the reference tool's ``sorted`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import architecture, axolotl
from .axolotl import module_pattern, pattern_module
from .catalogue import resolve_scan
from .errors import SpectrumError
from .estimators import REGISTRY
from .models import load_meta_model, tied_aliases, tied_head
from .reference import REFERENCE_EXTRAS, entries, top_by_type
from .results import ModuleScore, ScanResult

FORMAT = "spectrum-llm/selection"
FORMAT_VERSION = 1
RULES = ("per-type", "global", "budget")
#: the percent of each module type kept when none is given (the reference tool's default, Spectrum-50).
DEFAULT_TOP_PERCENT = 50.0


@dataclass
class TypeSelection:
    """What one module type contributed: how many candidates, how many kept, and their parameters."""

    type: str
    total: int
    kept: int
    modules: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    numel: int = 0
    selected_numel: int = 0


@dataclass
class Selection:
    """The modules to train and the Axolotl patterns that unfreeze exactly them.

    ``patterns`` = ``extras`` (embeddings, lm_head, norms) followed by each type's patterns in
    ``types`` order; the YAML export writes a ``# <type> layers`` comment before each type.
    """

    modules: list[str]
    patterns: list[str]
    types: dict[str, TypeSelection] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    model: str = ""
    estimator: str = ""
    trainable_params: int | None = None
    total_params: int | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)
    extra_params: int | None = None  # of trainable_params, those of the extras (embeddings, lm_head, norms)
    architecture: dict[str, Any] | None = None  # the model's layers and shapes (see architecture.py); None: unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "estimator": self.estimator,
            "rule": self.rule,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "extra_params": self.extra_params,
            "modules": self.modules,
            "patterns": self.patterns,
            "extras": self.extras,
            "types": {t: asdict(v) for t, v in self.types.items()},
            "scores": {k: (v if v is None or math.isfinite(v) else str(v)) for k, v in self.scores.items()},
            "shapes": self.shapes,
            "architecture": self.architecture,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "selection") -> Selection:
        if data.get("format") != FORMAT:
            raise SpectrumError(
                f'{source} is JSON but not a spectrum-llm selection (no "format": "{FORMAT}"). '
                "Create one with `spectrum select SCAN -o sel.json`."
            )
        try:
            types = {t: TypeSelection(**v) for t, v in (data.get("types") or {}).items()}
            scores = {k: (float(v) if v is not None else None) for k, v in (data.get("scores") or {}).items()}
            sel = cls(
                modules=list(data["modules"]),
                patterns=list(data["patterns"]),
                types=types,
                scores=scores,
                rule=dict(data.get("rule") or {}),
                extras=list(data.get("extras") or []),
                model=data.get("model", ""),
                estimator=data.get("estimator", ""),
                trainable_params=data.get("trainable_params"),
                total_params=data.get("total_params"),
                shapes={k: list(v) for k, v in (data.get("shapes") or {}).items()},
                extra_params=data.get("extra_params"),
                architecture=data.get("architecture"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SpectrumError(
                f"{source} is a damaged selection file ({e}). Re-create it with `spectrum select`."
            ) from None
        axolotl.check_patterns(sel.patterns, source)
        return sel

    @classmethod
    def from_patterns(cls, patterns: Sequence[str], source: str = "patterns") -> Selection:
        """A selection known only by its patterns (an Axolotl YAML or a .txt list)."""
        patterns = [str(p) for p in patterns]
        axolotl.check_patterns(patterns, source)
        modules = [m for m in (pattern_module(p) for p in patterns) if m]
        return cls(modules=modules, patterns=patterns, extras=list(patterns), rule={"source": source})


def load_selection(obj: Selection | str | os.PathLike | Sequence[str]) -> Selection:
    """Accept a Selection, a .yaml/.json/.txt file, or a list of Axolotl patterns."""
    if isinstance(obj, Selection):
        return obj
    if isinstance(obj, (list, tuple)):
        return Selection.from_patterns(obj, "the pattern list")
    if not isinstance(obj, (str, os.PathLike)):
        raise SpectrumError(
            f"Cannot read a selection from {type(obj).__name__}: pass a Selection, a path to a "
            ".yaml/.json/.txt file, or a list of patterns."
        )
    path = Path(obj)
    if not path.is_file():
        raise SpectrumError(f"Selection file {path} does not exist. Create it with `spectrum select SCAN -o {path}`.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SpectrumError(f"{path} is not valid JSON ({e}).") from None
        if not isinstance(data, dict):
            raise SpectrumError(f"{path} is not a spectrum-llm selection (expected a JSON object).")
        return Selection.from_json(data, str(path))
    if suffix in axolotl.SUFFIXES:
        return Selection.from_patterns(axolotl.read(path), str(path))
    raise SpectrumError(f"{path}: unknown selection format {suffix or '(no extension)'}; use .yaml, .json or .txt.")


# ---------------------------------------------------------------------------------------------- select


def _order_key(compat: bool):
    """Sort key for (file_index, score): see the module docstring for the order it defines."""

    def key(item: tuple[int, float | None]) -> tuple:
        i, s = item
        if s is None or math.isnan(s):
            return (2, 0.0, i)
        if math.isinf(s):
            if compat and s > 0:
                return (0, -math.inf, i)
            return (2, 0.0, i) if s > 0 else (1, math.inf, i)
        return (1, -s, i)

    return key


def rank(modules: Sequence[ModuleScore], compat: bool = False) -> list[ModuleScore]:
    """Modules best first, in the documented order (stable: ties keep the given order)."""
    key = _order_key(compat)
    order = sorted(range(len(modules)), key=lambda i: key((i, modules[i].snr)))
    return [modules[i] for i in order]


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBgGtT]?)\s*$")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_budget(budget: float | int | str) -> tuple[float | None, int | None]:
    """``0.25`` -> a fraction of the model; ``500M``/``1.5B``/``200000`` -> a parameter count."""
    if isinstance(budget, str):
        m = _SIZE.match(budget)
        if not m:
            raise SpectrumError(
                f"Budget {budget!r} is not understood: use a fraction like 0.25 or a count like 500M, 1.5B or 200000."
            )
        value, unit = float(m.group(1)), m.group(2).lower()
        if not unit and value <= 1:
            budget = value
        else:
            budget = int(value * _UNITS[unit])
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise SpectrumError(f"Budget {budget!r} must be a positive fraction (0, 1] or a parameter count.")
    if isinstance(budget, float) and budget <= 1:
        return budget, None
    return None, int(budget)


def candidates(scan: ScanResult, parts: bool = False) -> list[ModuleScore]:
    """The modules ``select`` ranks (before ``include``/``exclude``), in scan order: the weight matrices
    (``kind == "linear"``), whole; with ``parts``, per-part entries replace the wholes that have parts."""
    linear = [m for m in scan.modules if m.kind == "linear"]
    if not parts:
        return [m for m in linear if m.part is None]
    has_parts = {m.param for m in linear if m.part is not None}
    return [m for m in linear if m.part is not None or m.param not in has_parts]


def _model_numel(model: Any) -> tuple[dict[str, int], bool]:
    """Parameter sizes by name, each tensor once under the name Axolotl matches (``named_parameters()``), and
    whether lm_head is tied to the embeddings; from a module or a model folder (built on the meta device)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_meta_model(model)
    tied = any(a.endswith("lm_head.weight") for a in tied_aliases(model))
    return {n: p.numel() for n, p in model.named_parameters()}, tied


def _numel_of(m: ModuleScore, by_param: dict[str, int] | None) -> int:
    if m.numel:
        return m.numel
    if by_param is None:
        return 0
    if m.rows is not None and m.param in by_param:
        return 0  # a slice: only the scan knows its size
    return sum(n for p, n in by_param.items() if p == m.param or p.startswith(m.name + "."))


def _bias_numel(m: ModuleScore, biases: dict[str, int], by_param: dict[str, int] | None) -> int:
    """A whole module's pattern ``^<module>.(weight|bias)$`` also trains its bias: count it."""
    if m.rows is not None or m.param != m.name + ".weight":
        return 0
    if not m.numel:
        return 0  # _numel_of summed every parameter under the module from the model already
    bias = m.name + ".bias"
    return biases.get(bias) or (by_param or {}).get(bias, 0)


def select(
    scan: ScanResult | str | os.PathLike,
    *,
    top_percent: float = DEFAULT_TOP_PERCENT,
    rule: str = "per-type",
    budget: float | int | str | None = None,
    include: str | None = None,
    exclude: str | None = None,
    train_embeddings: bool = True,
    train_lm_head: bool | None = None,
    train_norms: bool = False,
    parts: bool = False,
    compat: bool = False,
    model: Any = None,
    catalogue: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> Selection:
    """Choose the modules to train from a scan.

    ``rule``: ``per-type`` keeps the top ``top_percent`` of each module type (the paper's
    Spectrum-n, ``int(n * P / 100)`` per type); ``global`` keeps the top ``top_percent`` of all
    modules together (only meaningful for a scale-invariant estimator, so refused on reference
    scores); ``budget`` fills a trainable-parameter budget (``0.25`` of the model or ``"500M"``)
    by raising every type's percentile together, stopping before the first module that would
    overflow it. ``include``/``exclude`` are regexes (``re.search``) on module names that narrow the
    candidates. ``compat`` reproduces the reference tool's YAML exactly and ignores the other options.
    ``model`` (a module or folder) supplies parameter sizes when the scan lacks them.

    A tied lm_head is the embedding matrix, which Axolotl (and ``freeze``) know only by its embedding name,
    so it trains exactly when ``^<embedding>$`` is listed. ``train_lm_head`` (default: yes, or as
    ``train_embeddings`` when tied) then asks for that tensor too: ``train_embeddings=False,
    train_lm_head=True`` on a tied model lists the embedding pattern, and ``rule["lm_head_tied"]`` is set.

    ``scan`` is a ScanResult, a scan file, or a model: a local checkpoint is scanned (once, cached); a model
    id with no local weights takes its published scan from the catalogue (users' ``catalogue`` folders and
    ``$SPECTRUM_CATALOGUE`` first), and ``rule["scan"]`` says which scan was used.
    """
    source = None
    if not isinstance(scan, ScanResult):
        scan, source = resolve_scan(scan, catalogue=catalogue)
    sel = _select(
        scan,
        top_percent=top_percent,
        rule=rule,
        budget=budget,
        include=include,
        exclude=exclude,
        train_embeddings=train_embeddings,
        train_lm_head=train_lm_head,
        train_norms=train_norms,
        parts=parts,
        compat=compat,
        model=model,
    )
    if source:
        sel.rule["scan"] = source
    targets = {pattern_module(p) for p in sel.patterns}
    sel.architecture = architecture.of_scan(scan)
    sel.shapes = {
        m.name: list(m.shape)
        for m in scan.modules
        if m.name in targets and m.part is None and m.rows is None and len(m.shape) == 2
    }
    return sel


def _select(
    scan: ScanResult,
    *,
    top_percent,
    rule,
    budget,
    include,
    exclude,
    train_embeddings,
    train_lm_head,
    train_norms,
    parts,
    compat,
    model,
) -> Selection:
    if budget is not None:
        rule = "budget"
    if rule not in RULES:
        raise SpectrumError(f"Unknown rule {rule!r}: use one of {', '.join(RULES)}.")
    if rule != "budget":
        if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)) or not (0 < top_percent <= 100):
            raise SpectrumError(f"--top-percent must be in (0, 100], got {top_percent!r}.")
    elif budget is None:
        raise SpectrumError("The budget rule needs a budget: --budget 0.25 (a fraction) or --budget 500M.")
    if not scan.modules:
        raise SpectrumError(f"The scan of {scan.model or 'this model'} holds no modules. Re-run the scan.")
    if compat:
        return _select_compat(scan, top_percent)

    cands = candidates(scan, parts)
    for flag, regex in (("include", include), ("exclude", exclude)):
        if regex is None:
            continue
        try:
            rx = re.compile(regex)
        except re.error as e:
            raise SpectrumError(f"--{flag} {regex!r} is not a valid regex ({e}).") from None
        cands = [m for m in cands if bool(rx.search(m.name)) == (flag == "include")]
    if not cands:
        raise SpectrumError(
            f"No rankable modules in the scan of {scan.model or 'this model'}"
            f"{' after --include/--exclude' if include or exclude else ''}: "
            "check the filters, or scan the model again."
        )
    if all(m.snr is None or math.isnan(m.snr) for m in cands):
        raise SpectrumError(
            f"Every candidate module's score is missing or NaN in the scan of "
            f"{scan.model or 'this model'}; nothing can be ranked. Re-run the scan "
            "(see the skipped reasons in the scan file)."
        )
    if rule == "global" and (est := REGISTRY.get(scan.estimator)) is not None and not est.scale_invariant:
        raise SpectrumError(
            "The global rule compares scores across module types, but the reference estimator's "
            "scale differs by type. Use --rule per-type, or re-scan with --estimator mp."
        )

    by_param, tied = _model_numel(model) if model is not None else (None, tied_head(scan))
    if train_lm_head is None:
        train_lm_head = train_embeddings if tied else True
    groups: dict[str, list[ModuleScore]] = {}
    for m in cands:
        groups.setdefault(m.type, []).append(m)
    ranked = {t: rank(ms) for t, ms in groups.items()}
    biases = {m.param: m.numel for m in scan.modules if m.kind == "bias"}
    numel = {m.name: _numel_of(m, by_param) + _bias_numel(m, biases, by_param) for m in cands}

    extras, extra_numel = _extras(scan, train_embeddings, train_lm_head, train_norms, by_param, bool(tied))
    chosen: set[str]
    info: dict[str, Any] = {
        "rule": rule,
        "estimator": scan.estimator,
        "parts": parts,
        "train_embeddings": train_embeddings,
        "train_lm_head": train_lm_head,
        "train_norms": train_norms,
        "include": include,
        "exclude": exclude,
    }
    if tied:
        info["lm_head_tied"] = True
    if rule == "per-type":
        info["top_percent"] = top_percent
        chosen = {m.name for t, ms in ranked.items() for m in ms[: int(len(ms) * top_percent / 100)]}
    elif rule == "global":
        info["top_percent"] = top_percent
        pool = rank(cands)
        chosen = {m.name for m in pool[: int(len(pool) * top_percent / 100)]}
    else:
        chosen, budget_info = _fill_budget(scan, ranked, numel, extra_numel, budget, by_param)
        info.update(budget_info)

    types: dict[str, TypeSelection] = {}
    modules: list[str] = []
    patterns = list(extras)
    for t, ms in ranked.items():
        kept = [m for m in ms if m.name in chosen]
        ts = TypeSelection(
            type=t,
            total=len(ms),
            kept=len(kept),
            modules=[m.name for m in kept],
            patterns=[module_pattern(m) for m in kept],
            numel=sum(numel[m.name] for m in ms),
            selected_numel=sum(numel[m.name] for m in kept),
        )
        types[t] = ts
        modules += ts.modules
        patterns += ts.patterns
    if not patterns:
        raise SpectrumError(
            f"--top-percent {top_percent} keeps no module (each type keeps int(n * P / 100)) and "
            "embeddings, lm_head and norms are off: raise --top-percent."
        )
    known = all(numel[m.name] for m in cands)
    total = _total_params(scan, by_param)
    trainable = sum(t.selected_numel for t in types.values()) + extra_numel if known and total else None
    return Selection(
        modules=modules,
        patterns=patterns,
        types=types,
        scores={m.name: m.snr for m in cands},
        rule=info,
        extras=extras,
        model=scan.model,
        estimator=scan.estimator,
        trainable_params=trainable,
        total_params=total,
        extra_params=extra_numel if trainable is not None else None,
    )


def count_params(scan: ScanResult, names: Iterable[str]) -> tuple[int | None, int | None]:
    """Trainable and total parameters of the modules ``names``, from the scan's shapes, as ``select`` counts
    them (a whole module with its bias; a tied head once, as the embedding). None where shapes are missing."""
    chosen = set(names)
    biases = {m.param: m.numel for m in scan.modules if m.kind == "bias"}
    mods = [m for m in scan.modules if m.name in chosen]
    total = _total_params(scan, None)
    if not total or not all(m.numel for m in mods):
        return None, total
    return sum(m.numel + _bias_numel(m, biases, None) for m in mods), total


def _total_params(scan: ScanResult, by_param: dict[str, int] | None) -> int | None:
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


def _extras(
    scan: ScanResult, emb: bool, head: bool, norms: bool, by_param: dict[str, int] | None, tied: bool = False
) -> tuple[list[str], int]:
    """Patterns for embeddings, lm_head and norms (which are not ranked), with their parameter count.

    Tied, the head is the embedding: its own pattern matches nothing in Axolotl, so asking for the head
    lists the embedding pattern too, and the shared tensor counts once (as the embedding)."""
    out: list[str] = []
    size = 0
    for flag, kind, fallback in (
        (head, "lm_head", axolotl.LM_HEAD),
        (emb or (tied and head), "embedding", axolotl.EMBED_TOKENS),
        (norms, "norm", axolotl.ALL_NORMS),
    ):
        if not flag:
            continue
        if kind == "lm_head" and tied:
            out.append(fallback)
            continue
        ms = [m for m in scan.modules if m.kind == kind and m.part is None]
        if ms:
            out += [
                module_pattern(m) if kind == "norm" else axolotl.tensor_pattern(m.param or m.name + ".weight")
                for m in ms
            ]
            size += sum(_numel_of(m, by_param) for m in ms)
        else:
            out.append(fallback)
            if by_param is not None:
                rx = re.compile(fallback)
                size += sum(n for p, n in by_param.items() if rx.match(p))
    return list(dict.fromkeys(out)), size


def tied_embeddings(scan: ScanResult) -> bool:
    """Whether the output head shares the input embedding: our scan of the checkpoint lists no lm_head."""
    if scan.layout != "spectrum-llm":
        return False  # reference scans often list neither; they cannot tell
    if scan.config.get("tie_word_embeddings") is True:
        return True
    kinds = {m.kind for m in scan.modules}
    return "embedding" in kinds and "lm_head" not in kinds


def extras_text(sel: Selection, tied: bool) -> str:
    """`` + model.embed_tokens (tied to lm_head)``: what a selection trains besides its ranked modules."""
    names = [pattern_module(p) or p for p in sel.extras]
    if tied and "lm_head" in names and any(n.endswith("embed_tokens") for n in names):
        names = [n + (" (tied to lm_head)" if n.endswith("embed_tokens") else "") for n in names if n != "lm_head"]
    return f" + {', '.join(names)}" if names else ""


def embedding_note(trainable: int | None, always: int | None, flags: str) -> str | None:
    """One line when the always-trained embeddings and head are most of what trains, naming the flags that
    drop them: Gemma-3-270M's tied 262,144 x 640 embedding is 168M of Spectrum-25's 190M trainable parameters."""
    if not trainable or not always or 2 * always <= trainable:
        return None
    return (
        f"note: {always:,} of the {trainable:,} trainable parameters ({100 * always / trainable:.0f}%) are "
        f"embeddings/lm_head, which every selection trains; {flags} to train only the selected modules."
    )


def _fill_budget(scan, ranked, numel, extra_numel, budget, by_param) -> tuple[set[str], dict[str, Any]]:
    """Take modules in order of within-type rank fraction (every type's percentile rises together)."""
    fraction, count = parse_budget(budget)
    if fraction is not None:
        total = _total_params(scan, by_param)
        if not total:
            raise SpectrumError(
                "A fractional budget needs the model's size, which this scan does not record "
                "(reference scans do not). Pass --model DIR, or give the budget as a count (500M)."
            )
        count = int(total * fraction)
    if any(not numel[m.name] for ms in ranked.values() for m in ms):
        raise SpectrumError(
            "The budget rule needs each module's parameter count, which this scan lacks. "
            "Pass --model DIR (the checkpoint folder) or use --rule per-type."
        )
    if extra_numel > count:
        raise SpectrumError(
            f"Embeddings/lm_head/norms alone have {extra_numel:,} parameters, over the budget of "
            f"{count:,}. Raise --budget or pass --no-train-embeddings/--no-train-lm-head."
        )
    order = sorted(
        ((k / len(ms), ti, k, m) for ti, ms in enumerate(ranked.values()) for k, m in enumerate(ms, 1)),
        key=lambda x: x[:3],
    )
    chosen: set[str] = set()
    used = extra_numel
    for _, _, _, m in order:
        if used + numel[m.name] > count:
            break
        used += numel[m.name]
        chosen.add(m.name)
    return chosen, {"budget": budget, "budget_params": count}


def _select_compat(scan: ScanResult, top_percent: float) -> Selection:
    """The reference tool's YAML for this scan, byte for byte (its rules: see ``reference``)."""
    listed = entries(scan)
    if all(math.isnan(s) for _, _, s in listed):
        raise SpectrumError(
            f"Every score in the scan of {scan.model or 'this model'} is missing or NaN; "
            "nothing can be ranked. Re-run the scan."
        )
    numel = {m.name: m.numel for m in scan.modules}
    counts: dict[str, int] = {}
    for _, t, _ in listed:
        counts[t] = counts.get(t, 0) + 1
    types: dict[str, TypeSelection] = {}
    modules: list[str] = []
    for t, kept in top_by_type(scan, top_percent).items():
        names = [n for n, _ in kept]
        types[t] = TypeSelection(
            type=t,
            total=counts[t],
            kept=len(kept),
            modules=names,
            patterns=list(names),
            numel=sum(numel.get(n, 0) for n, tt, _ in listed if tt == t),
            selected_numel=sum(numel.get(n, 0) for n in names),
        )
        modules += names
    patterns = list(REFERENCE_EXTRAS) + modules
    return Selection(
        modules=modules,
        patterns=patterns,
        types=types,
        scores={n: (None if math.isnan(s) else s) for n, _, s in listed},
        rule={"rule": "per-type", "top_percent": top_percent, "compat": True, "estimator": scan.estimator},
        extras=list(REFERENCE_EXTRAS),
        model=scan.model,
        estimator=scan.estimator,
    )


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
