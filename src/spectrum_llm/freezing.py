"""Freeze a model to a selection, exactly as Axolotl's ``unfrozen_parameters`` would.

Axolotl (``axolotl/utils/freeze.py``, ``freeze_layers_except``) reads each pattern as ``axolotl.AxolotlPattern``
does: an optional trailing row range ``[a:b]`` (not part of the regex), dots escaped unless followed by ``+``,
then ``re.match`` against every parameter name. A parameter is trainable if any pattern matches; if some
matching patterns carry a range, only the union of those ranges trains, enforced by a gradient hook
that zeroes the other rows. Patterns are matched against ``model.named_parameters()``, which lists a tied
weight once, by its first name: a tied ``lm_head.weight`` is ``model.embed_tokens.weight`` there, so
``^lm_head.weight$`` alone trains nothing, in Axolotl and here. ``freeze`` does the same and adds what
Axolotl leaves out: it refuses a selection whose patterns match nothing (a selection made for another
model), says when a pattern names only a tied alias, maps MoE checkpoint names (per-expert
``block_sparse_moe.experts.3.w1``, the router ``block_sparse_moe.gate``) onto the tensors transformers 5
builds in memory (fused 3-D experts, ``mlp.gate``), and keeps the backward pass short: with the embeddings
frozen nothing below the lowest trained layer requires grad (``backward.lowest_trained_layer``), so autograd records
and keeps nothing there. Only reentrant gradient checkpointing needs the input to require grad
(``input_require_grads=True``); the non-reentrant form, which ``train`` uses, does not.

A gradient mask keeps frozen rows' gradients at zero; optimizers with weight decay still shrink
those rows, so train partial tensors with ``weight_decay=0`` when frozen rows must stay bit-exact.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .architecture import check_model
from .axolotl import AxolotlPattern, pattern_module
from .errors import SpectrumError
from .models import tied_aliases
from .naming import parse
from .selection_file import Selection, load_selection

LOG = logging.getLogger(__name__)


@dataclass
class FreezeSummary:
    """What ``freeze`` left trainable, in parameters (partial tensors count only their trainable rows)."""

    trainable_params: int
    total_params: int
    trainable: list[str] = field(default_factory=list)
    partial: dict[str, list[str]] = field(default_factory=dict)
    per_type: dict[str, list[int]] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    input_require_grads: bool = False
    notes: list[str] = field(default_factory=list)
    #: per pattern, the tensors it unfreezes and how many of their parameters it covers (rows, slices)
    matches: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        lines = [
            f"trainable {self.trainable_params:,} of {self.total_params:,} parameters "
            f"({100 * self.fraction:.2f}%), {len(self.trainable)} tensors"
        ]
        for t, (tr, tot) in self.per_type.items():
            if tr:
                lines.append(f"  {t}: {tr:,} / {tot:,}")
        return "\n".join(lines)


_EXPERT = re.compile(
    r"^(?P<pre>.+)\.(?:block_sparse_moe|mlp)\.experts\.(?P<e>\d+)\."
    r"(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)$"
)
_HALF = {"w1": 0, "gate_proj": 0, "w3": 1, "up_proj": 1}
_MOE_BLOCK = ".block_sparse_moe."


def _to_memory(pattern: str, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple | None]] | None:
    """A checkpoint module of a MoE model as the in-memory tensors (or slices) transformers 5 builds.

    Mixtral ``...block_sparse_moe.experts.3.w1`` -> ``...mlp.experts.gate_up_proj[3, :I]``;
    ``w3``/``up_proj`` -> ``[3, I:]``; ``w2``/``down_proj`` -> ``...experts.down_proj[3]``; any other
    ``...block_sparse_moe.X`` (the router ``gate``) -> the whole ``...mlp.X`` weight and bias (region None).
    """
    module = pattern_module(pattern)
    m = _EXPERT.match(module or "")
    if not m:
        if module and _MOE_BLOCK in module:
            moved = module.replace(_MOE_BLOCK, ".mlp.")
            found: list[tuple[str, tuple | None]] = [
                (f"{moved}.{leaf}", None) for leaf in ("weight", "bias") if f"{moved}.{leaf}" in shapes
            ]
            return found or None
        return None
    pre, e, proj = m.group("pre"), int(m.group("e")), m.group("proj")
    for blk in ("mlp", "block_sparse_moe"):
        base = f"{pre}.{blk}.experts"
        if proj in _HALF and f"{base}.gate_up_proj" in shapes:
            name = f"{base}.gate_up_proj"
            shape = shapes[name]
            half = shape[1] // 2
            if len(shape) == 3 and e < shape[0]:
                h = _HALF[proj]
                return [(name, (slice(e, e + 1), slice(h * half, (h + 1) * half)))]
        leaf = "down_proj" if proj in ("w2", "down_proj") else proj
        name = f"{base}.{leaf}"
        if name in shapes and len(shapes[name]) == 3 and e < shapes[name][0]:
            return [(name, (slice(e, e + 1), slice(None)))]
    return None


def _merge(ranges: list[tuple[int, int | None]], size: int, name: str) -> list[tuple[int, int]]:
    """Axolotl's _merge_ranges: close open ends, validate, merge overlaps."""
    done = [(a, b if b is not None else size) for a, b in ranges]
    for a, b in done:
        if a < 0 or b > size or a >= b:
            raise SpectrumError(
                f"Row range [{a}:{b}] does not fit {name} (dimension 0 has {size} rows). "
                "The selection was made for another model: select again from a scan of this one."
            )
    out: list[tuple[int, int]] = []
    for a, b in sorted(done):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _keep_mask(shape: tuple[int, ...], regions: list[tuple]):
    """Boolean mask over the first one or two dimensions: True where gradients are kept."""
    import torch

    two = any(len(r) > 1 and r[1] != slice(None) for r in regions)
    mask = torch.zeros(shape[:2] if two else shape[:1], dtype=torch.bool)
    for r in regions:
        mask[r if two else r[:1]] = True
    return mask


