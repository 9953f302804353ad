"""Know before you train: what a selection does to a model, and what training it will cost.

``check`` builds the model on the meta device (names, shapes and the forward pass, no weights and no
memory), freezes it to the selection exactly as ``freeze`` and Axolotl do, and reports each pattern and
what it unfreezes, the patterns that match nothing, the selected modules the model lacks, the trainable
share, and the training memory of full fine-tuning, this selection, and LoRA with as many trainable
parameters (all linear layers, the rank that comes closest).

Memory is counted the way ``spectrum train`` trains: frozen weights stay in the model's dtype; what trains
gets fp32 master weights, fp32 gradients and two fp32 AdamW states (16 bytes a parameter). A tensor that
trains only some rows is still whole in all three. Activations are measured, not guessed: the model's own
forward runs on the meta device with ``saved_tensors_hooks`` counting every tensor autograd keeps for the
backward pass (each storage once, parameters excluded), in bf16 as mixed precision computes (fp32 for an
fp32 model), with attention as fused kernels keep it (query, key, value, output and the log-sum-exp, no
sequence x sequence matrix). They grow with batch x sequence, so they are reported per token, without
gradient checkpointing.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

from .activations import activation_bytes, meta_autocast
from .axolotl import AxolotlPattern, pattern_module
from .backward import layer_count
from .errors import SpectrumError, require
from .freezing import freeze
from .memory import ADAMW_STATES, BYTES, MemoryEstimate, lowbit_estimates
from .models import from_config, tied_aliases
from .selection import Selection, load_selection
from .selection_text import backward_text


@dataclass
class PatternReport:
    pattern: str
    tensors: list[str]
    params: int
    mapped: str | None = None
    note: str | None = None


@dataclass
class CheckReport:
    model: str
    selection: str
    dtype: str
    seq_len: int
    patterns: list[PatternReport]
    unmatched: list[str]
    missing_modules: list[str]
    trainable_params: int
    total_params: int
    memory: list[MemoryEstimate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backward: str = ""  # where the backward pass stops (selection_text.backward_text)

    @property
    def fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fraction"] = self.fraction
        return d

    def __str__(self) -> str:
        """The report as text that fits an 80-column terminal: notes wrap under their row, the memory table has
        one column per method."""
        w = max([len(p.pattern) for p in self.patterns] + [7])
        lines = [
            *_wrap(f"{self.selection} on {self.model} ({self.total_params:,} parameters, {self.dtype})"),
            "",
            f"{'pattern'.ljust(w)}  {'tensors':>7}  {'parameters':>13}",
        ]
        for p in self.patterns:
            lines.append(f"{p.pattern.ljust(w)}  {len(p.tensors):>7}  {p.params:>13,}")
            if p.mapped:
                lines += _wrap(f"-> {p.mapped}", indent="    ")
            if p.note:
                lines += _wrap(f"({p.note})", indent="    ")
        lines.append("")
        lines += _wrap("patterns matching nothing: " + (", ".join(self.unmatched) or "none"))
        lines += _wrap("selected modules the model lacks: " + (", ".join(self.missing_modules) or "none"))
        lines.append(
            f"trainable: {self.trainable_params:,} of {self.total_params:,} parameters ({100 * self.fraction:.2f}%)"
        )
        if self.backward:
            lines += _wrap(self.backward)
        for n in self.notes:
            lines += _wrap(f"note: {n}")
        if self.memory:
            lines += ["", _MEMORY_HEAD.format(dtype=self.dtype)]
            lines.append(
                f"{'method':<24}{'trainable':>10}{'weights':>9}{'grads':>9}{'AdamW':>9}{'total':>9}{'act/tok':>9}"
            )
            for m in self.memory:
                lines.append(
                    f"{m.method[:24]:<24}{_count(m.trainable_params):>10}{_size(sum(m.weights.values()), 1):>9}"
                    f"{_size(sum(m.gradients.values()), 1):>9}{_size(sum(m.optimizer.values()), 1):>9}"
                    f"{_size(m.static_bytes, 1):>9}{_size(m.activations_per_token, 1):>9}"
                )
            lines += textwrap.wrap(
                f"act/tok: activations per token x batch x sequence (measured at sequence {self.seq_len}, no "
                "gradient checkpointing); e.g. batch 8 x 2048 tokens: "
                + "; ".join(
                    f"{m.method} {_size(m.total_bytes(8 * 2048))}" for m in self.memory if m.total_bytes(1) is not None
                )
                + " in all",
                80,
            )
        return "\n".join(lines)


_WIDTH = 80


def _wrap(text: str, indent: str = "") -> list[str]:
    import textwrap

    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=indent,
        subsequent_indent=indent or "  ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [""]


_MEMORY_HEAD = (
    "training memory (AdamW: what trains has fp32 weights, gradients and 2 states;\n"
    "frozen weights in {dtype}, or int8/nf4 linear modules as the row says)"
)


def _size(n: int | None, digits: int = 2) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.{digits}f} {unit}" if digits == 2 else f"{n / div:.{digits}f}{unit[0]}"
    return f"{n} B"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10**6 else f"{n:,}"


def _by_dtype(d: dict[str, int]) -> str:
    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}
    return " + ".join(f"{_size(v)} {short.get(k, k)}" for k, v in d.items() if v) or "0"


# ------------------------------------------------------------------------------------------- model


def _config(model: Any):
    """The model's config and its default training dtype name (a GGUF trains in bf16 once converted)."""
    from transformers import AutoConfig

    if hasattr(model, "config"):
        return model.config, None
    from .checkpoint import resolve

    path = resolve(model)
    try:
        if path.suffix == ".gguf":
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name), "bfloat16"
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").is_file():
            raise SpectrumError(
                f"{folder} has no config.json, so its model cannot be built. Pass the checkpoint folder."
            )
        return AutoConfig.from_pretrained(folder), None
    except (OSError, ValueError, KeyError) as e:  # transformers: unreadable file, bad JSON, unknown model type
        raise SpectrumError(f"Could not read the config of {model} ({e}).") from e


