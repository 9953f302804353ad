"""Depth in a selection: which layer a module sits in, as a rule (the topmost layers) and as a filter.

Our study on SmolLM2-135M found the SNR pick differs from random picks of the same size mainly in depth (its
modules sit higher), and across fixed picks depth and exact match lined up; these rules let a selection ask for
depth directly, so SNR and depth can be told apart:

* ``top-layers``: whole layers (all their ranked linear modules) from the top down, while the trainable
  parameters (with the embeddings and head, if they train) stay within the budget; the next layer would overflow.
* ``top-layers-per-type``: Spectrum-n's count of each module type (``int(n * P / 100)``), taken from the topmost
  layers instead of by score.
* ``min_layer``: modules below layer L are not candidates, under every rule (an SNR ranking inside a depth window).

Layers are counted from 0 at the bottom (next to the embeddings); a module outside any layer (``layer is None``)
is never a depth rule's pick, and is not a candidate once ``min_layer`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SpectrumError
from .results import ModuleScore, ScanResult

#: the rules of this module (``SelectConfig.rule``).
DEPTH_RULES = ("top-layers", "top-layers-per-type")
#: ``match_depth`` compares selections by the quarter of the model each module sits in.
DEPTH_BINS = 4


def layer_count(scan: ScanResult) -> int:
    """The model's number of layers as the scan knows it: one more than the highest layer index (0 if none)."""
    return 1 + max((m.layer for m in scan.modules if m.layer is not None), default=-1)


def depth_bin(layer: int | None, layers: int, bins: int = DEPTH_BINS) -> int | None:
    """Which of ``bins`` equal slices of the ``layers`` layers holds ``layer`` (0: the bottom; None: no layer)."""
    return None if layer is None else min(bins - 1, layer * bins // max(layers, 1))


def above(cands: list[ModuleScore], min_layer: int | None, scan: ScanResult) -> list[ModuleScore]:
    """The candidates in layer ``min_layer`` or higher (all of them when None); an error when it leaves none."""
    if min_layer is None:
        return cands
    layers = layer_count(scan)
    if isinstance(min_layer, bool) or not isinstance(min_layer, int) or not 0 <= min_layer < layers:
        raise SpectrumError(
            f"--min-layer {min_layer!r} is outside {scan.model or 'this model'}'s layers 0-{layers - 1}: "
            f"give a layer from 0 to {layers - 1}."
        )
    kept = [m for m in cands if m.layer is not None and m.layer >= min_layer]
    if not kept:
        raise SpectrumError(f"No candidate module sits in layer {min_layer} or above: lower --min-layer.")
    return kept


def by_depth(modules: Sequence[ModuleScore]) -> list[ModuleScore]:
    """Modules topmost first; ties (one layer) in scan order, modules outside any layer last."""
    order = sorted(range(len(modules)), key=lambda i: (modules[i].layer is None, -(modules[i].layer or 0), i))
    return [modules[i] for i in order]


def top_per_type(groups: dict[str, list[ModuleScore]], top_percent: float) -> set[str]:
    """``top-layers-per-type``: each type keeps Spectrum-n's count, ``int(n * P / 100)``, from its topmost layers."""
    chosen: set[str] = set()
    for ms in groups.values():
        inside = [m for m in by_depth(ms) if m.layer is not None]
        chosen.update(m.name for m in inside[: int(len(ms) * top_percent / 100)])
    return chosen


def top_layers(
    cands: Sequence[ModuleScore], numel: dict[str, int], extra_numel: int, count: int
) -> tuple[set[str], list[int]]:
    """``top-layers``: whole layers from the top down while the total (``extra_numel`` included) stays within
    ``count`` parameters; returns the modules and the layers (topmost first). An error when not even the top
    layer fits."""
    per_layer: dict[int, list[ModuleScore]] = {}
    for m in cands:
        if m.layer is not None:
            per_layer.setdefault(m.layer, []).append(m)
    if not per_layer:
        raise SpectrumError("No candidate module sits in a numbered layer; --rule top-layers has nothing to take.")
    used, layers = extra_numel, []
    for layer in sorted(per_layer, reverse=True):
        size = sum(numel[m.name] for m in per_layer[layer])
        if used + size > count:
            break
        used += size
        layers.append(layer)
    if not layers:
        top = max(per_layer)
        size = sum(numel[m.name] for m in per_layer[top])
        raise SpectrumError(
            f"The budget of {count:,} parameters is smaller than the top layer ({top}: {size:,} parameters"
            f"{f' plus {extra_numel:,} of embeddings/lm_head/norms' if extra_numel else ''}): raise --budget"
            f"{' or pass --embeddings freeze' if extra_numel else ''}."
        )
    return {m.name for layer in layers for m in per_layer[layer]}, layers
