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

from .errors import SpectrumError

#: the percent of each module type kept when none is given (the reference tool's default, Spectrum-50).
DEFAULT_TOP_PERCENT = 50.0
#: the ways to choose (``SelectConfig.rule``); the last two: ``depth``.
RULES = ("per-type", "global", "budget", "top-layers", "top-layers-per-type")
#: the values of ``embeddings``: train or freeze the input embeddings and the output head together.
EMBEDDINGS = ("train", "freeze")


def embedding_switches(
    embeddings: str | None, train_embeddings: bool, train_lm_head: bool | None
) -> tuple[bool, bool | None]:
    """``(train_embeddings, train_lm_head)`` once the one switch ``embeddings`` (``train``/``freeze``, or None:
    the two flags as given) is applied; an error for another value, or a ``train_lm_head`` that contradicts it.
    `spectrum select` and `spectrum train` both read their flags through this."""
    if embeddings is None:
        return train_embeddings, train_lm_head
    if embeddings not in EMBEDDINGS:
        raise SpectrumError(f"--embeddings {embeddings!r} is not understood: use train or freeze.")
    on = embeddings == "train"
    if train_lm_head is not None and train_lm_head != on:
        raise SpectrumError(
            f"--embeddings {embeddings} sets the output head too; drop --{'no-' if on else ''}train-lm-head "
            "(or drop --embeddings and set --train-embeddings/--train-lm-head one by one)."
        )
    return on, on


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
    rule: str = _option(
        "per-type",
        "per-type (Spectrum-n), global (scale-invariant scores only), budget, top-layers (whole layers from the "
        "top within the budget; default budget: the per-type pick's size, or --match's) or top-layers-per-type "
        "(Spectrum-n's count per type, from the top layers).",
    )
    budget: float | int | str | None = _option(
        None,
        "Trainable-parameter budget: a fraction (0.25) or a count (500M); implies --rule budget unless the rule "
        "is top-layers.",
        cli_type=str,
    )
    min_layer: int | None = _option(
        None, "Modules below this layer (0: the bottom) are not candidates, whatever the rule.", "--min-layer"
    )
    include: str | None = _option(None, "Only rank modules whose name matches this regex.")
    exclude: str | None = _option(None, "Never select modules whose name matches this regex.")
    # what trains besides the ranked modules
    embeddings: str | None = _option(
        None,
        "train or freeze: the input embeddings and the output head together (default: train, as the reference "
        "tool does; the printed summary says what they cost). Sets --train-embeddings/--train-lm-head.",
        "--embeddings",
    )
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
    # the random control
    random: bool = _option(
        False,
        "Draw the modules at random instead: per type as many as the rule's pick (or --match's) has, from the "
        "same candidates.",
        "--random",
    )
    seed: int = _option(0, "With --random: the draw's seed (the same seed draws the same modules).", "--seed")
    match: Any = _option(
        None,
        "A selection (.json/.yaml/.txt) of this model that --random matches, or whose trainable parameters are "
        "--rule top-layers's budget.",
        "--match",
        cli_type=Path,
    )
    match_depth: bool = _option(
        False,
        "With --random: also as many of each type in each depth slice (--depth-bins) of the layers.",
        "--match-depth",
    )
    depth_bins: int = _option(
        4,
        "With --match-depth: how many equal slices of the layers (4: quarters); slices of one layer leave "
        "nothing to draw (one module per type each).",
        "--depth-bins",
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
