"""Spectrum-guided LoRA: a PEFT ``LoraConfig`` whose targets are the selected modules, ranked by their scores.

A selection names the weight matrices that carry the most signal; instead of training them whole, LoRA
can put adapters on exactly those modules and give the stronger ones more rank:

* ``target_modules``: the selected weight matrices (a selected part of a fused projection targets the
  whole module);
* rank: within each module type, the selected modules in score order get ranks from ``max_rank`` (the
  best) down to ``min_rank`` (the last), linearly in their position: the ``i``-th best of ``k`` gets
  ``round(min_rank + (max_rank - min_rank) * (1 - i / (k - 1)))`` (``max_rank`` when ``k`` is 1; equal
  scores get equal ranks). A selection without scores (a YAML or .txt list) gives every target ``max_rank``;
* ``lora_alpha`` is ``alpha_ratio`` times each module's rank, so every adapter has the same scale
  ``alpha / r`` and a higher rank adds capacity, not step size.

The JSON holds only ``LoraConfig`` arguments, so ``peft.LoraConfig(**json.load(f))`` takes it unchanged.
What LoRA cannot target is left out and listed (``LoraPlan.left_out``): embeddings, lm_head and norms
(train them with ``modules_to_save`` if you want them), one expert of a fused 3-D expert tensor, and
per-expert modules of MoE checkpoints, which transformers 5 fuses into one tensor in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .axolotl import has_rows, pattern_module
from .errors import SpectrumError, require
from .files import write_text_atomic
from .models import load_meta_model
from .naming import parse
from .params import count_params, shape
from .selection_file import Selection, load_selection

_PER_EXPERT = re.compile(r"\.experts\.\d+\.")
_CONFIG_KEYS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "rank_pattern",
    "alpha_pattern",
    "bias",
    "task_type",
)


@dataclass
class LoraPlan:
    """A PEFT LoRA configuration (``config``), each target's rank, the adapter's size, and what was left out."""

    config: dict[str, Any]
    ranks: dict[str, int]
    adapter_params: int | None = None
    total_params: int | None = None
    left_out: dict[str, str] = field(default_factory=dict)

    def lora_config(self):
        """The ``peft.LoraConfig`` this plan describes."""
        require("peft", extra="train")
        from peft import LoraConfig

        return LoraConfig(**self.config)

    def to_json(self) -> str:
        return json.dumps(self.config, indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, self.to_json())

    def __str__(self) -> str:
        rs = sorted(self.ranks.values())
        size = (
            f"{self.adapter_params:,} adapter parameters"
            if self.adapter_params is not None
            else "adapter size unknown (the scan has no shapes: pass --model)"
        )
        if self.adapter_params is not None and self.total_params:
            size += f" ({100 * self.adapter_params / self.total_params:.2f}% of {self.total_params:,})"
        line = f"LoRA on {len(self.ranks)} modules, ranks {rs[0]}..{rs[-1]}, {size}"
        if self.left_out:
            line += f"; left out {len(self.left_out)}: " + ", ".join(
                f"{k} ({v})" for k, v in list(self.left_out.items())[:3]
            )
            line += ", ..." if len(self.left_out) > 3 else ""
        return line


def _why_not(name: str) -> str | None:
    kind = parse(name + ".weight").kind
    if kind in ("embedding", "lm_head"):
        return f"{kind}: trained whole by Spectrum; add it to modules_to_save to train it with LoRA"
    if "norm" in name.rsplit(".", 1)[-1].lower():
        return "norm: a vector, not a matrix LoRA can adapt"
    if _PER_EXPERT.search(name):
        return "one expert of a MoE checkpoint: transformers 5 fuses the experts into one tensor in memory"
    return None


def _positions(names: list[str], scores: dict[str, float | None]) -> list[float]:
    """Each module's place in 0..1 (1: the best) among the selected of its type; ties share a place."""
    k = len(names)
    if k == 1:
        return [1.0]
    out: list[float] = []
    first: dict[float | tuple[str, int], int] = {}
    for i, n in enumerate(names):
        s = scores.get(n)
        key = s if s is not None and not math.isnan(s) else ("nan", i)
        first.setdefault(key, i)
        out.append(1 - first[key] / (k - 1))
    return out


