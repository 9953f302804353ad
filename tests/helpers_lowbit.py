"""Tiny bf16 Llama checkpoints for the low-bit base tests (QLoRA, --frozen-precision), with a tokenizer and data."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import tiny_llama
from helpers_models import build_tokenizer

# what the tests train: an attention and an MLP module of different shapes, and a norm (never quantized)
SELECTED = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight")


def build_model(path: Path, intermediate_size: int = 128) -> Path:
    """A bf16 tiny Llama (hidden 64) whose MLP is ``intermediate_size`` wide, and the tiny tokenizer."""
    tok = build_tokenizer()
    model = tiny_llama(
        vocab_size=len(tok),
        intermediate_size=intermediate_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    ).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_selection(path: Path, names=SELECTED) -> Path:
    path.write_text("".join(f"^{n.replace('.', '[.]')}$\n" for n in names))
    return path


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out
