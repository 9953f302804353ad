"""Where spectrum-llm keeps what it computes once: converted models and scans.

One root for everything: ``$SPECTRUM_CACHE``, else ``$XDG_CACHE_HOME/spectrum-llm``, else
``~/.cache/spectrum-llm``. Scans are filed under the weights' content fingerprint, not their path,
so a scan of the same weights is found again wherever the file lies; a folder that ``spectrum convert``
wrote records the fingerprint of the GGUF it came from, so it finds that file's scan too. The cache
is a convenience: when it cannot be written, work goes on without it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import ScanResult

SOURCE_FILE = "spectrum_source.json"  # written by `spectrum convert` into the folders it makes
WHERE = "$SPECTRUM_CACHE, else $XDG_CACHE_HOME/spectrum-llm, else ~/.cache/spectrum-llm"  # root(), for help texts


def root() -> Path:
    explicit = os.environ.get("SPECTRUM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spectrum-llm"


def models_dir() -> Path:
    return root() / "models"


def scans_dir() -> Path:
    return root() / "scans"


def source_fingerprint(folder: Path) -> str | None:
    """The fingerprint of the GGUF file a converted folder was made from, or None for any other folder."""
    try:
        data = json.loads((Path(folder) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fp = data.get("fingerprint") if isinstance(data, dict) else None
    return fp if isinstance(fp, str) and fp else None


def scan_path(fingerprint: str, estimator: str, method: str = "gram") -> Path:
    """The cache file of a full scan of the weights with this fingerprint (the default method's has no suffix)."""
    suffix = "" if method == "gram" else f"-{method}"
    return scans_dir() / f"{fingerprint}-{estimator}{suffix}.json"


def as_named(scan: ScanResult, model: str | os.PathLike) -> ScanResult:
    """A scan found by its weights' content, restated for the model as the current caller named it.

    The cache is keyed by content, so the scan it holds may have been made by another user, from another
    path or under another name; that name must not leak into this caller's scan file and messages.
    """
    scan.model = str(model)
    return scan
