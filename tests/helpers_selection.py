"""Synthetic scans and Axolotl's unfreeze rule, written out independently of spectrum_llm.freeze."""

from __future__ import annotations

import re

from spectrum_llm.results import ModuleScore, ScanResult

LLAMA_TYPES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def column_part() -> ModuleScore:
    """GPT-2's fused ``c_attn`` query part: a column range (dimension 1), which no export can write."""
    return ModuleScore(
        name="h.0.attn.c_attn.q",
        type="attn.c_attn.q",
        layer=0,
        shape=[4, 4],
        snr=1.0,
        kind="linear",
        param="h.0.attn.c_attn.weight",
        part="q",
        rows=[0, 4],
        dim=1,
        numel=16,
    )


def synthetic_scan(
    scores: dict[str, list[float | None]], numel: int | dict[str, int] = 100, estimator: str = "mp", extras: bool = True
) -> ScanResult:
    """A Llama-like scan: ``scores[type][layer]`` is the SNR of ``model.layers.<layer>.<type>``."""
    mods: list[ModuleScore] = []
    if extras:
        mods.append(
            ModuleScore(
                name="model.embed_tokens",
                type="embed_tokens",
                layer=None,
                shape=[10, 10],
                snr=1.0,
                kind="embedding",
                param="model.embed_tokens.weight",
                numel=100,
            )
        )
    layers = max(len(v) for v in scores.values())
    for layer in range(layers):
        for t, vals in scores.items():
            if layer < len(vals):
                n = numel if isinstance(numel, int) else numel[t]
                mods.append(
                    ModuleScore(
                        name=f"model.layers.{layer}.{t}",
                        type=t,
                        layer=layer,
                        shape=[10, 10],
                        snr=vals[layer],
                        kind="linear",
                        param=f"model.layers.{layer}.{t}.weight",
                        numel=n,
                    )
                )
    if extras:
        mods.append(
            ModuleScore(
                name="lm_head",
                type="lm_head",
                layer=None,
                shape=[10, 10],
                snr=1.0,
                kind="lm_head",
                param="lm_head.weight",
                numel=100,
            )
        )
    return ScanResult(model="synthetic", estimator=estimator, modules=mods)


def axolotl_unfrozen(named_parameters, patterns: list[str]) -> dict[str, list[tuple[int, int]] | None]:
    """Axolotl's freeze_layers_except, restated: which names it unfreezes, and their row ranges (None: all rows)."""
    out: dict[str, list[tuple[int, int]] | None] = {}
    parsed = []
    for p in patterns:
        m = re.match(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$", p)
        rng = None
        if m:
            p, a, b = m.groups()
            rng = (int(a), int(a) + 1) if b is None and a.isdecimal() else (int(a or 0), int(b) if b else None)
        parsed.append((re.compile(re.sub(r"\.(?!\+)", "\\.", p)), rng))
    for name, param in named_parameters:
        hit, ranges = False, []
        for rx, rng in parsed:
            if rx.match(name):
                hit = True
                if rng is not None:
                    ranges.append((rng[0], rng[1] if rng[1] is not None else len(param)))
        if hit:
            out[name] = sorted(ranges) or None
    return out


def module_table(layers: int = 4, types=(("self_attn.q_proj", (8, 8)), ("mlp.up_proj", (16, 8)))) -> list[dict]:
    """Rows as the benchmarks' ``benchlib.module_table`` gives them: name, type, layer, shape, numel, pattern."""
    return [
        {
            "name": f"model.layers.{i}.{t}",
            "type": t,
            "layer": i,
            "shape": list(shape),
            "numel": shape[0] * shape[1],
            "pattern": f"^model.layers.{i}.{t}.(weight|bias)$",
        }
        for i in range(layers)
        for t, shape in types
    ]
