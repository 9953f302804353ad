"""Write a Selection in the form a trainer reads, chosen by the output file's extension.

``.yaml``: Axolotl's ``unfrozen_parameters:`` list (with ``# <type> layers`` comments, the layout
of the reference tool); ``.txt``: one pattern per line (both made by ``axolotl``); ``.json``: our
selection file (modules, types, scores, parameter counts and the rule); format ``peft``: a LoraConfig on
the selected modules (see ``lora``). ``-`` writes YAML to stdout. Files are written atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import axolotl
from .errors import SpectrumError
from .files import write_text_atomic
from .lora import lora_config
from .selection_file import Selection

FORMATS = (".yaml", ".yml", ".json", ".txt")


def to_yaml(sel: Selection) -> str:
    """Axolotl YAML: the extras, then each type's patterns under ``# <type> layers`` (the reference tool's bytes)."""
    return axolotl.to_yaml(sel.patterns, {t: ts.patterns for t, ts in sel.types.items()}, first=sel.extras)


def to_json(sel: Selection) -> str:
    return json.dumps(sel.to_json(), indent=2, allow_nan=False) + "\n"


def render(sel: Selection, fmt: str) -> str:
    fmt = fmt.lower() if fmt.startswith(".") else "." + fmt.lower()
    if fmt in (".yaml", ".yml"):
        return to_yaml(sel)
    if fmt == ".json":
        return to_json(sel)
    if fmt == ".txt":
        return axolotl.to_txt(sel.patterns)
    if fmt == ".peft":
        return lora_config(sel).to_json()
    raise SpectrumError(
        f"Unknown output format {fmt!r}: name the file .yaml (Axolotl), .json (spectrum-llm) or "
        ".txt (one pattern per line), use - for stdout, or pass --format peft (a LoraConfig)."
    )


def write_selection(sel: Selection, path: str | os.PathLike, fmt: str | None = None) -> Path | None:
    """Write ``sel`` to ``path`` in the format its extension names (``-``: stdout, YAML unless ``fmt``)."""
    if str(path) == "-":
        sys.stdout.write(render(sel, fmt or ".yaml"))
        sys.stdout.flush()
        return None
    path = Path(path)
    if not (fmt or path.suffix):
        raise SpectrumError(
            f"{path} has no extension: name the file .yaml (Axolotl), .json (spectrum-llm) or .txt "
            "(one pattern per line), or use - for stdout."
        )
    return write_text_atomic(path, render(sel, fmt or path.suffix))
