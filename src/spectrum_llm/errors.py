"""One exception type for every problem a user can fix, and the check that an optional extra is installed.

The CLI prints its message (which names the problem and the fix) instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class SpectrumError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


def require(*modules: str, extra: str) -> list[ModuleType]:
    """Import ``modules``, which the extra ``spectrum-llm[extra]`` installs, or say how to install them.

    The core (scan, select) needs only torch, numpy, safetensors and gguf; training, reports and benchmarks
    call this first, so that a missing package is one line naming the pip command, not an ImportError deep
    inside. An ImportError of anything else (a broken install) goes on as it is.
    """
    found = []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as err:
            if err.name != name.partition(".")[0]:
                raise
            raise SpectrumError(
                f"{name} is not installed; this needs the {extra!r} extra: pip install 'spectrum-llm[{extra}]'"
            ) from err
    return found
