"""A model's transformers config from whatever names it, with one-line errors that name the file and the problem.

``--model`` may be a checkpoint folder, a weight file, a builtin (``builtin:smollm2-135m``), a ``.gguf`` file or a hub
id in the local cache. transformers' own messages for the ways this goes wrong name the wrong thing (a missing folder is
"Repo id must be in the form ...", a weight file is "not a valid JSON file"); this reads the config itself first.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import SpectrumError

GGUF_DTYPE = "bfloat16"  # what a GGUF model trains in once converted


def load_model_config(model: str | os.PathLike, *, folder_only: bool = False) -> tuple[Any, str | None]:
    """The config of ``model`` and its default training dtype name when the config does not say (GGUF: bf16).

    ``folder_only``: the caller loads the weights with ``from_pretrained`` too (training), so a single weight
    file is refused with the folder to pass instead (after checking that the file itself is readable).
    """
    from transformers import AutoConfig

    from . import gguf_config
    from .checkpoint import open_checkpoint, resolve

    path = resolve(model)  # a clear error for a missing folder or a hub id not in the cache
    if path.suffix == ".gguf":
        try:
            return gguf_config.transformers_config(path), GGUF_DTYPE
        except (OSError, ValueError, KeyError) as e:
            raise SpectrumError(f"Could not read the GGUF metadata of {path} ({_first_line(e)}).") from None
    if path.is_file():
        open_checkpoint(path)  # a truncated or corrupt weight file: named, with what is wrong with it
        if folder_only:
            raise SpectrumError(
                f"{model} is a weight file; pass --model its folder {path.parent} (with config.json and the tokenizer)."
            )
    folder = path if path.is_dir() else path.parent
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise SpectrumError(f"{folder} has no config.json, so its model cannot be built. Pass the checkpoint folder.")
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SpectrumError(f"{cfg_file} is not a text file; it should be the model's JSON config.") from None
    except json.JSONDecodeError as e:
        raise SpectrumError(
            f"{cfg_file} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); it may be truncated. "
            "Restore it from the checkpoint's source."
        ) from None
    if not isinstance(data, dict):
        raise SpectrumError(f"{cfg_file} holds a JSON {type(data).__name__}, not the model's config object.")
    try:
        return AutoConfig.from_pretrained(folder), None
    except (OSError, ValueError, KeyError) as e:  # an unknown model_type, a bad field
        raise SpectrumError(f"Could not read the config {cfg_file} ({_first_line(e)}).") from None


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