def lora_config(
    selection: Selection | str | os.PathLike | list[str],
    *,
    max_rank: int = 32,
    min_rank: int | None = None,
    alpha_ratio: float = 2.0,
    dropout: float = 0.0,
    model: Any = None,
) -> LoraPlan:
    """A Spectrum-guided LoRA plan for ``selection`` (ranks by score; see the module docstring).

    ``min_rank`` defaults to a quarter of ``max_rank``. ``model`` (a module or a folder, built on the meta
    device) checks that each target exists and gives the adapter's exact size; without it the sizes come
    from the shapes the scan recorded.
    """
    sel = load_selection(selection)
    min_rank = max(1, max_rank // 4) if min_rank is None else min_rank
    if not (isinstance(max_rank, int) and isinstance(min_rank, int) and 1 <= min_rank <= max_rank):
        raise SpectrumError(f"LoRA ranks must satisfy 1 <= --min-rank <= --max-rank, got {min_rank} and {max_rank}.")
    if not (alpha_ratio > 0):
        raise SpectrumError(f"The LoRA alpha ratio must be positive, got {alpha_ratio}.")
    groups = [ts.modules for ts in sel.types.values()] if sel.types else [list(sel.modules)]
    by_entry_pattern = {m: p for ts in sel.types.values() for m, p in zip(ts.modules, ts.patterns)}
    scored = bool(sel.scores)
    ranks: dict[str, int] = {}
    left_out: dict[str, str] = {}
    for names in groups:
        places = _positions(names, sel.scores) if scored else [1.0] * len(names)
        for name, q in zip(names, places):
            target = pattern_module(by_entry_pattern.get(name, "")) or name
            why = _why_not(target)
            if (
                why is None
                and target.rsplit(".", 1)[-1] in ("gate_up_proj", "down_proj")
                and ".experts." in target
                and has_rows(by_entry_pattern.get(name, ""))
            ):
                why = "one expert of a fused 3-D expert tensor: LoRA adapts modules, not one expert's slice"
            if why:
                left_out[name] = why
                continue
            r = int(min_rank + (max_rank - min_rank) * q + 0.5)
            ranks[target] = max(ranks.get(target, 0), r)
    sizes, total = _sizes(sel, model, ranks, left_out)
    if not ranks:
        raise SpectrumError(
            "The selection has no module LoRA can adapt ("
            + "; ".join(f"{k}: {v}" for k, v in list(left_out.items())[:2])
            + "). Select weight matrices, or use "
            "--method spectrum to train the selection whole."
        )
    alphas = {t: _num(alpha_ratio * r) for t, r in ranks.items()}
    config = {
        "r": min_rank,
        "lora_alpha": _num(alpha_ratio * min_rank),
        "lora_dropout": dropout,
        "target_modules": list(ranks),
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "rank_pattern": {re.escape(t): r for t, r in ranks.items()},
        "alpha_pattern": {re.escape(t): a for t, a in alphas.items()},
    }
    adapter = sum(ranks[t] * sizes[t] for t in ranks) if sizes is not None else None
    return LoraPlan(
        config=config, ranks=ranks, adapter_params=adapter, total_params=total or sel.total_params, left_out=left_out
    )


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _sizes(
    sel: Selection, model: Any, ranks: dict[str, int], left_out: dict[str, str]
) -> tuple[dict[str, int] | None, int | None]:
    """in + out features of each target (so rank r costs r * (in + out) parameters), and the model's size."""
    if model is None:
        shapes = {t: sel.shapes.get(t) for t in ranks}
        if any(s is None or len(s) != 2 for s in shapes.values()):
            return None, None
        return {t: int(s[0]) + int(s[1]) for t, s in shapes.items() if s is not None}, None
    if isinstance(model, (str, os.PathLike)):
        model = load_meta_model(model)
    modules = dict(model.named_modules())
    out = {}
    for t in list(ranks):
        w = getattr(modules.get(t), "weight", None)
        dims = shape(w) if w is not None else ()  # the full shape also when ZeRO-3 built the model partitioned
        if len(dims) != 2:
            left_out[t] = "not a weight-matrix module of this model"
            del ranks[t]
            continue
        out[t] = int(dims[0]) + int(dims[1])
    return out, count_params(model)[1]


def is_lora_config(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSON file of LoraConfig arguments (as ``select --format peft`` writes)."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "target_modules" in data and "r" in data and "format" not in data


def load_lora_config(path: str | os.PathLike) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        require("peft", extra="train")
        from peft import LoraConfig

        try:
            LoraConfig(**data)
        except TypeError as e:
            raise SpectrumError(f"{path} is not a set of LoraConfig arguments ({e}).") from None
    return data
