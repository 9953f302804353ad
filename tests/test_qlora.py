"""--method qlora: LoRA on a 4-bit NF4 base as the QLoRA paper sets it up; the adapter in PEFT's format, and with
--merge the model merged into the ORIGINAL 16-bit weights (never their NF4 approximation)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers_cli import run_cli
from helpers_lowbit import build_model, tensors
from helpers_models import write_cpt_data
from spectrum_llm.training import METHODS, TrainConfig, prepare_model, train

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.slow  # each trains a few steps


def _config(model, tmp, **kw) -> TrainConfig:
    return TrainConfig(
        model=str(model),
        data=str(write_cpt_data(tmp / "d.jsonl")),
        output_dir=str(tmp / "out"),
        method="qlora",
        lora_rank=4,
        max_steps=3,
        seq_len=32,
        batch_size=2,
        learning_rate=1e-2,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    model = build_model(tmp / "model", intermediate_size=688)
    summary = train(_config(model, tmp, merge=True))
    return model, tmp / "out", summary


def test_qlora_is_a_registered_method():
    assert "qlora" in METHODS


def test_the_base_is_nf4_with_double_quantization_and_lora_wraps_every_linear_but_the_head(tmp_path):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from transformers import AutoModelForCausalLM

    model_dir = build_model(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    prepared = prepare_model(TrainConfig(model=str(model_dir), method="qlora", lora_rank=4), model)
    wrapped = [m for m in prepared.model.modules() if isinstance(m, LoraLinear4bit)]
    assert len(wrapped) == 14 and prepared.lowbit.quantized == 14
    base = wrapped[0].base_layer
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.quant_type == "nf4"
    assert base.weight.compress_statistics and base.compute_dtype == torch.bfloat16
    assert {n.split(".")[-3] for n, p in prepared.model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    assert prepared.total_params == sum(t.numel() for t in tensors(model_dir).values())  # counted unquantized


def test_top_percent_puts_the_adapters_on_the_selected_modules(tmp_path):
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    from transformers import AutoModelForCausalLM

    model_dir = build_model(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    cfg = TrainConfig(
        model=str(model_dir), method="qlora", lora_rank=4, top_percent=50, scan=str(tmp_path / "scan.json")
    )
    prepared = prepare_model(cfg, model)
    adapted = {
        n.removeprefix("base_model.model.") for n, m in prepared.model.named_modules() if isinstance(m, LoraLinear4bit)
    }
    assert prepared.selection is not None and 0 < len(adapted) < 14
    assert adapted == set(prepared.lora_config["target_modules"])
    assert adapted == {m.removesuffix(".weight") for m in prepared.selection.modules if ".layers." in m}


def test_qlora_saves_a_peft_adapter_and_the_summary_says_nf4_and_the_optimizer(merged):
    _, out, summary = merged
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
    assert any(k.endswith("lora_B.weight") for k in tensors(out / "adapter"))
    assert summary.method == "qlora" and summary.frozen_precision == "nf4"
    assert summary.lowbit["optimizer"] == "adamw_torch"  # on the CPU; paged_adamw_8bit on a GPU
    assert summary.losses and all(math.isfinite(x) for x in summary.losses)


def test_merge_builds_from_the_original_weights(merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, out, _ = merged
    expected = (
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype="auto"), str(out / "adapter"))
        .merge_and_unload()
        .state_dict()
    )
    saved, original = tensors(out), tensors(model)
    assert set(saved) == set(original)
    for name, t in saved.items():
        assert t.dtype == original[name].dtype and torch.equal(t, expected[name].to(t.dtype)), name
    assert torch.equal(saved["model.norm.weight"], original["model.norm.weight"])  # untouched: bit-identical
    assert not torch.equal(
        saved["model.layers.0.mlp.down_proj.weight"], original["model.layers.0.mlp.down_proj.weight"]
    )


def test_without_merge_only_the_adapter_is_saved(tmp_path):
    model = build_model(tmp_path / "model")
    assert (
        run_cli(
            [
                "train",
                "--model",
                str(model),
                "--data",
                str(write_cpt_data(tmp_path / "d.jsonl")),
                "-o",
                str(tmp_path / "out"),
                "--method",
                "qlora",
                "--lora-rank",
                "2",
                "--max-steps",
                "1",
                "--seq-len",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "out").glob("*.safetensors"))
