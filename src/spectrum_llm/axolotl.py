"""Axolotl's ``unfrozen_parameters``: its pattern language and its files, in one place.

A pattern is what ``axolotl/utils/freeze.py`` (``LayerNamePattern``) reads: an optional trailing row range
``[a:b]`` (``[a]`` is one row, an open end runs to the edge; not part of the regex), then a regex whose dots
are escaped unless followed by ``+``, tried with ``re.match`` on each name ``model.named_parameters()``
lists. We write plain patterns only: ``^<module>.(weight|bias)$`` for a whole module, ``^<tensor>$`` for one
tensor, ``^<tensor>$[a:b]`` for rows of a shared tensor; ``pattern_module`` reads the module back.

Files: ``.yaml`` is an ``unfrozen_parameters:`` list, written by hand with a ``# <type> layers`` comment
before each type (the reference tool's bytes); ``.txt`` is one pattern per line (``#`` lines are comments).
Choosing a file's format and writing it atomically is ``exports``' job; this module makes and reads the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .errors import SpectrumError
from .results import ModuleScore

#: the patterns our selections use when a scan lists no embedding, lm_head or norm (Llama names)
EMBED_TOKENS = "^model.embed_tokens.weight$"
LM_HEAD = "^lm_head.weight$"
ALL_NORMS = "^.+norm"
#: the file suffixes whose content is only patterns
SUFFIXES = (".yaml", ".yml", ".txt")

_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")
_PLAIN = re.compile(r"^\^?(?P<name>[\w.]+?)(?:\.\(weight\|bias\)|\.weight)?\$?(?:\[\d*(?::\d*)?\])?$")


# ---------------------------------------------------------------------------------------------- build


def tensor_pattern(name: str) -> str:
    """The pattern that unfreezes exactly the tensor ``name`` (``^model.embed_tokens.weight$``)."""
    return f"^{name}$"


def module_pattern(m: ModuleScore) -> str:
    """The Axolotl pattern that unfreezes exactly this module (or its rows of a shared tensor)."""
    if m.rows is not None:
        if m.dim != 0:
            raise SpectrumError(
                f"{m.name} covers rows {m.rows} along dimension {m.dim} of {m.param}; Axolotl row ranges "
                "only cut dimension 0. Select whole modules instead (parts=False / no --parts)."
            )
        return f"{tensor_pattern(m.param)}[{m.rows[0]}:{m.rows[1]}]"
    if m.param and m.param != m.name + ".weight" and m.param != m.name:
        return tensor_pattern(m.param)
    if m.param == m.name:
        return tensor_pattern(m.name)
    return f"^{m.name}.(weight|bias)$"


def pattern_module(pattern: str) -> str | None:
    """The module a plain pattern names (``^a.b.(weight|bias)$`` -> ``a.b``), or None for a real regex."""
    m = _PLAIN.match(pattern)
    return m.group("name") if m else None


# ---------------------------------------------------------------------------------------------- parse


def has_rows(pattern: str) -> bool:
    """Whether the pattern ends in a row range (``^x.weight$[0:64]``), so it trains only part of a tensor."""
    return _RANGE.match(pattern) is not None


class AxolotlPattern:
    """One ``unfrozen_parameters`` entry, parsed as Axolotl's ``LayerNamePattern`` parses it."""

    def __init__(self, pattern: str):
        self.raw = pattern
        base = pattern
        self.range: tuple[int, int | None] | None = None
        m = _RANGE.match(pattern)
        if m:
            base, start, end = m.groups()
            if end is None and start.isdecimal():
                self.range = (int(start), int(start) + 1)
            else:
                self.range = (int(start) if start else 0, int(end) if end else None)
                if self.range[1] is not None and self.range[0] >= self.range[1]:
                    raise SpectrumError(f"Pattern {pattern!r}: the row range must end after it starts.")
        try:
            self.regex = re.compile(re.sub(r"\.(?!\+)", r"\\.", base))
        except re.error as e:
            raise SpectrumError(f"Pattern {pattern!r} is not a valid regex once dots are escaped ({e}).") from None

    def match(self, name: str) -> bool:
        return self.regex.match(name) is not None

    def first_match(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` this pattern matches (e.g. which tied alias a pattern names), or None."""
        return next((n for n in names if self.match(n)), None)

    def __repr__(self) -> str:
        return f"AxolotlPattern({self.raw!r})"


def check_patterns(patterns: Sequence[str], source: str) -> None:
    """Refuse an empty list or an entry that is not a non-empty string, naming ``source``."""
    if not patterns:
        raise SpectrumError(
            f"{source} selects nothing (no patterns). Re-run `spectrum select` with a larger "
            "--top-percent or check the file."
        )
    for p in patterns:
        if not isinstance(p, str) or not p.strip():
            raise SpectrumError(f"{source}: {p!r} is not a pattern (expected a non-empty string).")


# ---------------------------------------------------------------------------------------------- write


def to_yaml(
    patterns: Sequence[str], sections: Mapping[str, Sequence[str]] | None = None, first: Sequence[str] = ()
) -> str:
    """Axolotl YAML: ``first``, then each section's patterns under ``# <section> layers``, then the rest of
    ``patterns``. Written by hand (not yaml.dump) to match the reference tool's bytes exactly."""
    lines = ["unfrozen_parameters:"]
    lines += [f"- {p}" for p in first]
    listed = set(first)
    for name, pats in (sections or {}).items():
        lines.append(f"# {name} layers")
        lines += [f"- {p}" for p in pats]
        listed.update(pats)
    lines += [f"- {p}" for p in patterns if p not in listed]
    return "\n".join(lines) + "\n"


def to_txt(patterns: Sequence[str]) -> str:
    """One pattern per line."""
    return "".join(p + "\n" for p in patterns)


# ----------------------------------------------------------------------------------------------- read


def from_yaml(text: str, source: str) -> list:
    """The ``unfrozen_parameters`` list of an Axolotl YAML (entries unchecked: see ``check_patterns``)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpectrumError(f"{source} is not valid YAML ({e}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("unfrozen_parameters"), list):
        raise SpectrumError(
            f"{source} has no `unfrozen_parameters:` list, so it is not an Axolotl selection. "
            "Create one with `spectrum select SCAN -o sel.yaml`."
        )
    return data["unfrozen_parameters"]


def from_txt(text: str) -> list[str]:
    """The patterns of a .txt list: one a line, blank lines and ``#`` comments skipped."""
    lines = [ln.strip() for ln in text.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def read(path: Path) -> list:
    """The patterns of a .yaml/.yml or .txt file (see ``SUFFIXES``)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".txt":
        return from_txt(text)
    return from_yaml(text, str(path))
