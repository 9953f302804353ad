"""Turn a GGUF model into an ordinary transformers folder, so that it can be trained.

transformers loads GGUF files by dequantizing them, but refuses to ``save_pretrained`` the result (it
carries a quantization config). The model is rebuilt from its config without it, the dequantized weights are
loaded into it, and the folder is written once into a cache keyed by the file's fingerprint.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from . import cache, gguf_config
from .checkpoint import files_fingerprint, resolve
from .errors import SpectrumError, require
from .files import check_writable, output_error

DTYPES = ("bfloat16", "float16", "float32")


def is_gguf(model: str | os.PathLike) -> bool:
    text = str(model)
    return text.startswith("builtin:") or text.endswith(".gguf")


def _cached_name(path: Path, fingerprint: str, dtype: str) -> Path:
    return cache.models_dir() / f"{path.stem}-{fingerprint[:12]}-{dtype}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def cached_folder(model: str | os.PathLike, dtype: str = "bfloat16") -> Path | None:
    """The cache's finished conversion of this GGUF model, or None when it still has to be made."""
    try:
        path = resolve(model)
        out = _cached_name(path, files_fingerprint([path]), dtype)
    except (SpectrumError, OSError):
        return None
    return out if _complete(out) else None


def gguf_to_folder(model: str | os.PathLike, output: str | os.PathLike | None = None, dtype: str = "bfloat16") -> Path:
    """A safetensors folder (config, weights, tokenizer) for a GGUF file or builtin model; cached.

    Safe to call from many processes at once (every rank of a torchrun job): one converts while the others
    wait on a lock, then find the folder done.
    """
    require("transformers", "filelock", extra="train")
    if dtype not in DTYPES:
        raise SpectrumError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    path = resolve(model)
    if path.suffix != ".gguf":
        raise SpectrumError(f"{path} is not a GGUF file; only GGUF models need converting.")
    try:
        fingerprint = files_fingerprint([path])  # not open_checkpoint's: parsing a large vocabulary takes seconds
    except OSError as e:
        raise SpectrumError(f"{path} could not be read ({e}).") from e
    out = Path(output) if output else _cached_name(path, fingerprint, dtype)
    if _complete(out):
        return out
    check_writable(out, folder=True)
    from filelock import FileLock

    locks = cache.root() / "locks"
    lock: contextlib.AbstractContextManager[object]
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(locks / f"convert-{hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]}.lock"))
    except OSError:
        lock = contextlib.nullcontext()  # no cache to lock in: a lone process needs no lock
    with lock:
        if not _complete(out):
            write_folder(path, str(model), fingerprint, out, dtype)
    return out


@contextlib.contextmanager
def quiet_progress(verbose: bool | None = None):
    """Hide transformers' own progress bars (GGUF dequantization, writing shards) unless ``verbose``
    (default: whether the package logs at DEBUG, as ``--verbose`` sets), so a run shows only its own bar."""
    if verbose is None:
        verbose = logging.getLogger("spectrum_llm").isEnabledFor(logging.DEBUG)
    if verbose:
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    bar, was_on = gguf_utils.tqdm, hf_logging.is_progress_bar_enabled()
    gguf_utils.tqdm = functools.partial(bar, disable=True)  # it calls tqdm directly, not transformers' switch
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
        if was_on:
            hf_logging.enable_progress_bar()


def write_folder(path: Path, name: str, fingerprint: str, out: Path, dtype: str) -> None:
    """Convert the GGUF file ``path`` into the transformers folder ``out`` (written whole, or not at all)."""
    with quiet_progress():
        _write_folder(path, name, fingerprint, out, dtype)


def _write_folder(path: Path, name: str, fingerprint: str, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        src = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as e:  # unsupported architecture/tensors
        raise SpectrumError(
            f"transformers could not load {path} ({str(e).splitlines()[0]}). Its architecture may "
            "not be supported for GGUF loading; convert it with llama.cpp's tools instead."
        ) from e
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    arch = gguf_config.architecture(path)
    if arch in gguf_config.STATED:  # llama.cpp leaves part of its config implicit: stated there
        cfg = gguf_config.transformers_config(path)
    if not tok.chat_template and arch in gguf_config.CHAT_TEMPLATES:
        tok.chat_template = gguf_config.CHAT_TEMPLATES[arch]
    model_ = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model_.load_state_dict(src.state_dict())
    model_.tie_weights()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model_.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / cache.SOURCE_FILE).write_text(
            json.dumps({"source": name, "file": str(path), "fingerprint": fingerprint, "dtype": dtype}, indent=2) + "\n"
        )
        if out.exists():  # a damaged earlier attempt (a finished one returned above)
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(out, e) from None
