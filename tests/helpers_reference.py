"""The reference tool's scan and YAML, restated from its published rules (QuixiAI/spectrum, spectrum.py) on an
in-memory model, independently of spectrum_llm, so tests can compare our --compat and --reference-json with it.

Rules: every module of ``named_modules()`` with a ``weight``/``bias``/``inv_freq`` attribute gives a type (its name
after the first all-digit part, or its name); types are sorted by first part, then by name; each type scores the
modules with a ``weight`` whose name contains it, in ``named_modules()`` order (a 1-D weight as 1 x n), by
fp32 ``svdvals``: sigma = IQR / 1.349, threshold = sigma * (1 + sqrt(beta)), snr = sum(signal) / sum(noise) / max.
"""

from __future__ import annotations

import json

import numpy as np
import torch


def _type(name: str) -> str:
    parts = name.split(".")
    i = next((k for k, p in enumerate(parts) if p.isdigit()), -1)
    return ".".join(parts[i + 1 :]) if i != -1 else name


def _ratio(w: torch.Tensor) -> float:
    w = w.detach().float()
    if w.ndim < 2:
        w = w.unsqueeze(0)
    s = torch.linalg.svdvals(w)
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    n, m = w.shape[-2:]
    beta = n / m if n < m else m / n
    threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal_mask = s > threshold
    signal = s[signal_mask].sum() if signal_mask.any() else torch.tensor(0.0)
    noise = s[~signal_mask].sum() if (~signal_mask).any() else torch.tensor(1.0)
    snr = signal / noise if noise != 0 else float("inf")
    return float(snr / s[0])


def reference_scan(model: torch.nn.Module) -> dict:
    types = set()
    for name, module in model.named_modules():
        if any(hasattr(module, a) for a in ("weight", "bias", "inv_freq")):
            types.add(_type(name))
    groups: dict[str, list[str]] = {}
    for t in types:
        groups.setdefault(t.split(".")[0], []).append(t)
    ordered = [t for g in sorted(groups) for t in sorted(groups[g])]
    out: dict = {}
    for t in ordered:
        for name, module in model.named_modules():
            if t in name and hasattr(module, "weight"):
                out[name] = {"snr": _ratio(module.weight), "type": t}
    return out


def reference_json_text(model: torch.nn.Module) -> str:
    return json.dumps(reference_scan(model), indent=4)


def reference_yaml(data: dict, top_percent: float) -> str:
    by_type: dict[str, list] = {}
    for name, info in data.items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    lines = ["unfrozen_parameters:", "- ^lm_head.weight$", "- ^model.embed_tokens.weight$"]
    for t, ms in by_type.items():
        lines.append(f"# {t} layers")
        lines += [f"- {n}" for n, _ in sorted(ms, key=lambda x: x[1], reverse=True)[: int(len(ms) * top_percent / 100)]]
    return "\n".join(lines) + "\n"
