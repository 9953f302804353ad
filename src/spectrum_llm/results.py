"""Scan results: the dataclasses that cross from scanning to selection, and their files.

Three layouts are read: ours (``{"modules": [...]}``) and the reference tool's two
(flat ``{name: {"snr", "type"}}`` and grouped ``{type: {name: snr}}``, read in ``reference``, beside
their writing). Scans are written atomically (``files``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .files import write_json_atomic

FORMAT = "spectrum-llm/scan"
FORMAT_VERSION = 1

#: kinds of module; only "linear" (weight matrices inside the blocks) is ranked by default.
RANKED_KINDS = ("linear",)


@dataclass(kw_only=True)
class ModuleScore:
    """The score of one weight matrix (or one expert of a 3-D expert tensor, or one part of a fused one).

    ``param`` is the checkpoint tensor this score was computed from. ``rows`` is set when the score
    covers only a slice ``param[rows[0]:rows[1]]`` along dimension ``dim`` (an expert of a 3-D tensor,
    or the q/k/v or gate/up part of a fused projection). ``dtype`` is the element type the checkpoint stores;
    ``dequantized`` names the scheme its values were dequantized from (fp8, MXFP4, GGUF), None for float weights.
    """

    name: str
    type: str
    layer: int | None
    shape: list[int]
    snr: float | None
    kind: str = "linear"
    param: str = ""
    expert: int | None = None
    part: str | None = None
    rows: list[int] | None = None
    dim: int = 0
    numel: int = 0
    skipped: str | None = None
    stats: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None
    dequantized: str | None = None

    @property
    def ranked(self) -> bool:
        return self.snr is not None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, {}) or k in ("snr", "layer")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModuleScore:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ScanResult:
    """Every module's score for one checkpoint and one estimator.

    ``estimator_version`` is the estimator's version when the scan was made (see ``estimators.REGISTRY``);
    None for scans that do not record it (files written before it was recorded, the reference tool's layouts).
    """

    model: str
    estimator: str
    modules: list[ModuleScore]
    fingerprint: str = ""
    version: str = ""
    layout: str = "spectrum-llm"
    modules_regex: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    estimator_version: int | None = None
    cached: bool = field(default=False, compare=False)  # read back from an earlier scan, not computed now

    def ranked(self) -> list[ModuleScore]:
        return [m for m in self.modules if m.ranked]

    def tally(self) -> str:
        """What the scan holds, in one phrase: ``211 scored, 61 skipped (1-D weights)``."""
        skipped: dict[str, int] = {}
        for m in self.modules:
            if not m.ranked:
                why = _skip_kind(m)
                skipped[why] = skipped.get(why, 0) + 1
        text = f"{len(self.modules) - sum(skipped.values())} scored"
        if len(skipped) == 1:
            text += f", {sum(skipped.values())} skipped ({next(iter(skipped))})"
        elif skipped:
            text += f", {sum(skipped.values())} skipped (" + ", ".join(f"{n} {k}" for k, n in skipped.items()) + ")"
        return text

    def types(self) -> list[str]:
        """Module types in first-seen order."""
        return list(dict.fromkeys(m.type for m in self.modules))

    def by_type(self) -> dict[str, list[ModuleScore]]:
        out: dict[str, list[ModuleScore]] = {}
        for m in self.modules:
            out.setdefault(m.type, []).append(m)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "estimator": self.estimator,
            **({"estimator_version": self.estimator_version} if self.estimator_version is not None else {}),
            "fingerprint": self.fingerprint,
            "version": self.version,
            "modules_regex": self.modules_regex,
            "config": self.config,
            "modules": [m.to_json() for m in self.modules],
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_json())


def storage_summary(scan: ScanResult) -> str | None:
    """How many modules were scored on dequantized weights, and from which schemes; None if none were."""
    deq = [m for m in scan.modules if m.dequantized]
    if not deq:
        return None
    schemes = ", ".join(f"{s} x{n}" for s, n in Counter(f"{m.dtype} ({m.dequantized})" for m in deq).items())
    return f"{len(deq)} modules scored on weights dequantized to float32 from {schemes}"


def _skip_kind(m: ModuleScore) -> str:
    why = (m.skipped or "").lower()
    if why.startswith("1-d"):
        return "1-D weights"
    if "quantized" in why:
        return "quantized"
    if "nan/inf values" in why:
        return "damaged"
    if "offloaded" in why:
        return "offloaded"
    if "no score" in why or not why:
        return "no score"
    return "unscorable matrices"
