"""The GPU benchmark's results: ``gpu.json`` and ``gpu.md``, rewritten after every measurement."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Report:
    """The results so far, rewritten (atomically) as JSON and Markdown after every measurement."""

    def __init__(self, out: Path, settings: dict, env: dict):
        self.out = out
        self.data: dict[str, Any] = {
            "settings": settings,
            "environment": env,
            "scan": None,
            "train": [],
            "skipped": [],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "finished": None,
        }

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("gpu.json", json.dumps(self.data, indent=2, default=str) + "\n"),
            ("gpu.md", markdown(self.data)),
        ):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)


def _fmt(v, spec: str = ".2f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 1e7 else f"{n / 1e6:.2f}M"


def markdown(d: dict) -> str:
    env = d["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpus')} cores)"
    lines = [
        f"# GPU benchmark on {where}",
        "",
        f"torch {env.get('torch')}, transformers {env.get('transformers')}, peft {env.get('peft')}; "
        f"started {d['started']}, finished {d['finished'] or '(not finished)'}.",
        "",
    ]
    s = d.get("scan")
    if s:
        lines += [
            f"## Scan: {s['checkpoint']}",
            "",
            "| method | wall s (process) | load s | compute s | modules | peak GPU MiB |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, label in (
            ("ours", "spectrum-llm (Gram + eigvalsh, float64, staged)"),
            ("reference", "reference method (fp32 model, svdvals per module)"),
        ):
            r = s.get(key) or {}
            status = "" if r.get("status", "ok") == "ok" else f" ({r.get('status')})"
            lines.append(
                f"| {label}{status} | {_fmt(r.get('wall_s'), '.1f')} | {_fmt(r.get('load_s'), '.1f')} | "
                f"{_fmt(r.get('compute_s'), '.1f')} | {r.get('modules', '-')} | "
                f"{_fmt(r.get('peak_gpu_mib'), '.0f')} |"
            )
        if s.get("speedup_at_least"):
            done = (s.get("reference") or {}).get("modules", 0)
            lines.append(
                f"\nThe reference method did not finish ({done} modules done): spectrum-llm is at least "
                f"{s['speedup_at_least']:.2f}x faster end to end."
            )
        if s.get("speedup"):
            lines.append(
                f"\nspectrum-llm is {s['speedup']:.2f}x faster end to end; the reference method's svdvals "
                f"alone, without its loading, take {s.get('compute_speedup') or 0:.2f}x our whole scan."
            )
        ref = s.get("reference") or {}
        if ref.get("per_layer_s") is not None:
            lines.append(
                f"The reference method's svdvals took {ref['per_layer_s']:.2f} s per decoder layer and "
                f"{ref['embedding_lm_head_s']:.2f} s on the embedding and lm_head together."
            )
        acc = (s.get("ours") or {}).get("accuracy")
        if acc:
            lines.append(
                f"Largest difference of our device singular values from float64 on the CPU: "
                f"{acc['ours_max_rel']:.1e} of the largest singular value (the reference method's fp32 "
                f"svdvals: {acc['reference_fp32_max_rel']:.1e}), over {', '.join(acc['matrices'])}."
            )
        if s.get("snr_max_rel_diff") is not None:
            lines.append(
                f"Largest relative difference of the reference SNR, ours vs the reference method: "
                f"{s['snr_max_rel_diff']:.1e}."
            )
        lines.append("")
    rows = d.get("train") or []
    if rows:
        lines += [
            "## Training cost",
            "",
            f"Sequence length {d['settings']['seq_len']}, fixed micro-batch {d['settings']['micro_batch']}, "
            "bf16 weights, fp32 master copies and AdamW states for trained parameters, autocast bf16, "
            "gradient checkpointing.",
            "",
            "| model | method | trainable | peak MiB @ fixed | step s @ fixed | tokens/s @ fixed | "
            "largest micro-batch | tokens/s @ largest | peak MiB @ largest |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            if r.get("status", "ok") != "ok" and not r.get("fixed"):
                lines.append(f"| {r['model']} | {r['method']} | - | {r.get('status')} | | | | | |")
                continue
            fx, mx = r.get("fixed") or {}, r.get("largest") or {}
            trainable = (
                f"{_millions(r['trainable_params'])} ({100 * r['trainable_fraction']:.1f}%)"
                if r.get("trainable_params")
                else "-"
            )
            big = mx.get("micro_batch")
            big_s = "-" if big is None else f"{big}{'+' if mx.get('capped') else ''}"
            peak = _fmt(fx.get("peak_mib"), ".0f", fx.get("status", "-"))
            lines.append(
                f"| {r['model']} | {r['method']} | {trainable} | {peak} | "
                f"{_fmt(fx.get('step_s'), '.3f')} | {_fmt(fx.get('tokens_per_s'), ',.0f')} | {big_s} | "
                f"{_fmt(mx.get('tokens_per_s'), ',.0f')} | {_fmt(mx.get('peak_mib'), '.0f')} |"
            )
        lora = [r for r in rows if r["method"] == "lora" and r.get("lora_rank")]
        if lora:
            lines.append(
                "\nLoRA ranks (matched to Spectrum-25's linear parameters): "
                + ", ".join(f"{r['model']} r={r['lora_rank']}" for r in lora)
                + "."
            )
        lines.append("`+` after a micro-batch: the search stopped at its cap or time limit, not at an out-of-memory.")
        lines.append("")
    if d.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {x}" for x in d["skipped"]] + [""]
    return "\n".join(lines)
