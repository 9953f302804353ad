"""Copy the published scans into the package, gzip-compressed and unchanged, with their source commits.

Maintainer tool, run once when the published sets change (the package never reads the source folder):

    python tools/import_catalogue.py ../shared/catalogue

The source folder holds ``reference-tool/`` and ``axolotl/``, each with ``snr_results_*.json`` files and a
``SOURCE_COMMIT`` file (``<sha> <date>``). Afterwards ``python -m spectrum_llm.catalogue`` (also run by every
package build) validates the copies and rewrites nothing; this tool writes ``index.json`` from what it finds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spectrum_llm.catalogue import DATA, SOURCES, problem_of  # noqa: E402


def main(src: str) -> None:
    src_dir = Path(src)
    files = []
    for source in SOURCES:
        folder = src_dir / source
        commit = (folder / "SOURCE_COMMIT").read_text().split()[0]
        if commit != SOURCES[source]["commit"]:
            raise SystemExit(
                f"{folder}: commit {commit} differs from SOURCES[{source!r}] in catalogue.py; update it there first."
            )
        out = DATA / source
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(folder.glob("snr_results_*.json")):
            raw = f.read_bytes()
            (out / (f.name + ".gz")).write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
            files.append(
                {
                    "file": f"{source}/{f.name}.gz",
                    "source": source,
                    "sha256": hashlib.sha256(raw).hexdigest(),
                    "bytes": len(raw),
                }
            )
    for entry in files:
        entry.update(problem_of(DATA / entry["file"]))
    (DATA / "index.json").write_text(json.dumps({"files": files}, indent=1) + "\n")
    bad = [e for e in files if e["problem"]]
    print(f"{len(files)} scans, {len(bad)} defective: " + "; ".join(f"{e['file']}: {e['problem']}" for e in bad))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/catalogue")
