"""Which architecture a selection was made for, so that it is not trained on another model by mistake.

A selection records its model's architecture: the number of layers and, for each linear module type
(``self_attn.q_proj``, ``mlp.down_proj``, ...), the shape of its first layer's weight. ``train``, ``check`` and
``freeze`` compare it with the model at hand (the layer count, and the shape of each type both name alike) and
refuse a mismatch, unless told ``allow_other_model``. The model's
name is only said, never compared: a selection of SmolLM2-135M fits SmolLM2-135M-Instruct (same shapes), while
one of Qwen2.5-1.5B does not fit SmolLM2-135M even where its patterns happen to match module names.
Selections written before this was recorded (and Axolotl YAML or .txt patterns) carry none and are not checked.
"""

from __future__ import annotations

import logging
from typing import Any

from .errors import SpectrumError
from .naming import parse

LOG = logging.getLogger(__name__)

_WRAPPERS = ("base_model.model.", "_orig_mod.", "module.")


def _summarise(items: list[tuple[str, int | None, list[int]]]) -> dict[str, Any] | None:
    """{"layers": N, "shapes": {type: shape}} from (type, layer, shape) of the linear weights; a shape not known
    (reference scans record none) is left out, so only the layer count is compared."""
    if not items:
        return None
    shapes: dict[str, tuple[int, list[int]]] = {}
    layers = {layer for _, layer, _ in items if layer is not None}
    for type_, layer, shape in items:
        key = layer if layer is not None else -1
        if len(shape) == 2 and (type_ not in shapes or key < shapes[type_][0]):
            shapes[type_] = (key, shape)
    return {"layers": max(layers) + 1 if layers else 0, "shapes": {t: s for t, (_, s) in sorted(shapes.items())}}


def of_scan(scan: Any) -> dict[str, Any] | None:
    """The architecture of a scanned model (a ScanResult): its whole linear weights, parts and experts left out
    (reference scans know no shapes: their layer count only)."""
    return _summarise(
        [
            (m.type, m.layer, list(m.shape))
            for m in scan.modules
            if m.kind == "linear" and m.part is None and m.rows is None and m.expert is None and len(m.shape) in (0, 2)
        ]
    )


def of_model(model: Any) -> dict[str, Any] | None:
    """The architecture of a loaded (or meta) model, as ``of_scan`` reads it from the model's checkpoint."""
    items = []
    for name, p in model.named_parameters():
        for w in _WRAPPERS:
            name = name.removeprefix(w)
        name = name.replace(".base_layer.", ".")
        quant = getattr(p, "quant_state", None)  # a bitsandbytes 4-bit weight is stored packed
        shape = list(getattr(quant, "shape", None) or p.shape)
        if not name.endswith(".weight") or len(shape) != 2 or ".lora_" in name:
            continue
        t = parse(name, 2)
        if t.kind == "linear" and t.expert is None:
            items.append((t.type, t.layer, shape))
    return _summarise(items)


def difference(recorded: dict[str, Any], here: dict[str, Any] | None) -> str | None:
    """How the model at hand differs from a selection's recorded architecture, in a phrase; None when it fits."""
    if here is None:
        return None
    if recorded.get("layers") != here.get("layers"):
        return f"{recorded.get('layers')} layers, this model {here.get('layers')}"
    for type_, shape in (recorded.get("shapes") or {}).items():
        have = here["shapes"].get(type_)  # a type named otherwise here (a checkpoint's per-expert MoE layout) is
        if have is not None and list(have) != list(shape):  # not compared
            return f"{type_} is {'x'.join(map(str, shape))}, in this model {'x'.join(map(str, have))}"
    return None


def check_model(
    selection: Any, model: Any, *, allow_other_model: bool = False, flag: str = "--allow-other-model"
) -> None:
    """Refuse (one SpectrumError line naming both models) a selection made for another architecture than
    ``model``'s; with ``allow_other_model`` only say it. A selection that records none is not checked."""
    recorded = getattr(selection, "architecture", None)
    if not recorded:
        LOG.debug("the selection records no architecture; not checked against the model")
        return
    diff = difference(recorded, of_model(model))
    if diff is None:
        return
    made_for = selection.model or "another model"
    here = getattr(getattr(model, "config", None), "_name_or_path", "") or "this model"
    text = f"The selection was made for {made_for}, not for {here} ({diff})"
    if allow_other_model:
        LOG.warning("%s; using it anyway (%s).", text, flag)
        return
    raise SpectrumError(f"{text}. Select again from a scan of this model, or pass {flag} if you mean it.")