def _hook(mask):
    def keep_rows(grad):
        m = mask.to(grad.device)
        return grad * m.reshape(m.shape + (1,) * (grad.dim() - m.dim())).to(grad.dtype)

    return keep_rows


def freeze(
    model: Any,
    selection: Selection | str | os.PathLike | list[str],
    *,
    strict: bool = True,
    input_require_grads: bool = False,
    allow_other_model: bool = False,
) -> FreezeSummary:
    """Set ``requires_grad`` on ``model`` so that exactly the selection trains; return what trains.

    ``selection``: a Selection, a .yaml/.json/.txt file, or a list of Axolotl patterns. With
    ``strict`` (the default) a pattern that matches no parameter is an error; otherwise a warning.
    Call it before the optimizer is built (before ``Trainer.train()``), so frozen tensors get no state.
    A selection that records another architecture than the model's (layers, module shapes) is an error unless
    ``allow_other_model``.

    ``input_require_grads``: with the embeddings frozen, make their output require grad, which reentrant gradient
    checkpointing (``use_reentrant=True``) needs to produce any gradient; it makes autograd record every layer,
    so the backward pass crosses the whole network. Off (the default), an earlier ``enable_input_require_grads``
    is undone, and the backward pass stops at the lowest trained layer.
    """
    import torch

    from .params import numel, part_params, shape

    sel = load_selection(selection)
    check_model(sel, model, allow_other_model=allow_other_model)
    pats = [AxolotlPattern(p) for p in sel.patterns]
    named = list(model.named_parameters())
    if not named:
        raise SpectrumError("The model has no parameters to freeze.")
    shapes = {n: shape(p) for n, p in named}
    aliases = tied_aliases(model)
    by_id: dict[int, torch.nn.Parameter] = {}
    names: dict[int, list[str]] = {}
    on: set[int] = set()
    ranges: dict[int, list[tuple[int, int | None]]] = {}
    hits = [0] * len(pats)
    matches: dict[str, list[tuple[str, int]]] = {pat.raw: [] for pat in pats}
    for name, p in named:
        by_id[id(p)] = p
        names.setdefault(id(p), []).append(name)
        for i, pat in enumerate(pats):
            if pat.match(name):
                hits[i] += 1
                on.add(id(p))
                covered = numel(p)
                if pat.range is not None:
                    ranges.setdefault(id(p), []).append(pat.range)
                    rows = len(p) if p.dim() else 1
                    a, b = pat.range
                    covered = part_params(p.numel(), max(0, min(rows, rows if b is None else b) - a), rows)
                matches[pat.raw].append((name, covered))

    regions: dict[int, list[tuple]] = {}
    mapped: dict[str, str] = {}
    missing: list[str] = []
    tied_only: dict[str, tuple[str, str]] = {}
    index = {n: p for n, p in named}
    for i, pat in enumerate(pats):
        if hits[i]:
            continue
        target = _to_memory(pat.raw, shapes)
        if target is None:
            alias = pat.first_match(aliases)
            if alias is not None:
                tied_only[pat.raw] = (alias, aliases[alias])
            else:
                missing.append(pat.raw)
            continue
        for name, region in target:
            p = index[name]
            on.add(id(p))
            if region is None:
                mapped[pat.raw] = name
                matches[pat.raw].append((name, p.numel()))
            else:
                regions.setdefault(id(p), []).append(region)
                mapped[pat.raw] = f"{name}[{region[0].start}, {_fmt(region[1])}]"
                mask = _keep_mask(tuple(p.shape), [region])
                matches[pat.raw].append((name, part_params(p.numel(), int(mask.sum()), mask.numel())))
    notes = [
        f"{raw} names {alias}, which is tied to {canon} (one tensor, listed once by that name): like Axolotl, "
        f"this pattern trains nothing; add ^{canon}$ to train the shared weight"
        for raw, (alias, canon) in tied_only.items()
        if id(index[canon]) not in on
    ]
    for note in notes:
        LOG.warning(note)
    if missing:
        msg = (
            f"{len(missing)} of {len(pats)} selection patterns match no parameter of this model, e.g. "
            f"{missing[0]!r} (the model has e.g. {named[0][0]!r}). The selection was made for another model or "
            "naming: scan this model and select again (`spectrum scan MODEL -o scan.json`, then "
            "`spectrum select scan.json`)."
        )
        if strict or len(missing) == len(pats):
            raise SpectrumError(msg)
        LOG.warning(msg)
    if not on:
        raise SpectrumError("The selection unfreezes no parameter of this model. Select again from a scan of it.")

    old = getattr(model, "_spectrum_freeze_hooks", None) or []
    for h in old:
        h.remove()
    hooks = []
    summary = FreezeSummary(
        trainable_params=0, total_params=0, mapped=mapped, notes=notes, matches=matches, unmatched=missing
    )
    for pid, p in by_id.items():
        name = names[pid][0]
        p.requires_grad_(pid in on)
        n = numel(p)
        trained = 0
        if pid in on:
            summary.trainable.append(name)
            trained = n
            spans = [(a, b) for a, b in _merge(ranges.get(pid, []), len(p) if p.dim() else 1, name)]
            reg = [(slice(a, b),) for a, b in spans] + regions.get(pid, [])
            if reg:
                mask = _keep_mask(tuple(p.shape), reg)
                trained = part_params(n, int(mask.sum()), mask.numel())
                summary.partial[name] = [
                    f"[{r[0].start}:{r[0].stop}" + (f", {_fmt(r[1])}]" if len(r) > 1 else "]") for r in reg
                ]
                hooks.append(p.register_hook(_hook(mask)))
        summary.trainable_params += trained
        summary.total_params += n
        t = parse(name, p.dim()).type
        acc = summary.per_type.setdefault(t, [0, 0])
        acc[0] += trained
        acc[1] += n
    model._spectrum_freeze_hooks = hooks

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if (
        input_require_grads
        and weight is not None
        and not weight.requires_grad
        and hasattr(model, "enable_input_require_grads")
    ):
        model.enable_input_require_grads()
        summary.input_require_grads = True
    elif hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()
    return summary


def _fmt(s: slice) -> str:
    if s == slice(None):
        return ":"
    return f"{s.start or ''}:{s.stop if s.stop is not None else ''}"
