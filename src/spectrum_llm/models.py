"""The model behind a checkpoint, without its weights: built on the meta device from its config.

A skeleton on the meta device has every parameter's name and shape (what ``named_parameters()`` lists, so
what Axolotl's patterns are matched against) and runs a forward pass, at no memory cost. Tied weights
(a ``lm_head`` that is the input embedding) are one tensor there, listed once by its first name; a scan
of the checkpoint tells the same from its config or from the head it lacks.
"""

from __future__ import annotations

import os
from typing import Any

from .results import ScanResult


def from_config(config: Any, dtype: Any = None):
    """The model ``config`` describes, on the meta device: a causal LM, else the bare model (encoders)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    kwargs = {} if dtype is None else {"dtype": dtype}
    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config, **kwargs)
        except ValueError:
            return AutoModel.from_config(config, **kwargs)


def load_meta_model(path: str | os.PathLike):
    """Build the model a checkpoint's config describes on the meta device: names and shapes, no weights.

    ``path``: what ``check --model`` takes (a folder, a weight file, builtin:smollm2-135m, a GGUF, a hub id in
    the local cache)."""
    from .model_config import load_model_config

    return from_config(load_model_config(path)[0])


def tied_aliases(model: Any) -> dict[str, str]:
    """Second names of shared tensors (a tied ``lm_head.weight``) -> the name ``named_parameters()`` lists."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def tied_head(scan: ScanResult) -> bool | None:
    """Whether the scanned model's lm_head is its input embedding (one tensor); None when the scan cannot tell.

    This one answer drives both what a selection lists (``rules``) and what is said about it (the CLI, the
    trainer's log, the report), so the text never calls "tied" a selection built as untied.

    The config says so when the checkpoint has one, and it wins: a config with ``tie_word_embeddings: false``
    is untied (False) even when the scan lists no lm_head. Otherwise a full scan of our own with an embedding
    and no lm_head tensor is tied (checkpoints store a tied weight once; GGUF files then have no
    ``output.weight``). A scan narrowed with ``--modules`` (``modules_regex``) cannot tell, since its regex may
    have left the head out: None, which selection treats as untied. Reference-layout scans always list
    ``lm_head`` (the reference tool scores the tied module too): None unless their config says.
    """
    if "tie_word_embeddings" in scan.config:
        return bool(scan.config["tie_word_embeddings"])
    if scan.layout != "spectrum-llm" or scan.modules_regex:
        return None
    kinds = {m.kind for m in scan.modules}
    if "embedding" in kinds:
        return "lm_head" not in kinds
    return None
