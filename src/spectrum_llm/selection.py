"""Selecting the modules to train: ``select`` makes a Selection from a scan, ``select_to`` also writes it for a
trainer (what `spectrum select` does).

One module per idea: ``selection_file`` (the Selection and its file format), ``select_config`` (every option,
stated once), ``sources`` (which scan: a file, a catalogue's, or a scan of a local checkpoint), ``rules`` (the
ranking rules), ``selection_text`` (the selection in words) and ``exports`` (its forms on disk). This module joins
them, and re-exports the names users import from it (``Selection``, ``load_selection``, ``candidates``, ...);
the package's own modules import from the modules that define them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import load_meta_model, tied_head
from .results import ScanResult
from .rules import candidates, choose, order_key, parse_budget, rank
from .select_config import DEFAULT_TOP_PERCENT, RULES, SelectConfig
from .selection_file import FORMAT, FORMAT_VERSION, Selection, TypeSelection, load_selection
from .selection_text import (
    backward_text,
    embeddings_line,
    evidence_note,
    extras_text,
    rule_text,
    selection_names,
    share_text,
    tied_note,
)
from .sources import resolve_scan

if TYPE_CHECKING:
    from .freezing import FreezeSummary
    from .lora import LoraPlan

__all__ = [
    "DEFAULT_TOP_PERCENT",
    "FORMAT",
    "FORMAT_VERSION",
    "RULES",
    "SelectConfig",
    "SelectOutcome",
    "Selection",
    "TypeSelection",
    "candidates",
    "load_selection",
    "order_key",
    "parse_budget",
    "rank",
    "select",
    "select_outcome",
    "select_to",
]


def _config(config: SelectConfig | None, options: dict[str, Any]) -> SelectConfig:
    """``config`` with ``options`` (SelectConfig fields) laid over it; the defaults where neither is given."""
    if config is None:
        return SelectConfig(**options)
    return dataclasses.replace(config, **options) if options else config


def select(scan: ScanResult | str | os.PathLike, config: SelectConfig | None = None, **options: Any) -> Selection:
    """Choose the modules to train from a scan. ``options`` are SelectConfig fields (``top_percent=25``,
    ``rule="budget"``, ...), laid over ``config`` if given.

    ``rule``: ``per-type`` keeps the top ``top_percent`` of each module type (the paper's
    Spectrum-n, ``int(n * P / 100)`` per type); ``global`` keeps the top ``top_percent`` of all
    modules together (only meaningful for a scale-invariant estimator, so refused on reference
    scores); ``budget`` fills a trainable-parameter budget (``0.25`` of the model or ``"500M"``)
    by raising every type's percentile together, stopping before the first module that would
    overflow it; ``top-layers`` and ``top-layers-per-type`` pick by depth, ``min_layer`` leaves the
    layers below it out under every rule, and ``random=True`` (``seed``, ``match``, ``match_depth``)
    draws a pick of the rule's size at random instead (see ``depth`` and ``random_control``).
    ``include``/``exclude`` are regexes (``re.search``) on module names that narrow the candidates.
    ``compat`` reproduces the reference tool's YAML exactly, ignores the ranking options and refuses
    ``random``, ``match``, ``min_layer`` and the depth rules. ``embeddings`` (``train``/``freeze``) sets
    ``train_embeddings`` and ``train_lm_head`` together.
    ``model`` (a module or folder) supplies parameter sizes when the scan lacks them.

    A tied lm_head is the embedding matrix, which Axolotl (and ``freeze``) know only by its embedding name,
    so it trains exactly when ``^<embedding>$`` is listed. ``train_lm_head`` (default: yes, or as
    ``train_embeddings`` when tied) then asks for that tensor too: ``train_embeddings=False,
    train_lm_head=True`` on a tied model lists the embedding pattern, and ``rule["lm_head_tied"]`` is set.
    Whether the head is tied: ``models.tied_head``.

    ``scan`` is a ScanResult, a scan file, or a model: a local checkpoint is scanned (once, cached); a model
    id with no local weights takes its published scan from the catalogue (users' ``catalogue`` folders and
    ``$SPECTRUM_CATALOGUE`` first), and ``rule["scan"]`` says which scan was used.
    """
    cfg = _config(config, options)
    source = None
    if not isinstance(scan, ScanResult):
        scan, source = resolve_scan(scan, catalogue=cfg.catalogue)
    sel = choose(scan, cfg)
    if source:
        sel.rule["scan"] = source
    return sel


@dataclass
class SelectOutcome:
    """A selection with what `spectrum select` says about it: the scan it came from (``source``), whether the
    model's head is tied to its embeddings, and once ``write`` has run, where it went, the freeze summary (when
    ``config.model`` is given) and the LoRA plan (with ``format="peft"``)."""

    selection: Selection
    scan: ScanResult
    source: str
    config: SelectConfig  # ``model`` as built: a folder given is a model on the meta device here
    tied: bool
    output: str | None = None
    summary: FreezeSummary | None = None
    plan: LoraPlan | None = None

    def write(self, output: str | os.PathLike) -> Path | None:
        """Write the selection (or, with ``format="peft"``, its LoRA plan) to ``output`` (``-``: stdout) in the
        format ``config.format`` or the extension names; returns the file written (None for stdout)."""
        from .exports import write_selection
        from .freezing import freeze

        sel, cfg = self.selection, self.config
        self.output = str(output)
        self.summary = freeze(cfg.model, sel) if cfg.model is not None else None
        if not cfg.peft:
            return write_selection(sel, output, cfg.format)
        from .lora import lora_config

        self.plan = lora_config(sel, max_rank=cfg.max_rank, min_rank=cfg.min_rank, model=cfg.model)
        if self.output == "-":
            sys.stdout.write(self.plan.to_json())
            return None
        return self.plan.save(output)

    def lines(self) -> list[tuple[str, bool]]:
        """What `spectrum select` prints once written: (console markup, whether it may run past the width)."""
        sel, cfg = self.selection, self.config
        where = "stdout" if self.output == "-" else self.output
        selected = f"[green]Selected[/] {len(sel.modules)}"
        if self.plan is not None:
            return [(f"{selected} modules ({sel.rule.get('rule')}) -> PEFT LoraConfig {where}\n{self.plan}", False)]
        what = f"{extras_text(sel, self.tied)} by {rule_text(sel)}"
        out = [(f"{selected} ranked modules{what} -> {where}", True)]
        if note := tied_note(sel):
            out.append((note, False))
        if share := share_text(sel):
            out.append((share, True))
        layers = {m.layer for m in self.scan.modules if m.layer is not None}
        out.append((backward_text(selection_names(sel), max(layers) + 1 if layers else None), True))
        if not cfg.compat and (line := embeddings_line(sel)):
            out.append((line, True))
        if self.summary is not None:
            out.append((str(self.summary), True))
        if note := evidence_note(sel):
            out.append((note, False))
        return out


def select_outcome(
    scan: ScanResult | str | os.PathLike, config: SelectConfig | None = None, **options: Any
) -> SelectOutcome:
    """``select``, with the scan's source and whether its head is tied kept for the report; nothing is written
    yet (``SelectOutcome.write``). A ``model`` folder is built once, on the meta device, for sizes and summary."""
    cfg = _config(config, options)
    found, source = resolve_scan(scan, catalogue=cfg.catalogue)
    if isinstance(cfg.model, (str, os.PathLike)):
        cfg = dataclasses.replace(cfg, model=load_meta_model(cfg.model))
    sel = choose(found, cfg)
    sel.rule["scan"] = source
    tied = bool(sel.rule.get("lm_head_tied")) or bool(tied_head(found))
    return SelectOutcome(sel, found, source, cfg, tied)


def select_to(
    scan: ScanResult | str | os.PathLike,
    output: str | os.PathLike,
    config: SelectConfig | None = None,
    **options: Any,
) -> SelectOutcome:
    """Select from ``scan`` and write the result to ``output`` (.yaml for Axolotl, .json, .txt, ``-`` for stdout,
    or ``format="peft"`` for a LoraConfig): `spectrum select` in Python. ``SelectOutcome.lines()`` is its report."""
    outcome = select_outcome(scan, config, **options)
    outcome.write(output)
    return outcome