def _dtype_name(config, fallback: str | None) -> str:
    d = getattr(config, "dtype", None) or fallback or "float32"
    name = str(d).removeprefix("torch.")
    return name if name in BYTES else "float32"


def meta_model(config):
    """The model on the meta device, in bf16 (what mixed precision computes in; MoE kernels want it too)."""
    import torch

    return from_config(config, torch.bfloat16).train()


def _patterns(summary, sel: Selection, aliases: dict[str, str]) -> list[PatternReport]:
    out = []
    for pat in sel.patterns:
        hits = summary.matches.get(pat, [])
        note = None
        if not hits:
            alias = AxolotlPattern(pat).first_match(aliases)
            if alias is not None:
                note = f"names {alias}, tied to {aliases[alias]}: trains nothing by this name"
        out.append(PatternReport(pat, [n for n, _ in hits], sum(c for _, c in hits), summary.mapped.get(pat), note))
    return out


def _missing_modules(sel: Selection, names: set[str], mapped: dict[str, str]) -> list[str]:
    pairs = (
        [(m, p) for ts in sel.types.values() for m, p in zip(ts.modules, ts.patterns)]
        if sel.types
        else [(m, p) for p in sel.patterns if (m := pattern_module(p))]
    )
    missing = []
    for module, pat in pairs:
        target = pattern_module(pat) or module
        if pat in mapped or target in names or any(n.startswith(target + ".") for n in names):
            continue
        missing.append(module)
    return missing


def _memory(method: str, params: dict[str, int], trainable: set[str], dtype: str, act: int | None) -> MemoryEstimate:
    frozen = sum(n for k, n in params.items() if k not in trainable)
    train = sum(n for k, n in params.items() if k in trainable)
    weights = {dtype: frozen * BYTES[dtype]}
    weights["float32"] = weights.get("float32", 0) + train * 4
    return MemoryEstimate(method, train, weights, {"float32": train * 4}, {"float32": train * 4 * ADAMW_STATES}, act)


