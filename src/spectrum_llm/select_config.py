"""The options of a selection, stated once.

``SelectConfig``'s fields are ``select``'s keywords and, with dashes, `spectrum select`'s flags (the CLI builds
its options from them, as it does `spectrum train`'s from ``TrainConfig``); each field's help is the flag's
``--help`` text. The rules (``rules``) read the ranking fields; ``selection.select_to`` also reads the
writing ones (``format``, ``max_rank``, ``min_rank``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the percent of each module type kept when none is given (the reference tool's default, Spectrum-50).
DEFAULT_TOP_PERCENT = 50.0
#: the ways to choose (``SelectConfig.rule``).
RULES = ("per-type", "global", "budget")


def _option(default: Any, text: str, *flags: str, cli_type: type | None = None) -> Any:
    """A SelectConfig field with its help text. It is a `spectrum select` flag: ``--field-name`` (``--x/--no-x``
    for booleans) unless ``flags`` names it, of the field's type unless ``cli_type`` says how the command line
    gives it (a budget as text, a folder as a path)."""
    return field(default=default, metadata={"help": text, "flags": flags, "cli": True, "type": cli_type})


@dataclass
class SelectConfig:
    """Every option of a selection; see ``selection.select`` for what each rule does with them."""

    # what is ranked, and how much is kept
    top_percent: float = _option(
        DEFAULT_TOP_PERCENT, "Percent of each module type kept, in (0, 100].", "--top-percent", "-p"
    )
    rule: str = _option("per-type", "per-type (Spectrum-n), global (scale-invariant scores only) or budget.")
    budget: float | int | str | None = _option(
        None,
        "Trainable-parameter budget: a fraction (0.25) or a count (500M); implies --rule budget.",
        cli_type=str,
    )
    include: str | None = _option(None, "Only rank modules whose name matches this regex.")
    exclude: str | None = _option(None, "Never select modules whose name matches this regex.")
    # what trains besides the ranked modules
    train_embeddings: bool = _option(True, "Train the input embeddings (and a head tied to them).")
    train_lm_head: bool | None = _option(
        None,
        "Train the output head (default: yes; a head tied to the "
        "embeddings is that one tensor, and follows --train-embeddings).",
    )
    train_norms: bool = _option(False, "Train every norm weight.")
    parts: bool = _option(False, "Rank the parts of fused projections (q/k/v, gate/up) separately.", "--parts")
    compat: bool = _option(
        False,
        "Write what the reference tool writes for this model, byte for byte (from its scan file or from ours).",
        "--compat",
    )
    # where sizes and scans come from
    model: Any = _option(
        None,
        "Model folder: print the freeze summary for it (built on the meta device) and take parameter counts from it.",
        "--model",
        cli_type=Path,
    )
    catalogue: str | os.PathLike | Sequence[str | os.PathLike] | None = _option(
        None,
        "A folder of snr_results_<model>.json scans searched before the built-in ones (also $SPECTRUM_CATALOGUE).",
        "--catalogue",
        cli_type=Path,
    )
    # how it is written (select_to)
    format: str | None = _option(
        None,
        "yaml (Axolotl), json (spectrum-llm), txt, or "
        "peft (a LoraConfig on the selected modules, rank by score); default: from "
        "the output's extension.",
        "--format",
        "-f",
    )
    max_rank: int = _option(32, "With --format peft: the best module's LoRA rank.", "--max-rank")
    min_rank: int | None = _option(
        None,
        "With --format peft: the last selected module's rank in each type (default: a quarter of --max-rank).",
        "--min-rank",
    )

    @property
    def peft(self) -> bool:
        """Whether the output is a PEFT LoraConfig on the selected modules rather than the selection itself."""
        return self.format is not None and self.format.lower().lstrip(".") == "peft"
