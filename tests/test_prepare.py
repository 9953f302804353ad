"""prepare_model: a method's setup on a model already loaded, without a Trainer (as the benchmarks use it)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from spectrum_llm.selection import load_selection
from spectrum_llm.training import METHODS, TrainConfig, prepare_model

SELECTED = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}


def _trainable(model) -> dict[str, torch.dtype]:
    return {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}


def test_methods_are_the_registered_ones():
    assert METHODS == ("spectrum", "full", "lora", "qlora")


def test_spectrum_trains_the_selection_in_fp32_and_keeps_the_rest_as_loaded(tmp_path):
    (tmp_path / "sel.txt").write_text("".join(f"^{n.replace('.', '[.]')}$\n" for n in sorted(SELECTED)))
    selection = load_selection(tmp_path / "sel.txt")
    model = tiny_llama().to(torch.bfloat16)
    prepared = prepare_model(TrainConfig(method="spectrum"), model, selection)
    assert prepared.model is model and prepared.selection is selection and prepared.frozen is not None
    assert _trainable(model) == dict.fromkeys(SELECTED, torch.float32) and prepared.upcast == len(SELECTED)
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    params = dict(model.named_parameters())
    assert prepared.trainable_params == sum(params[n].numel() for n in SELECTED)
    assert prepared.total_params == sum(p.numel() for p in model.parameters())


def test_full_trains_everything_and_fp32_precision_keeps_the_dtypes():
    model = tiny_llama().to(torch.bfloat16)
    model.requires_grad_(False)
    prepared = prepare_model(TrainConfig(method="full", precision="fp32"), model)
    assert set(_trainable(model).values()) == {torch.bfloat16} and prepared.upcast == 0
    assert prepared.trainable_params == prepared.total_params == sum(p.numel() for p in model.parameters())
    assert prepared.selection is None and prepared.trainable_fraction == 1.0


def test_lora_wraps_the_model_in_adapters_on_every_linear_layer():
    pytest.importorskip("peft")
    prepared = prepare_model(TrainConfig(method="lora", lora_rank=4), tiny_llama())
    assert prepared.lora_config is not None and prepared.lora_config["target_modules"] == "all-linear"
    assert prepared.selection is None and 0 < prepared.trainable_params < prepared.total_params
    assert all("lora_" in n for n in _trainable(prepared.model))