def check(
    selection: Selection | str | os.PathLike | list[str],
    model: Any,
    *,
    allow_unmatched: bool = False,
    seq_len: int = 512,
    lora_rank: int | None = None,
    dtype: str | None = None,
    activations: bool = True,
    allow_other_model: bool = False,
) -> CheckReport:
    """Report what ``selection`` trains in ``model`` (a folder, weight file, builtin, hub id in the cache, or a
    module whose config is rebuilt on the meta device) and what training costs; see the module docstring.

    ``allow_unmatched=False`` raises when a pattern matches nothing. ``lora_rank`` fixes the LoRA rank of
    the comparison (default: the rank whose adapter comes closest to the selection's size). ``dtype`` is the
    model's training dtype (default: its config's; bf16 for GGUF files, which train converted to bf16).
    A selection recording another architecture than the model's is an error unless ``allow_other_model``.
    """
    require("transformers", "peft", extra="train")
    if seq_len < 1:
        raise SpectrumError(f"--seq-len must be at least 1, got {seq_len}.")
    sel = load_selection(selection)
    config, fallback = _config(model)
    dtype = dtype or _dtype_name(config, fallback)
    if dtype not in BYTES:
        raise SpectrumError(f"--dtype {dtype!r} is not one of {', '.join(BYTES)}.")
    meta = meta_model(config)
    params = {n: p.numel() for n, p in meta.named_parameters()}
    aliases = tied_aliases(meta)
    scale = BYTES[dtype] / 2 if dtype == "float32" else 1

    for p in meta.parameters():
        p.requires_grad_(True)
    full_act = int(activation_bytes(meta, seq_len) * scale / seq_len) if activations else None

    summary = freeze(meta, sel, strict=False, allow_other_model=allow_other_model)
    unmatched = list(summary.unmatched)
    if unmatched and not allow_unmatched:
        raise SpectrumError(
            f"{len(unmatched)} pattern(s) match nothing in this model: {', '.join(unmatched[:5])}"
            f"{', ...' if len(unmatched) > 5 else ''}. Select again from a scan of this model, or pass "
            "--allow-unmatched."
        )
    trained = set(summary.trainable)
    sel_act = int(activation_bytes(meta, seq_len) * scale / seq_len) if activations else None

    memory = [
        _memory("full fine-tuning", params, set(params), dtype, full_act),
        _memory("this selection", params, trained, dtype, sel_act),
    ]
    lora = _lora_estimate(config, params, dtype, summary.trainable_params, lora_rank, seq_len, scale, activations)
    if lora is not None:
        memory.append(lora)
    memory += lowbit_estimates(meta, params, trained, dtype, sel_act, lora)
    notes = list(summary.notes)
    if summary.partial:
        notes.append(
            f"{len(summary.partial)} tensor(s) train only some rows ({', '.join(list(summary.partial)[:3])}): "
            "the trainable count has only those rows; memory has the whole tensors"
        )
    return CheckReport(
        model=str(getattr(model, "name_or_path", model)),
        selection=str(selection) if isinstance(selection, (str, os.PathLike)) else "the selection",
        dtype=dtype,
        seq_len=seq_len,
        patterns=_patterns(summary, sel, aliases),
        unmatched=unmatched,
        missing_modules=_missing_modules(sel, set(params) | set(aliases), summary.mapped),
        trainable_params=summary.trainable_params,
        total_params=summary.total_params,
        memory=memory,
        notes=notes,
        backward=backward_text(summary.trainable, layer_count(meta)),
    )


def _lora_estimate(
    config,
    params: dict[str, int],
    dtype: str,
    target: int,
    rank: int | None,
    seq_len: int,
    scale: float,
    activations: bool,
) -> MemoryEstimate | None:
    """LoRA on all linear layers (what ``spectrum train --method lora`` does) at the rank nearest ``target``."""
    import torch
    from peft import LoraConfig, get_peft_model

    def build(r):
        base = meta_model(config)
        with torch.device("meta"), meta_autocast():
            # adapters in bf16 like the base: mixed precision computes them in bf16 (their fp32 masters are
            # counted as weights below)
            return get_peft_model(
                base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM")
            ).to(torch.bfloat16)

    try:
        per_rank = sum(p.numel() for p in build(1).parameters() if p.requires_grad)
    except ValueError:
        return None  # no linear layer for LoRA
    if rank is None:
        rank = max(1, round(target / per_rank)) if per_rank else 1
    model = build(rank)
    adapter = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    act = int(activation_bytes(model, seq_len) * scale / seq_len) if activations else None
    weights = {dtype: sum(params.values()) * BYTES[dtype]}
    weights["float32"] = weights.get("float32", 0) + sum(adapter.values()) * 4
    n = sum(adapter.values())
    return MemoryEstimate(
        f"LoRA r={rank} (all-linear)", n, weights, {"float32": n * 4}, {"float32": n * 4 * ADAMW_STATES}, act
    )
