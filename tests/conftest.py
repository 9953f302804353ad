"""Shared fixtures: tiny checkpoints built from transformers configs, saved as safetensors in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def save_model(model: torch.nn.Module, path: Path, dtype: torch.dtype | None = None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path)
    return path


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
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
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference scans not found at {REFERENCE} (the repo's sibling folder shared/)")
    return REFERENCE
