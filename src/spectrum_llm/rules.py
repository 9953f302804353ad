"""The ranking rules: from a scan and a SelectConfig to the Selection they produce.

``per-type`` keeps the top n% of each module type (the paper's Spectrum-n), ``global`` the top n% of all
ranked modules together, ``budget`` fills a trainable-parameter budget; ``top-layers`` and ``top-layers-per-type``
pick by depth (``depth``), ``min_layer`` narrows every rule to the upper layers, and ``random`` replaces a pick
by a random one of its size (``random_control``); ``compat`` is the reference tool's rule, byte for byte (see
``reference``). Ranking order is fixed and documented so a selection never depends on sort
accidents:

* finite scores high to low, ties in file (scan) order;
* then modules without a finite score (NaN/None, and +inf outside ``compat``) in file order;
* in ``compat`` mode +inf ranks above everything, exactly as the reference tool's ``sorted`` does.

Embeddings, lm_head and norms are not ranked: they are added as ``extras`` when asked for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import architecture, axolotl, depth
from .axolotl import module_pattern, pattern_module
from .errors import SpectrumError
from .estimators import REGISTRY
from .models import tied_head
from .params import bias_numel, model_sizes, module_numel, scan_total_params
from .random_control import matched_draw, matched_modules
from .reference import REFERENCE_EXTRAS, entries, top_by_type
from .results import ModuleScore, ScanResult
from .select_config import RULES, SelectConfig, embedding_switches
from .selection_file import Selection, TypeSelection, load_selection


def order_key(compat: bool = False) -> Callable[[tuple[int, float | None]], tuple]:
    """The sort key of ranking, on (file_index, score) pairs: smaller is better. See the module docstring for the
    order it defines (``rank`` sorts by it)."""

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
    key = order_key(compat)
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


def choose(scan: ScanResult, config: SelectConfig) -> Selection:
    """The Selection ``config``'s rule makes from ``scan`` (``config.model``, a module or a folder, gives the
    parameter sizes when the scan lacks them; ``catalogue`` and the writing options are not read here)."""
    sel = _choose(scan, config)
    targets = {pattern_module(p) for p in sel.patterns}
    sel.architecture = architecture.of_scan(scan)
    sel.shapes = {
        m.name: list(m.shape)
        for m in scan.modules
        if m.name in targets and m.part is None and m.rows is None and len(m.shape) == 2
    }
    return sel


def _rule(scan: ScanResult, config: SelectConfig) -> str:
    """The rule to apply (a budget implies ``budget``), once the options and the scan allow it."""
    rule, budget, top_percent = config.rule, config.budget, config.top_percent
    if budget is not None and rule not in depth.DEPTH_RULES:
        rule = "budget"
    if rule not in RULES:
        raise SpectrumError(f"Unknown rule {rule!r}: use one of {', '.join(RULES)}.")
    if config.compat:
        given = [
            flag
            for flag, on in (
                ("--random", config.random),
                ("--match", config.match),
                ("--min-layer", config.min_layer is not None),
                (f"--rule {rule}", rule in depth.DEPTH_RULES),
            )
            if on
        ]
        if given:
            raise SpectrumError(
                f"--compat writes exactly what the reference tool writes; drop {' and '.join(given)}, or --compat."
            )
    if config.match_depth and not config.random:
        raise SpectrumError("--match-depth shapes a random draw: add --random (with --seed N).")
    if config.match and not config.random and rule != "top-layers":
        raise SpectrumError("--match gives --random its reference, or --rule top-layers its budget: add one of them.")
    if budget is not None and rule == "top-layers-per-type":
        raise SpectrumError("--rule top-layers-per-type keeps --top-percent of each type; drop --budget.")
    if rule not in ("budget", "top-layers") or (rule == "top-layers" and budget is None and not config.match):
        if isinstance(top_percent, bool) or not isinstance(top_percent, (int, float)) or not (0 < top_percent <= 100):
            raise SpectrumError(f"--top-percent must be in (0, 100], got {top_percent!r}.")
    elif rule == "budget" and budget is None:
        raise SpectrumError("The budget rule needs a budget: --budget 0.25 (a fraction) or --budget 500M.")
    if not scan.modules:
        raise SpectrumError(f"The scan of {scan.model or 'this model'} holds no modules. Re-run the scan.")
    return rule


def _ranked_candidates(scan: ScanResult, config: SelectConfig, rule: str) -> list[ModuleScore]:
    """``candidates`` narrowed by ``include``/``exclude``; an error if none is left or none can be ranked."""
    include, exclude = config.include, config.exclude
    cands = candidates(scan, config.parts)
    for flag, regex in (("include", include), ("exclude", exclude)):
        if regex is None:
            continue
        try:
            rx = re.compile(regex)
        except re.error as e:
            raise SpectrumError(f"--{flag} {regex!r} is not a valid regex ({e}).") from None
        cands = [m for m in cands if bool(rx.search(m.name)) == (flag == "include")]
    cands = depth.above(cands, config.min_layer, scan) if cands else cands
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
    return cands


def _choose(scan: ScanResult, config: SelectConfig) -> Selection:
    """``choose`` before the shapes: the rule's modules, the extras, the counts and the rule's record."""
    rule = _rule(scan, config)
    budget, top_percent, parts = config.budget, config.top_percent, config.parts
    include, exclude = config.include, config.exclude
    train_embeddings, train_lm_head = embedding_switches(
        config.embeddings, config.train_embeddings, config.train_lm_head
    )
    train_norms = config.train_norms
    if config.compat:
        return _select_compat(scan, top_percent)
    cands = _ranked_candidates(scan, config, rule)

    by_param, tied = model_sizes(config.model) if config.model is not None else (None, tied_head(scan))
    if train_lm_head is None:
        train_lm_head = train_embeddings if tied else True
    groups: dict[str, list[ModuleScore]] = {}
    for m in cands:
        groups.setdefault(m.type, []).append(m)
    ranked = {t: rank(ms) for t, ms in groups.items()}
    biases = {m.param: m.numel for m in scan.modules if m.kind == "bias"}
    numel = {m.name: module_numel(m, by_param) + bias_numel(m, biases, by_param) for m in cands}

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
    if config.min_layer is not None:
        info["min_layer"] = config.min_layer
    match, source = (load_selection(config.match), str(config.match)) if config.match else (None, "")
    if config.random and match is not None:
        chosen = set(matched_modules(scan, match, source))
    elif rule == "per-type":
        info["top_percent"] = top_percent
        chosen = {m.name for t, ms in ranked.items() for m in ms[: int(len(ms) * top_percent / 100)]}
    elif rule == "global":
        info["top_percent"] = top_percent
        pool = rank(cands)
        chosen = {m.name for m in pool[: int(len(pool) * top_percent / 100)]}
    elif rule == "budget":
        chosen, budget_info = _fill_budget(scan, ranked, numel, extra_numel, budget, by_param)
        info.update(budget_info)
    elif rule == "top-layers-per-type":
        info["top_percent"] = top_percent
        chosen = depth.top_per_type(groups, top_percent)
    else:
        count, budget_info = _top_layers_budget(scan, config, ranked, numel, extra_numel, by_param, match)
        chosen, layers = depth.top_layers(cands, numel, extra_numel, count)
        info.update(budget_info, layers=layers)
    if config.random:
        info["matched"] = {k: info.pop(k) for k in ("rule", "top_percent", "budget", "budget_params") if k in info}
        if match is not None:
            info["matched"] = {"selection": source, "rule": match.rule.get("rule")}
        chosen = matched_draw(scan, cands, chosen, config.seed, config.match_depth, config.depth_bins)
        info.update(rule="random", seed=config.seed, match_depth=config.match_depth)
        if config.match_depth:
            info["depth_bins"] = config.depth_bins

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
    total = scan_total_params(scan, by_param)
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
            size += sum(module_numel(m, by_param) for m in ms)
        else:
            out.append(fallback)
            if by_param is not None:
                rx = re.compile(fallback)
                size += sum(n for p, n in by_param.items() if rx.match(p))
    return list(dict.fromkeys(out)), size


def _budget_count(scan: ScanResult, budget: float | int | str, by_param: dict[str, int] | None) -> int:
    """A budget (``parse_budget``) as a parameter count: a fraction of the model's size needs that size."""
    fraction, count = parse_budget(budget)
    if fraction is not None:
        total = scan_total_params(scan, by_param)
        if not total:
            raise SpectrumError(
                "A fractional budget needs the model's size, which this scan does not record "
                "(reference scans do not). Pass --model DIR, or give the budget as a count (500M)."
            )
        count = int(total * fraction)
    assert count is not None
    return count


