"""The random control: modules drawn at random, matched in size (and, if asked, in depth) to another pick.

A selection rule is worth something only if it beats random picks of the same size, and a pick that sits higher
in the model than random picks cannot separate its score from its depth. ``--random`` draws, from the same
candidates, the same number of modules of each type as the pick it is matched to (the rule's own pick, or a
selection file's); with ``--match-depth`` the same number of each type in each slice of the layers (quarters by
default, ``--depth-bins``), so its depth histogram, and with equal-sized modules of a type its parameter count, are
the reference's too.

The draw is deterministic per seed on every Python version: ``random.Random(seed)``, the groups in the order their
first module appears in the scan, each group's pool in scan order, one ``Random.sample`` per group with modules to
draw. ``benchmarks/benchlib.random_patterns`` is this draw, so the study's random arms are the product's.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from .depth import DEPTH_BINS, depth_bin, layer_count
from .errors import SpectrumError
from .results import ModuleScore, ScanResult
from .selection_file import Selection


def draw_matched(pools: Mapping[Any, Sequence[str]], counts: Mapping[Any, int], seed: int) -> set[str]:
    """``counts[g]`` names drawn from ``pools[g]`` for each group ``g`` in ``counts``'s order, by one
    ``random.Random(seed)``; an error when a group asks for more than its pool has."""
    rng = random.Random(seed)
    chosen: set[str] = set()
    for group, k in counts.items():
        pool = pools.get(group, [])
        if k > len(pool):
            raise SpectrumError(
                f"Cannot draw {k} modules of {_group_text(group)} at random: the candidates have {len(pool)}. "
                "Match a selection made from this scan with the same --min-layer/--include/--exclude."
            )
        if k:
            chosen.update(rng.sample(pool, k))
    return chosen


def _group_text(group: Hashable) -> str:
    if isinstance(group, tuple):
        t, b = group
        return f"type {t} in depth slice {b + 1} (0: bottom)" if b is not None else f"type {t} outside the layers"
    return f"type {group}"


def matched_draw(
    scan: ScanResult,
    cands: Sequence[ModuleScore],
    reference: Iterable[str],
    seed: int,
    match_depth: bool = False,
    bins: int = DEPTH_BINS,
) -> set[str]:
    """Modules drawn from ``cands`` with ``reference``'s count per type (per type and depth slice, ``bins`` equal
    slices of the layers, with ``match_depth``); ``reference`` names ranked modules of ``scan``, candidates or not
    (a group with too few candidates is an error, not a smaller draw)."""
    layers = layer_count(scan)
    if match_depth and (isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= max(layers, 1)):
        raise SpectrumError(f"--depth-bins {bins!r} must be from 1 to the model's {layers} layers.")
    by_name = {m.name: m for m in scan.modules}

    def group(m: ModuleScore) -> Hashable:
        return (m.type, depth_bin(m.layer, layers, bins)) if match_depth else m.type

    pools: dict[Hashable, list[str]] = {}
    for m in cands:
        pools.setdefault(group(m), []).append(m.name)
    counts = dict.fromkeys(pools, 0)
    for name in reference:
        g = group(by_name[name])
        counts[g] = counts.get(g, 0) + 1
    return draw_matched(pools, counts, seed)


def matched_modules(scan: ScanResult, match: Selection, source: str) -> list[str]:
    """The ranked (linear) modules of selection ``match``, read from ``source``; an error when it lists modules
    the scan lacks (a selection of another model) or no ranked module."""
    by_name = {m.name: m for m in scan.modules}
    missing = [n for n in match.modules if n not in by_name]
    if missing:
        raise SpectrumError(
            f"--match {source} lists {len(missing)} modules the scan of {scan.model or 'this model'} does not have "
            f"(e.g. {missing[0]}): it is a selection of another model. Match a selection made from this scan."
        )
    other = [n for n, shape in match.shapes.items() if n in by_name and list(by_name[n].shape) != list(shape)]
    if other:
        raise SpectrumError(
            f"--match {source} gives {other[0]} the shape {match.shapes[other[0]]}, the scan of "
            f"{scan.model or 'this model'} {list(by_name[other[0]].shape)}: it is a selection of another model. "
            "Match a selection made from this scan."
        )
    ranked = [n for n in match.modules if by_name[n].kind == "linear"]
    if not ranked:
        raise SpectrumError(f"--match {source} selects no ranked module: nothing to match.")
    return ranked
