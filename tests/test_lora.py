"""Spectrum-guided LoRA: a PEFT LoraConfig from a selection, rank by score, accepted by peft unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_llama
from helpers_cli import run_cli
from helpers_selection import synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.lora import is_lora_config, lora_config
from spectrum_llm.selection import Selection, select


def test_rank_grows_with_score_within_each_type():
    scan = synthetic_scan({"mlp.down_proj": [1.0, 5.0, 3.0, 2.0, 4.0], "self_attn.q_proj": [3.0, 1.0, 2.0, 2.0]})
    plan = lora_config(select(scan, top_percent=100), max_rank=16, min_rank=4)
    down = [plan.ranks[f"model.layers.{i}.mlp.down_proj"] for i in range(5)]
    assert down == [4, 16, 10, 7, 13]
    q = [plan.ranks[f"model.layers.{i}.self_attn.q_proj"] for i in range(4)]
    assert q == [16, 4, 12, 12]  # equal scores, equal ranks
    cfg = plan.config
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert all(cfg["alpha_pattern"][k] == 2 * v for k, v in cfg["rank_pattern"].items())


def test_min_rank_defaults_to_a_quarter_and_bad_ranks_are_refused():
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=100)
    assert sorted(lora_config(sel, max_rank=32).ranks.values()) == [8, 32]
    with pytest.raises(SpectrumError, match="min-rank"):
        lora_config(sel, max_rank=4, min_rank=8)


def test_adapter_size_comes_from_the_scan_shapes():
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=100)
    plan = lora_config(sel, max_rank=8, min_rank=8)
    assert plan.adapter_params == 2 * 8 * (10 + 10)


@pytest.fixture(scope="module")
def llama_sel(llama_dir):
    import spectrum_llm

    return select(spectrum_llm.scan(llama_dir, progress=False), top_percent=50)


def test_peft_takes_the_json_unchanged_and_adapts_exactly_the_selection(llama_sel, tmp_path):
    from peft import LoraConfig, get_peft_model

    plan = lora_config(llama_sel, max_rank=16)
    plan.save(tmp_path / "lora.json")
    model = get_peft_model(tiny_llama(), LoraConfig(**json.loads((tmp_path / "lora.json").read_text())))
    adapted = {
        n.removeprefix("base_model.model."): m.lora_A["default"].out_features
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and "default" in m.lora_A
    }
    assert adapted == plan.ranks
    assert set(adapted) == set(llama_sel.modules)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == plan.adapter_params
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert torch.isfinite(out.logits).all()


def test_model_gives_exact_sizes_and_drops_what_it_lacks(llama_sel, llama_dir):
    plan = lora_config(llama_sel, max_rank=16, model=llama_dir)
    assert plan.adapter_params == lora_config(llama_sel, max_rank=16).adapter_params
    other = Selection.from_patterns(["^model.layers.0.mlp.down_proj.(weight|bias)$", "^model.layers.9.mlp.up_proj$"])
    plan = lora_config(other, model=llama_dir)
    assert list(plan.ranks) == ["model.layers.0.mlp.down_proj"] and "model.layers.9.mlp.up_proj" in plan.left_out


def test_embeddings_norms_and_per_expert_modules_are_left_out_and_listed():
    sel = Selection.from_patterns(
        [
            "^lm_head.weight$",
            "^model.embed_tokens.weight$",
            "model.layers.0.input_layernorm",
            "model.layers.0.block_sparse_moe.experts.3.w1",
            "model.layers.0.self_attn.q_proj",
        ]
    )
    plan = lora_config(sel, max_rank=8)
    assert list(plan.ranks) == ["model.layers.0.self_attn.q_proj"]
    assert set(plan.left_out) == {
        "lm_head",
        "model.embed_tokens",
        "model.layers.0.input_layernorm",
        "model.layers.0.block_sparse_moe.experts.3.w1",
    }


def test_nothing_adaptable_is_an_error():
    with pytest.raises(SpectrumError, match="no module LoRA can adapt"):
        lora_config(["^model.embed_tokens.weight$"])


def test_cli_select_format_peft(llama_dir, tmp_path, capsys):
    import spectrum_llm

    spectrum_llm.scan(llama_dir, output=tmp_path / "scan.json", progress=False)
    out = tmp_path / "lora.json"
    assert (
        run_cli(
            ["select", str(tmp_path / "scan.json"), "-p", "100", "--format", "peft", "--max-rank", "12", "-o", str(out)]
        )
        == 0
    )
    assert "adapter parameters" in capsys.readouterr().err
    assert is_lora_config(out)
    data = json.loads(out.read_text())
    assert max(data["rank_pattern"].values()) == 12 and min(data["rank_pattern"].values()) == 3
