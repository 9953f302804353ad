"""Scan results: the dataclasses that cross from scanning to selection, and their files.

Three layouts are read: ours (``{"modules": [...]}``) and the reference tool's two
(flat ``{name: {"snr", "type"}}`` and grouped ``{type: {name: snr}}``). Writes are atomic so
an interrupted program never leaves half a file behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpectrumError

FORMAT = "spectrum-llm/scan"
FORMAT_VERSION = 1

#: kinds of module; only "linear" (weight matrices inside the blocks) is ranked by default.
RANKED_KINDS = ("linear",)


@dataclass(kw_only=True)
class ModuleScore:
    """The score of one weight matrix (or one expert of a 3-D expert tensor, or one part of a fused one).

    ``param`` is the checkpoint tensor this score was computed from. ``rows`` is set when the score
    covers only a slice ``param[rows[0]:rows[1]]`` along dimension ``dim`` (an expert of a 3-D tensor,
    or the q/k/v or gate/up part of a fused projection). ``dtype`` is the element type the checkpoint stores;
    ``dequantized`` names the scheme its values were dequantized from (fp8, MXFP4, GGUF), None for float weights.
    """

    name: str
    type: str
    layer: int | None
    shape: list[int]
    snr: float | None
    kind: str = "linear"
    param: str = ""
    expert: int | None = None
    part: str | None = None
    rows: list[int] | None = None
    dim: int = 0
    numel: int = 0
    skipped: str | None = None
    stats: dict[str, float] = field(default_factory=dict)
    dtype: str | None = None
    dequantized: str | None = None

    @property
    def ranked(self) -> bool:
        return self.snr is not None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v not in (None, {}) or k in ("snr", "layer")}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModuleScore:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ScanResult:
    """Every module's score for one checkpoint and one estimator.

    ``estimator_version`` is the estimator's version when the scan was made (see ``estimators.REGISTRY``);
    None for scans that do not record it (files written before it was recorded, the reference tool's layouts).
    """

    model: str
    estimator: str
    modules: list[ModuleScore]
    fingerprint: str = ""
    version: str = ""
    layout: str = "spectrum-llm"
    modules_regex: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    estimator_version: int | None = None
    cached: bool = field(default=False, compare=False)  # read back from an earlier scan, not computed now

    def ranked(self) -> list[ModuleScore]:
        return [m for m in self.modules if m.ranked]

    def tally(self) -> str:
        """What the scan holds, in one phrase: ``211 scored, 61 skipped (1-D weights)``."""
        skipped: dict[str, int] = {}
        for m in self.modules:
            if not m.ranked:
                why = _skip_kind(m)
                skipped[why] = skipped.get(why, 0) + 1
        text = f"{len(self.modules) - sum(skipped.values())} scored"
        if len(skipped) == 1:
            text += f", {sum(skipped.values())} skipped ({next(iter(skipped))})"
        elif skipped:
            text += f", {sum(skipped.values())} skipped (" + ", ".join(f"{n} {k}" for k, n in skipped.items()) + ")"
        return text

    def types(self) -> list[str]:
        """Module types in first-seen order."""
        return list(dict.fromkeys(m.type for m in self.modules))

    def by_type(self) -> dict[str, list[ModuleScore]]:
        out: dict[str, list[ModuleScore]] = {}
        for m in self.modules:
            out.setdefault(m.type, []).append(m)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "estimator": self.estimator,
            **({"estimator_version": self.estimator_version} if self.estimator_version is not None else {}),
            "fingerprint": self.fingerprint,
            "version": self.version,
            "modules_regex": self.modules_regex,
            "config": self.config,
            "modules": [m.to_json() for m in self.modules],
        }

    def save(self, path: str | os.PathLike) -> Path:
        return write_json_atomic(path, self.to_json())


def storage_summary(scan: ScanResult) -> str | None:
    """How many modules were scored on dequantized weights, and from which schemes; None if none were."""
    deq = [m for m in scan.modules if m.dequantized]
    if not deq:
        return None
    schemes = ", ".join(f"{s} x{n}" for s, n in Counter(f"{m.dtype} ({m.dequantized})" for m in deq).items())
    return f"{len(deq)} modules scored on weights dequantized to float32 from {schemes}"


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to a temp file beside ``path`` and rename it over, so readers never see half a file."""
    text = json.dumps(data, indent=2, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file beside ``path``, fsync, rename over. Permissions follow the umask like any new file
    (``mkstemp`` alone would make it private). A path that cannot be written is a SpectrumError, and nothing
    is left behind: no temp file, no folder made for it."""
    path = Path(path)
    if path.is_dir():
        raise SpectrumError(f"Cannot write {path}: it is a folder. Give a file name.")
    created = _make_dirs(path.parent, path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        _remove_dirs(created)
        if isinstance(e, OSError):
            raise output_error(path, e) from None
        raise
    return path


def check_writable(path: str | os.PathLike, folder: bool = False) -> None:
    """Fail at once, not after hours of work, when ``path`` (a file, or a ``folder``) cannot be written.

    Probes with a uniquely named file (or, where folders are missing, a uniquely named folder in the nearest
    one that exists), so any number of processes may check the same place at once; nothing is left behind.
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise SpectrumError(f"Cannot write {path}: it is a folder. Give a file name.")
    if folder and path.exists() and not path.is_dir():
        raise SpectrumError(f"Cannot write into {path}: it is a file, not a folder. Choose another output folder.")
    where = path if folder else path.parent
    base = where
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        if base == where:
            fd, probe = tempfile.mkstemp(dir=where, prefix=".spectrum-probe-")
            os.close(fd)
            os.unlink(probe)
        else:  # can the missing folders be made? try one of our own, never the shared name
            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".spectrum-probe-"))
    except OSError as e:
        raise output_error(path, e) from None


