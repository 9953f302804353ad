"""Turn a GGUF model into an ordinary transformers folder, so that it can be trained.

transformers loads GGUF files by dequantizing them, but refuses to ``save_pretrained`` the result (it
carries a quantization config). The model is rebuilt from its config without it, the dequantized weights are
loaded into it, and the folder is written once into a cache keyed by the file's fingerprint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoint import open_checkpoint, resolve
from .errors import SpectrumError

DTYPES = ("bfloat16", "float16", "float32")


def cache_dir() -> Path:
    return Path(os.environ.get("SPECTRUM_CACHE", Path.home() / ".cache" / "spectrum-llm")) / "models"


def is_gguf(model: str | os.PathLike) -> bool:
    text = str(model)
    return text.startswith("builtin:") or text.endswith(".gguf")


def gguf_to_folder(model: str | os.PathLike, output: str | os.PathLike | None = None,
                   dtype: str = "bfloat16") -> Path:
    """A safetensors folder (config, weights, tokenizer) for a GGUF file or builtin model; cached."""
    if dtype not in DTYPES:
        raise SpectrumError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    path = resolve(model)
    if path.suffix != ".gguf":
        raise SpectrumError(f"{path} is not a GGUF file; only GGUF models need converting.")
    out = Path(output) if output else cache_dir() / f"{path.stem}-{open_checkpoint(path).fingerprint()[:12]}-{dtype}"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        src = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:
        raise SpectrumError(f"transformers could not load {path} ({str(e).splitlines()[0]}). Its architecture may "
                            "not be supported for GGUF loading; convert it with llama.cpp's tools instead.") from None
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model_ = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model_.load_state_dict(src.state_dict())
    model_.tie_weights()
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model_.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():  # another process finished first, or a damaged earlier attempt
        shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
