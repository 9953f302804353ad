"""Files written whole or not at all: atomic writes, an early check that an output can be written, and one
clear error for an output that cannot.

Every write goes to a temp file beside its target and is renamed over it, so an interrupted program never
leaves half a file behind, and a path that cannot be written fails before hours of work, not after.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SpectrumError


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
