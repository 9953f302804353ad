"""Published scans, built in: select for a model without scanning it.

The reference tool's repository (QuixiAI/spectrum, formerly cognitivecomputations/spectrum) publishes 22
scans and Axolotl (axolotl-ai-cloud/axolotl) bundles 11 more, all Apache-2.0. They ship unchanged (gzip) in
``catalogue_data/``, with ``index.json`` recording each file's checksum, size and, for the defective ones,
the defect. A scan is found the way Axolotl finds one: the model id slugged (``/`` and ``_`` become ``-``)
into ``snr_results_<slug>.json``. Users' folders (``--catalogue DIR``, ``SPECTRUM_CATALOGUE``) are searched
first with the same names, so one folder serves both tools. Where Axolotl falls back to a full fine-tune
when a file is missing or bad, a file here that is empty, damaged or incomplete is an error naming it and
the problem.

``python -m spectrum_llm.catalogue`` validates the packaged files against ``index.json``; every package
build runs it (``setup.py``), so a wheel never ships a catalogue that disagrees with its index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpectrumError
from .reference import slug
from .results import ScanResult
from .scan_files import load_scan, parse_scan, read_scan_text, scan_stem

DATA = Path(__file__).parent / "catalogue_data"
ENV = "SPECTRUM_CATALOGUE"
SOURCES: dict[str, dict[str, str]] = {
    "reference-tool": {
        "repo": "QuixiAI/spectrum (formerly cognitivecomputations/spectrum)",
        "path": "model_snr_results/",
        "commit": "13dcd40c44fdfb4a41a123e9e8a7106c827d4b59",
    },
    "axolotl": {
        "repo": "axolotl-ai-cloud/axolotl",
        "path": "src/axolotl/integrations/spectrum/model_snr_results/",
        "commit": "067b021c8b87a9e5e380b9173c704cf7340e30f5",
    },
}
_ROUTER_LEAVES = ("router", "gate")


@dataclass
class Entry:
    """One scan in a catalogue: where it is, what it holds, and what is wrong with it (``problem``)."""

    name: str  # the slug: file name without snr_results_ and .json(.gz)
    path: Path
    source: str  # reference-tool | axolotl | the user folder
    modules: int = 0
    layout: str = ""
    estimator: str = "reference"
    problem: str | None = None

    @property
    def file(self) -> str:
        return self.path.name.removesuffix(".gz")

    @property
    def axolotl_readable(self) -> bool:
        """Axolotl's plugin reads only the flat layout (``{name: {"snr", "type"}}``) of a plain .json file
        (the packaged files are published .json files, compressed here)."""
        plain = self.source in SOURCES or self.path.suffix == ".json"
        return self.problem is None and self.layout == "reference-flat" and plain

    def describe_source(self, short: bool = False) -> str:
        s = SOURCES.get(self.source)
        if s is None:
            return self.source
        return f"{s['repo'].split(' ')[0]}@{s['commit'][:7]}" if short else f"{s['repo']} @ {s['commit'][:7]}"

    def load(self) -> ScanResult:
        """The scan, or a SpectrumError naming the file and its problem (never an empty selection)."""
        if self.problem is None:
            scan = load_scan(self.path)
            self.problem = _problem(scan)
            if self.problem is None:
                return scan
        raise SpectrumError(
            f"The catalogue scan {self.file} ({self.describe_source()}) cannot be used: "
            f"{self.problem}. Scan the model instead (`spectrum scan MODEL -o scan.json`) or put a "
            f"good snr_results_{self.name}.json into a --catalogue folder."
        )


def folders(catalogue: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """Users' catalogue folders: ``catalogue`` (one or several), then ``$SPECTRUM_CATALOGUE`` (os.pathsep-separated)."""
    given: list[Any] = (
        [] if catalogue is None else [catalogue] if isinstance(catalogue, (str, os.PathLike)) else list(catalogue)
    )
    env = [p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    out = []
    for where, items in (("--catalogue", given), (ENV, env)):
        for item in items:
            path = Path(item).expanduser()
            if not path.is_dir():
                raise SpectrumError(
                    f"Catalogue folder {path} (from {where}) does not exist or is not a folder. "
                    "Create it and put snr_results_<model>.json scans into it."
                )
            out.append(path)
    return out


def _user_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.startswith("snr_results_") and p.name.endswith((".json", ".json.gz"))
    )


def builtin() -> list[Entry]:
    """The packaged scans, described by ``index.json`` (no file is read)."""
    index = json.loads((DATA / "index.json").read_text(encoding="utf-8"))
    return [
        Entry(scan_stem(e["file"]), DATA / e["file"], e["source"], e["modules"], e["layout"], problem=e["problem"])
        for e in index["files"]
    ]


def entries(catalogue=None) -> list[Entry]:
    """Every scan the lookup can find: users' folders first (each file checked now), then the packaged ones."""
    out = []
    for folder in folders(catalogue):
        for path in _user_files(folder):
            info = problem_of(path)
            out.append(
                Entry(
                    scan_stem(path),
                    path,
                    str(folder),
                    info["modules"],
                    info["layout"],
                    info["estimator"],
                    info["problem"],
                )
            )
    return out + builtin()