def output_error(path: str | os.PathLike, e: OSError) -> SpectrumError:
    """One line for an output that cannot be written: which path, why, and what to do."""
    path = Path(path)
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return SpectrumError(f"Cannot write {path}: {parent} is a file, not a folder. Choose another output path.")
    if e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied"
    elif e.errno == errno.EROFS:
        why = "the file system is read-only"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on the device"
    elif e.errno == errno.EISDIR:
        why = "it is a folder"
    else:
        base = next((p for p in path.parents if p.is_dir()), None)
        why = f"{base} does not take new files ({e.strerror or e})" if base is not None else (e.strerror or str(e))
    return SpectrumError(f"Cannot write {path}: {why}. Choose another output path or fix its permissions.")


def _make_dirs(folder: Path, target: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest last."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
                created.append(d)
            except FileExistsError:
                if not d.is_dir():
                    raise
    except OSError as e:
        _remove_dirs(created)
        raise output_error(target, e) from None
    return created


def _remove_dirs(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass  # another process put something there meanwhile: leave it


def _skip_kind(m: ModuleScore) -> str:
    why = (m.skipped or "").lower()
    if why.startswith("1-d"):
        return "1-D weights"
    if "quantized" in why:
        return "quantized"
    if "nan/inf values" in why:
        return "damaged"
    if "offloaded" in why:
        return "offloaded"
    if "no score" in why or not why:
        return "no score"
    return "unscorable matrices"


_LAYER = re.compile(r"\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    m = _LAYER.search(name + ".")
    return int(m.group(1)) if m else None


def _reference_kind(name: str) -> str:
    low = name.lower()
    if "embed" in low or "wte" in low:
        return "embedding"
    if "lm_head" in low:
        return "lm_head"
    if "norm" in low or "ln_" in low:
        return "norm"
    return "linear"


def _finite_or_none(v: Any, name: str, where: str) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise SpectrumError(f"{where}: the score of {name!r} is {v!r}, not a number. Re-run the scan.") from None
    return f if not math.isnan(f) else None


def _from_reference(data: dict[str, Any], where: str, model: str) -> ScanResult:
    """Read the reference tool's flat or grouped layout, keeping its types and file order."""
    first = next(iter(data.values()))
    modules: list[ModuleScore] = []
    if isinstance(first, dict) and "snr" in first:
        layout = "reference-flat"
        items: Iterable[tuple[str, str, Any]] = ((n, v.get("type", ""), v.get("snr")) for n, v in data.items())
    else:
        layout = "reference-grouped"
        items = ((n, t, s) for t, group in data.items() for n, s in group.items())
    for name, type_, raw in items:
        snr = _finite_or_none(raw, name, where)
        skipped = None
        if snr is None:
            skipped = "the scan recorded no score (NaN)"
        modules.append(
            ModuleScore(
                name=name,
                type=type_,
                layer=_layer_of(name),
                shape=[],
                snr=snr,
                kind=_reference_kind(name),
                param=name + ".weight",
                skipped=skipped,
            )
        )
    return ScanResult(model=model, estimator="reference", modules=modules, layout=layout)


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
    return _from_reference(data, where, model)
