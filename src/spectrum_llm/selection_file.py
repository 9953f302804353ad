"""The selection file: a Selection (the modules to train and the Axolotl patterns that unfreeze them) and
its forms on disk.

A Selection carries both views a trainer needs: ``modules`` (the module names chosen) and ``patterns``
(Axolotl's ``unfrozen_parameters`` list, which ``freeze`` applies the same way Axolotl does). Our ``.json``
file (``Selection.to_json``, format ``spectrum-llm/selection``) records the rule, the scores and the
parameter counts too; ``load_selection`` also reads an Axolotl ``.yaml`` or a ``.txt`` of patterns, which
know only the patterns. How a selection is made: ``rules``; how it is written: ``exports``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import axolotl
from .axolotl import pattern_module
from .errors import SpectrumError

FORMAT = "spectrum-llm/selection"
FORMAT_VERSION = 1


@dataclass
class TypeSelection:
    """What one module type contributed: how many candidates, how many kept, and their parameters."""

    type: str
    total: int
    kept: int
    modules: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    numel: int = 0
    selected_numel: int = 0


@dataclass
class Selection:
    """The modules to train and the Axolotl patterns that unfreeze exactly them.

    ``patterns`` = ``extras`` (embeddings, lm_head, norms) followed by each type's patterns in
    ``types`` order; the YAML export writes a ``# <type> layers`` comment before each type.
    """

    modules: list[str]
    patterns: list[str]
    types: dict[str, TypeSelection] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    model: str = ""
    estimator: str = ""
    trainable_params: int | None = None
    total_params: int | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)
    extra_params: int | None = None  # of trainable_params, those of the extras (embeddings, lm_head, norms)
    architecture: dict[str, Any] | None = None  # the model's layers and shapes (see architecture.py); None: unknown

    def to_json(self) -> dict[str, Any]:
        """The ``.json`` selection file's content (non-finite scores as strings, so it stays strict JSON)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "estimator": self.estimator,
            "rule": self.rule,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "extra_params": self.extra_params,
            "architecture": self.architecture,
            "modules": self.modules,
            "patterns": self.patterns,
            "extras": self.extras,
            "types": {t: asdict(v) for t, v in self.types.items()},
            "scores": {k: (v if v is None or math.isfinite(v) else str(v)) for k, v in self.scores.items()},
            "shapes": self.shapes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "selection") -> Selection:
        """Read ``to_json``'s content back; ``source`` names the file in errors (not ours, damaged, bad patterns)."""
        if data.get("format") != FORMAT:
            raise SpectrumError(
                f'{source} is JSON but not a spectrum-llm selection (no "format": "{FORMAT}"). '
                "Create one with `spectrum select SCAN -o sel.json`."
            )
        try:
            types = {t: TypeSelection(**v) for t, v in (data.get("types") or {}).items()}
            scores = {k: (float(v) if v is not None else None) for k, v in (data.get("scores") or {}).items()}
            sel = cls(
                modules=list(data["modules"]),
                patterns=list(data["patterns"]),
                types=types,
                scores=scores,
                rule=dict(data.get("rule") or {}),
                extras=list(data.get("extras") or []),
                model=data.get("model", ""),
                estimator=data.get("estimator", ""),
                trainable_params=data.get("trainable_params"),
                total_params=data.get("total_params"),
                shapes={k: list(v) for k, v in (data.get("shapes") or {}).items()},
                extra_params=data.get("extra_params"),
                architecture=data.get("architecture"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SpectrumError(
                f"{source} is a damaged selection file ({e}). Re-create it with `spectrum select`."
            ) from None
        axolotl.check_patterns(sel.patterns, source)
        return sel

    @classmethod
    def from_patterns(cls, patterns: Sequence[str], source: str = "patterns") -> Selection:
        """A selection known only by its patterns (an Axolotl YAML or a .txt list)."""
        patterns = [str(p) for p in patterns]
        axolotl.check_patterns(patterns, source)
        modules = [m for m in (pattern_module(p) for p in patterns) if m]
        return cls(modules=modules, patterns=patterns, extras=list(patterns), rule={"source": source})


def load_selection(obj: Selection | str | os.PathLike | Sequence[str]) -> Selection:
    """Accept a Selection, a .yaml/.json/.txt file, or a list of Axolotl patterns."""
    if isinstance(obj, Selection):
        return obj
    if isinstance(obj, (list, tuple)):
        return Selection.from_patterns(obj, "the pattern list")
    if not isinstance(obj, (str, os.PathLike)):
        raise SpectrumError(
            f"Cannot read a selection from {type(obj).__name__}: pass a Selection, a path to a "
            ".yaml/.json/.txt file, or a list of patterns."
        )
    path = Path(obj)
    if not path.is_file():
        raise SpectrumError(f"Selection file {path} does not exist. Create it with `spectrum select SCAN -o {path}`.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SpectrumError(f"{path} is not valid JSON ({e}).") from None
        if not isinstance(data, dict):
            raise SpectrumError(f"{path} is not a spectrum-llm selection (expected a JSON object).")
        return Selection.from_json(data, str(path))
    if suffix in axolotl.SUFFIXES:
        return Selection.from_patterns(axolotl.read(path), str(path))
    raise SpectrumError(f"{path}: unknown selection format {suffix or '(no extension)'}; use .yaml, .json or .txt.")
