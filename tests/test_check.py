"""spectrum check: patterns, unmatched and missing modules, trainable share and training memory, on tiny Llama
(tied and untied), Qwen2-MoE and Mixtral built on the meta device from their configs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import save_model, tiny_llama
from helpers_cli import run_cli
from helpers_selection import axolotl_unfrozen
from spectrum_llm.activations import activation_bytes
from spectrum_llm.errors import SpectrumError
from spectrum_llm.exports import write_selection
from spectrum_llm.freezing import freeze
from spectrum_llm.preflight import check
from spectrum_llm.selection import select


@pytest.fixture(scope="module")
def llama_sel(llama_dir):
    import spectrum_llm

    return select(spectrum_llm.scan(llama_dir, progress=False), top_percent=50)


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".txt"])
def test_every_layout_reports_each_pattern_and_the_trainable_share(llama_dir, llama_sel, tmp_path, suffix):
    path = tmp_path / f"sel{suffix}"
    write_selection(llama_sel, path)
    report = check(path, llama_dir, seq_len=16)
    assert [p.pattern for p in report.patterns] == llama_sel.patterns
    assert all(p.tensors and p.params for p in report.patterns)
    assert not report.unmatched and not report.missing_modules
    model = tiny_llama()
    assert report.trainable_params == freeze(model, llama_sel).trainable_params == llama_sel.trainable_params
    assert report.total_params == sum(p.numel() for p in model.parameters())


def test_memory_counts_fp32_masters_gradients_and_adamw(llama_dir, llama_sel):
    report = check(llama_sel, llama_dir, seq_len=16, dtype="bfloat16")
    full, mine, lora, *_ = report.memory
    n, t = report.total_params, report.trainable_params
    assert full.trainable_params == n and full.static_bytes == 16 * n
    assert mine.static_bytes == 2 * (n - t) + 16 * t
    assert lora.method.startswith("LoRA r=") and abs(lora.trainable_params - t) <= t
    assert lora.weights["bfloat16"] == 2 * n
    assert full.activations_per_token > mine.activations_per_token > 0


def test_unmatched_patterns_are_an_error_unless_allowed(llama_dir, tmp_path, capsys):
    pats = ["^model.layers.0.mlp.down_proj.(weight|bias)$", "^transformer.h.0.attn.c_attn.(weight|bias)$"]
    with pytest.raises(SpectrumError, match="c_attn"):
        check(pats, llama_dir, activations=False)
    report = check(pats, llama_dir, allow_unmatched=True, activations=False)
    assert report.unmatched == [pats[1]] and report.missing_modules == ["transformer.h.0.attn.c_attn"]
    (tmp_path / "s.txt").write_text("\n".join(pats) + "\n")
    assert run_cli(["check", str(tmp_path / "s.txt"), "--model", str(llama_dir), "--no-activations"]) == 2
    captured = capsys.readouterr()
    assert "patterns matching nothing: ^transformer.h.0.attn.c_attn" in captured.out
    assert "error:" in captured.err
    assert (
        run_cli(
            [
                "check",
                str(tmp_path / "s.txt"),
                "--model",
                str(llama_dir),
                "--no-activations",
                "--allow-unmatched",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "r.json").read_text())["unmatched"] == [pats[1]]


def test_a_prefix_pattern_that_matches_another_module_is_a_missing_module(llama_dir):
    report = check(["model.layers.0.mlp.gate"], llama_dir, activations=False)
    assert report.patterns[0].tensors == ["model.layers.0.mlp.gate_proj.weight"]
    assert report.missing_modules == ["model.layers.0.mlp.gate"]


def test_tied_embeddings_counted_once_and_the_head_pattern_explained(tmp_path):
    folder = save_model(tiny_llama(tie_word_embeddings=True), tmp_path / "tied")
    report = check(["^lm_head.weight$", "^model.layers.0.mlp.down_proj.(weight|bias)$"], folder, seq_len=8)
    head = report.patterns[0]
    assert head.tensors == [] and "tied to model.embed_tokens.weight" in head.note and not report.unmatched
    model = tiny_llama(tie_word_embeddings=True)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert report.trainable_params == 96 * 64


def _qwen2_moe(path):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=True,
    )
    Qwen2MoeForCausalLM(cfg).save_pretrained(path)
    return path


def _mixtral(path):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    MixtralForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.mark.parametrize("build", [_qwen2_moe, _mixtral], ids=["qwen2-moe", "mixtral"])
def test_moe_checkpoint_selection_maps_onto_fused_experts(build, tmp_path):
    from transformers import AutoModelForCausalLM

    import spectrum_llm

    folder = build(tmp_path / "moe")
    sel = select(spectrum_llm.scan(folder, progress=False), top_percent=50)
    report = check(sel, folder, seq_len=8)
    assert not report.unmatched and not report.missing_modules
    mapped = [p for p in report.patterns if p.mapped]
    assert mapped and any("experts.gate_up_proj[" in p.mapped or "experts.down_proj[" in p.mapped for p in mapped)
    model = AutoModelForCausalLM.from_pretrained(folder)
    summary = freeze(model, sel)
    assert (report.trainable_params, report.total_params) == (summary.trainable_params, summary.total_params)
    assert all(m.activations_per_token for m in report.memory)


def test_meta_activations_equal_a_real_forward_on_cpu():
    """The meta-device count matches what autograd really keeps on CPU (whose SDPA is a fused kernel too)."""
    model = tiny_llama(num_hidden_layers=2).to(torch.bfloat16).train()
    ids = torch.randint(0, 128, (1, 32))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    real = sum(n for k, n in kept.items() if k not in params)
    from spectrum_llm.preflight import meta_model

    meta = meta_model(model.config)
    assert activation_bytes(meta, 32) == pytest.approx(real, rel=0.02)


def test_axolotl_count_on_the_meta_model(llama_dir, llama_sel):
    report = check(llama_sel, llama_dir, activations=False)
    model = tiny_llama()
    unfrozen = axolotl_unfrozen(model.named_parameters(), llama_sel.patterns)
    assert report.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in unfrozen)


def test_memory_has_each_frozen_precision_and_qlora_within_80_columns(llama_dir, llama_sel):
    report = check(llama_sel, llama_dir, seq_len=16, dtype="bfloat16")
    rows = {m.method: m for m in report.memory}
    mine, int8, nf4 = rows["this selection"], rows["selection, int8 base"], rows["selection, nf4 base"]
    assert mine.static_bytes > int8.static_bytes > nf4.static_bytes
    assert int8.gradients == nf4.gradients == mine.gradients  # the same tensors train
    assert any(m.startswith("QLoRA r=") and "nf4" in rows[m].weights for m in rows)
    table = str(report).split("training memory")[1].splitlines()
    assert len(table) > 7 and max(len(line) for line in table) <= 80
