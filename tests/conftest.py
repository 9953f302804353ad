"""Shared fixtures: tiny checkpoints built from transformers configs, saved as safetensors in a temp dir.

The suite touches nothing outside the repo and temp folders: before anything else is imported, HOME and every
cache (XDG_CACHE_HOME, HF_HOME, matplotlib's, spectrum-llm's) point into one temp folder, removed at exit, and
each test gets its own empty spectrum-llm cache. The reference tool's published scans are vendored under
tests/data/ (see its README); a missing or damaged file there fails the tests that need it, never skips them.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

_SANDBOX = Path(tempfile.mkdtemp(prefix="spectrum-llm-tests-"))
atexit.register(shutil.rmtree, _SANDBOX, True)
for _var, _sub in (
    ("HOME", "home"),
    ("XDG_CACHE_HOME", "cache"),
    ("XDG_CONFIG_HOME", "config"),
    ("HF_HOME", "hf"),
    ("MPLCONFIGDIR", "matplotlib"),
    ("SPECTRUM_CACHE", "spectrum-llm"),
    ("TRITON_CACHE_DIR", "triton"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
):
    os.environ[_var] = str(_SANDBOX / _sub)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test starts with an empty spectrum-llm cache of its own, so no test sees another's scans."""
    path = tmp_path_factory.mktemp("spectrum-cache")
    monkeypatch.setenv("SPECTRUM_CACHE", str(path))
    return path


@pytest.fixture
def free_port() -> int:
    """A TCP port no one listens on now, for a torchrun rendezvous that must not collide with a parallel run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_model(model: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return path


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg))


def plant_signal(model: torch.nn.Module, rank: int = 3, strength: float = 4.0, seed: int = 0) -> None:
    """Replace every Linear weight with Gaussian noise plus a planted rank-`rank` spike well above the MP edge."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                m, n = mod.weight.shape
                noise = torch.randn(m, n, generator=g) * 0.02
                u = torch.linalg.qr(torch.randn(m, rank, generator=g))[0]
                v = torch.linalg.qr(torch.randn(n, rank, generator=g))[0]
                edge = 0.02 * (m**0.5 + n**0.5)
                mod.weight.copy_(noise + strength * edge * (u @ v.T))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    model = tiny_llama()
    plant_signal(model)
    return save_model(model, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """The vendored reference files, unpacked into a temp folder and checked against their SHA-256 sums."""
    sums = REFERENCE / "SHA256SUMS"
    if not sums.is_file():
        pytest.fail(f"{sums} is missing: the vendored reference data (tests/data/) is incomplete.")
    out = tmp_path_factory.mktemp("reference")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        src = REFERENCE / (name + ".gz" if name.endswith(".json") else name)
        if not src.is_file():
            pytest.fail(f"{src} is missing: the vendored reference data (tests/data/) is incomplete.")
        data = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            pytest.fail(f"{src} does not match its SHA-256 in {sums}: the file is damaged.")
        (out / name).write_bytes(data)
    return out