def _known_sizes(ranked: dict[str, list[ModuleScore]], numel: dict[str, int], rule: str) -> None:
    """An error when a module's parameter count is unknown: the size-bound rules cannot run without it."""
    if any(not numel[m.name] for ms in ranked.values() for m in ms):
        raise SpectrumError(
            f"The {rule} rule needs each module's parameter count, which this scan lacks. "
            "Pass --model DIR (the checkpoint folder) or use --rule per-type."
        )


def _top_layers_budget(scan, config, ranked, numel, extra_numel, by_param, match) -> tuple[int, dict[str, Any]]:
    """The top-layers rule's budget: ``--budget``; else the trainable parameters of ``--match``'s selection; else
    the size of the per-type rule's pick at ``--top-percent`` (with the same embeddings and head)."""
    _known_sizes(ranked, numel, "top-layers")
    if config.budget is not None:
        count = _budget_count(scan, config.budget, by_param)
        return count, {"budget": config.budget, "budget_params": count}
    if match is not None:
        if not match.trainable_params:
            raise SpectrumError(
                f"--match {config.match} does not record its trainable parameters (a .yaml or .txt does not): "
                "match a .json selection, or give --budget."
            )
        return match.trainable_params, {"budget": f"--match {config.match}", "budget_params": match.trainable_params}
    p = config.top_percent
    count = extra_numel + sum(numel[m.name] for ms in ranked.values() for m in ms[: int(len(ms) * p / 100)])
    return count, {"budget": f"Spectrum-{p:g}'s size", "budget_params": count}


def _fill_budget(scan, ranked, numel, extra_numel, budget, by_param) -> tuple[set[str], dict[str, Any]]:
    """Take modules in order of within-type rank fraction (every type's percentile rises together)."""
    count = _budget_count(scan, budget, by_param)
    _known_sizes(ranked, numel, "budget")
    if extra_numel > count:
        raise SpectrumError(
            f"Embeddings/lm_head/norms alone have {extra_numel:,} parameters, over the budget of "
            f"{count:,}. Raise --budget or pass --embeddings freeze (--no-train-embeddings/--no-train-lm-head)."
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
    if not chosen:
        first = order[0][3]
        plus = f" plus {extra_numel:,} of embeddings/lm_head/norms" if extra_numel else ""
        raise SpectrumError(
            f"The budget of {count:,} parameters is smaller than the first module to take ({first.name}: "
            f"{numel[first.name]:,} parameters{plus}"
            f"): raise --budget{' or pass --embeddings freeze' if extra_numel else ''}."
        )
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
