"""Where the scan to select from comes from: a scan file, a catalogue, or a scan of a local checkpoint.

``select`` and `spectrum select` take a scan or a model. Deciding to scan a checkpoint happens here, not in the
catalogue, which only finds published and users' scans (``catalogue.find``).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import estimators
from .catalogue import ENV, find, near
from .errors import SpectrumError
from .reference import slug
from .results import ScanResult
from .scan_files import load_scan


def resolve_scan(
    arg: ScanResult | str | os.PathLike,
    *,
    catalogue=None,
    estimator: str = estimators.DEFAULT,
    progress: bool = False,
) -> tuple[ScanResult, str]:
    """The scan to select from, and how it was found.

    In order: a scan file; a scan in a users' catalogue folder; a local checkpoint (folder, weight file,
    builtin, hub id in the Hugging Face cache), scanned once and cached; a packaged published scan.
    """
    if isinstance(arg, ScanResult):
        return arg, "the given scan"
    text = str(arg)
    path = Path(text).expanduser()
    if path.name.endswith((".json", ".json.gz")):
        return load_scan(path), f"scan file {path}"
    entry = find(text, catalogue, packaged=False)
    if entry is not None:
        return entry.load(), f"the scan {entry.path} from the catalogue folder {entry.source}"
    from .checkpoint import resolve

    try:
        resolve(text)
    except SpectrumError:
        entry = find(text)
        if entry is not None:
            return entry.load(), (
                f"the published scan {entry.file} ({entry.describe_source()}), since {text} has no local weights"
            )
        hint = near(text, catalogue)
        raise SpectrumError(
            f"{text}: no such scan file or local checkpoint (folder, weight file, or hub id in the local Hugging "
            f"Face cache; nothing is downloaded), and no catalogue holds snr_results_{slug(text)}.json"
            + (f" (did you mean {', '.join(hint)}?)" if hint else "")
            + f". `spectrum catalogue` lists the scans it has; add your own with --catalogue DIR or ${ENV}, or "
            f"scan the model: `spectrum scan MODEL -o scan.json`."
        ) from None
    from .scanning import scan

    result = scan(text, estimator=estimator, progress=progress)  # filed in the scan cache by content
    return result, f"a scan of the checkpoint {text}{' (reused from an earlier scan)' if result.cached else ''}"
