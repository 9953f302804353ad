"""The resumable scan's journal: an append-only record of finished tensors beside the output.

The first line is a header (checkpoint fingerprint, estimator and its version, module regex, method); each
further line is one tensor's module scores. A scan that finds a journal with the same header skips the tensors
it names, so a killed scan loses at most the tensor in flight.
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import ModuleScore


class Journal:
    """Append-only record of finished tensors, so an interrupted scan loses at most the tensor in flight."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header = path, header

    def load(self) -> dict[str, list[dict]]:
        """The modules of each tensor already done, by tensor name; empty when the journal is missing or was
        written for another header (other weights, estimator, regex or method)."""
        if not self.path.is_file():
            return {}
        done: dict[str, list[dict]] = {}
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        try:
            if not lines or json.loads(lines[0]) != self.header:
                return {}
        except json.JSONDecodeError:
            return {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # the line being written when the scan stopped
            done[rec["param"]] = rec["modules"]
        return done

    def start(self, done: dict) -> None:
        """Begin a new journal (its header line) unless ``done`` resumes the one already there."""
        if not done:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.header) + "\n", encoding="utf-8")

    def append(self, param: str, modules: list[ModuleScore]) -> None:
        """Record one finished tensor's modules, flushed at once."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"param": param, "modules": [m.to_json() for m in modules]}, allow_nan=False) + "\n")
            f.flush()
