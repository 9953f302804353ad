"""How deep the backward pass has to go: the lowest decoder layer that trains.

When the embeddings are frozen and no module below layer L trains, no gradient is needed below L, so autograd
need not record (or keep activations for) layers 0..L-1 and the backward pass stops at L: that is most of the
time a selection of upper layers saves. ``freeze`` keeps it so (it makes the input require grad only when asked,
for reentrant checkpointing); these helpers say where the stop is, from a model or from a selection's names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .naming import parse


def lowest_layer(names: Iterable[str]) -> int | None:
    """The lowest layer among tensor or module names that train: 0 when the input embeddings are among them
    (the backward pass then crosses every layer); None when none lies in a layer or below (only the head and
    final norm train)."""
    lowest: int | None = None
    for name in names:
        t = parse(name if name.endswith((".weight", ".bias")) else name + ".weight")
        if t.kind == "embedding" and t.layer is None and "lm_head" not in t.module:
            return 0
        if t.layer is not None and (lowest is None or t.layer < lowest):
            lowest = t.layer
    return lowest


def embeddings_train(names: Iterable[str]) -> bool:
    """Whether the input embeddings are among the names that train."""
    for name in names:
        t = parse(name if name.endswith((".weight", ".bias")) else name + ".weight")
        if t.kind == "embedding" and t.layer is None:
            return True
    return False


def trainable_names(model: Any) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def lowest_trained_layer(model: Any) -> int | None:
    """The lowest decoder layer of ``model`` with a trainable parameter, 0 when its input embeddings train (see
    ``lowest_layer``); the backward pass need not go below it."""
    return lowest_layer(trainable_names(model))


def layer_count(model: Any) -> int | None:
    """The number of decoder layers, from the config, else from the parameter names."""
    cfg = getattr(model, "config", None)
    n = getattr(getattr(cfg, "get_text_config", lambda: cfg)(), "num_hidden_layers", None)
    if isinstance(n, int):
        return n
    layers = [t.layer for t in (parse(name) for name, _ in model.named_parameters()) if t.layer is not None]
    return max(layers) + 1 if layers else None


def decoder_layers(model: Any) -> Any:
    """The decoder's ModuleList (``model.model.layers`` for Llama-family models), or None."""
    import torch

    best = None
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and (best is None or len(module) > len(best)):
            best = module
    return best