def find(model_id: str, catalogue=None, *, packaged: bool = True) -> Entry | None:
    """The first scan named ``snr_results_<slug(model_id)>.json`` (or ``.json.gz``), users' folders first."""
    name = slug(model_id)
    for folder in folders(catalogue):
        for fname in (f"snr_results_{name}.json", f"snr_results_{name}.json.gz"):
            if (folder / fname).is_file():
                return Entry(name, folder / fname, str(folder))
    return next((e for e in builtin() if e.name == name), None) if packaged else None


def near(model_id: str, catalogue=None, n: int = 3) -> list[str]:
    """Catalogue names close to ``model_id``, for a "did you mean" hint."""
    import difflib

    names = [e.name for e in entries(catalogue)]
    want = slug(model_id)
    exact = [x for x in names if x.lower() == want.lower()]
    return exact or difflib.get_close_matches(want, names, n=n, cutoff=0.6)


# --------------------------------------------------------------------------------------------- checks


def _problem(scan: ScanResult) -> str | None:
    """What makes a parsed scan unusable for selection, or None.

    The same conditions under which ``select`` refuses a scan, stated on the scan itself, so the catalogue
    does not depend on selection (which finds scans through the catalogue).
    """
    if not scan.modules:
        return "it holds no modules"
    names = [m.name for m in scan.modules]
    routers = sorted({m.type for m in scan.modules if m.type.rsplit(".", 1)[-1] in _ROUTER_LEAVES})
    if routers and not any(re.search(r"(^|\.)experts(\.|$)", n) for n in names):
        return (
            f"it scores the mixture-of-experts router ({routers[0]}) but no expert: the scan missed the "
            "model's expert weights (fused 3-D tensors), so a selection from it would leave every expert frozen"
        )
    if not any(m.kind == "linear" and m.snr is not None and not math.isnan(m.snr) for m in scan.modules):
        return "no weight matrix in it has a score, so no selection can be made from it"
    return None


def problem_of(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one scan file and say what it holds: modules, layout, estimator, and its problem (or None)."""
    path = Path(path)
    try:
        scan = parse_scan(read_scan_text(path), "the file", scan_stem(path))
    except SpectrumError as e:
        return {"modules": 0, "layout": "", "estimator": "", "problem": str(e).rstrip(".")}
    return {"modules": len(scan.modules), "layout": scan.layout, "estimator": scan.estimator, "problem": _problem(scan)}


def validate_data() -> list[str]:
    """Check every packaged scan against ``index.json``: unchanged bytes, same modules, same defects.

    Returns one line per file; raises SpectrumError listing every disagreement.
    """
    import gzip

    index = json.loads((DATA / "index.json").read_text(encoding="utf-8"))
    errors, lines = [], []
    listed = {e["file"] for e in index["files"]}
    on_disk = {str(p.relative_to(DATA)) for p in DATA.glob("*/*.json.gz")}
    errors += [f"{f}: in the package but not in index.json" for f in sorted(on_disk - listed)]
    for e in index["files"]:
        path = DATA / e["file"]
        if not path.is_file():
            errors.append(f"{e['file']}: listed in index.json but missing")
            continue
        if e["source"] not in SOURCES:
            errors.append(f"{e['file']}: unknown source {e['source']!r}")
        raw = gzip.decompress(path.read_bytes())
        if hashlib.sha256(raw).hexdigest() != e["sha256"] or len(raw) != e["bytes"]:
            errors.append(f"{e['file']}: bytes differ from the published file (checksum)")
        got = problem_of(path)
        for key in ("modules", "layout", "problem"):
            if got[key] != e[key]:
                errors.append(f"{e['file']}: {key} is {got[key]!r}, index.json says {e[key]!r}")
        lines.append(f"{e['file']}: {e['modules']} modules" + (f", DEFECTIVE: {e['problem']}" if e["problem"] else ""))
    if errors:
        raise SpectrumError("The packaged catalogue disagrees with its index:\n  " + "\n  ".join(errors))
    return lines


def main() -> None:
    """``python -m spectrum_llm.catalogue``: validate the packaged scans (run by every package build)."""
    import sys

    try:
        for line in validate_data():
            print(line)
    except SpectrumError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()


def listing(found: list[Entry], width: int = 80) -> list[str]:
    """`spectrum catalogue`'s lines: one row per scan, grouped by source, within ``width`` columns (a defect's
    explanation wraps under its row)."""
    import textwrap

    head = ("model (snr_results_<model>.json)", "modules", "estimator", "Axolotl", "status")
    widths = [
        max([len(head[0])] + [len(e.name) for e in found]),
        7,
        max([9] + [len(e.estimator or "-") for e in found]),
        7,
    ]
    lines = [
        "  ".join(h.ljust(w) if i != 1 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))) + "  " + head[4]
    ]
    group = None
    for e in found:
        source = e.describe_source(short=True)
        if source != group:
            group = source
            n = sum(1 for x in found if x.describe_source(short=True) == source)
            lines.append(f"-- from {source}: {n} scan{'s' if n != 1 else ''}")
        cells = (
            e.name,
            str(e.modules) if e.modules else "-",
            e.estimator or "-",
            "yes" if e.axolotl_readable else "no",
        )
        row = "  ".join(c.rjust(w) if i == 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        lines.append(row + "  " + ("ok" if e.problem is None else "defective:"))
        if e.problem is not None:
            lines += textwrap.wrap(e.problem, width, initial_indent="    ", subsequent_indent="    ")
    lines.append("Axolotl: whether Axolotl's Spectrum plugin can read the file as it is.")
    return lines
