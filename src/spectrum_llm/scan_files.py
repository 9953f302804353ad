"""A scan file in any layout, read back: ours, or either layout of the reference tool's ``snr_results_*.json``.

It sits above ``results`` (the dataclasses) and ``reference`` (the reference tool's format), so neither
imports the other back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import SpectrumError
from .reference import from_reference
from .results import FORMAT, ModuleScore, ScanResult


def scan_stem(path: str | os.PathLike) -> str:
    """A scan file's name without ``.json``/``.json.gz`` (and without the reference tool's ``snr_results_``)."""
    name = Path(path).name
    for suffix in (".gz", ".json"):
        name = name.removesuffix(suffix)
    return name.removeprefix("snr_results_")


def read_scan_text(path: str | os.PathLike) -> str:
    """A scan file's text; ``.gz`` files are decompressed."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise SpectrumError(f"{path} is not a readable gzip file ({e}).") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpectrumError(f"{path} is not valid JSON ({e}). Re-run the scan or check the file.") from None


def load_scan(path: str | os.PathLike) -> ScanResult:
    """Load a scan in our layout or either reference layout (``.json`` or ``.json.gz``), with a clear error for
    anything else."""
    path = Path(path)
    if not path.is_file():
        raise SpectrumError(f"Scan file {path} does not exist. Run `spectrum scan MODEL -o {path}` first.")
    return parse_scan(read_scan_text(path), str(path), scan_stem(path))


def parse_scan(text: str, where: str, model: str = "") -> ScanResult:
    """A scan from its JSON text; ``where`` names it in errors, ``model`` names reference-layout scans."""
    if not text.strip():
        raise SpectrumError(f"{where} is empty ({len(text)} bytes of whitespace, no JSON): there is no scan in it.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpectrumError(f"{where} is not valid JSON ({e}). Re-run the scan or check the file.") from None
    if not isinstance(data, dict) or not data:
        raise SpectrumError(f"{where} holds no scan results (empty or not a JSON object).")
    if data.get("format") == FORMAT:
        mods = data.get("modules")
        if not isinstance(mods, list):
            raise SpectrumError(f"{where}: 'modules' is missing or not a list; the file is damaged. Re-run the scan.")
        return ScanResult(
            model=data.get("model", ""),
            estimator=data.get("estimator", ""),
            modules=[ModuleScore.from_json(m) for m in mods],
            fingerprint=data.get("fingerprint", ""),
            version=data.get("version", ""),
            modules_regex=data.get("modules_regex"),
            config=data.get("config") or {},
            estimator_version=data.get("estimator_version"),
        )
    values = list(data.values())
    flat = all(isinstance(v, dict) and "snr" in v for v in values)
    grouped = all(isinstance(v, dict) and all(not isinstance(x, dict) for x in v.values()) for v in values)
    if not (flat or grouped):
        raise SpectrumError(
            f"{where} is JSON but not a scan: expected spectrum-llm's layout or the reference tool's "
            "flat ({name: {snr, type}}) or grouped ({type: {name: snr}}) layout."
        )
    return from_reference(data, where, model)
