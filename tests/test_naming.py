"""Every naming case on tiny transformers models built from configs, as their checkpoints store them."""

import pytest
import torch
from safetensors.torch import save_file

import spectrum_llm
from conftest import save_model
from spectrum_llm.naming import column_type, fused_parts, gguf_to_hf, parse
from spectrum_llm.results import ModuleScore


def scan_of(model, tmp_path):
    torch.manual_seed(0)
    return {m.name: m for m in spectrum_llm.scan(save_model(model, tmp_path)).modules}


@pytest.mark.parametrize(
    "param,module,type_,layer,expert,kind",
    [
        (
            "model.layers.12.self_attn.q_proj.weight",
            "model.layers.12.self_attn.q_proj",
            "self_attn.q_proj",
            12,
            None,
            "linear",
        ),
        (
            "model.layers.3.mlp.experts.7.down_proj.weight",
            "model.layers.3.mlp.experts.7.down_proj",
            "mlp.experts.down_proj",
            3,
            7,
            "linear",
        ),
        (
            "model.layers.0.block_sparse_moe.experts.5.w1.weight",
            "model.layers.0.block_sparse_moe.experts.5.w1",
            "block_sparse_moe.experts.w1",
            0,
            5,
            "linear",
        ),
        ("transformer.h.4.attn.c_attn.weight", "transformer.h.4.attn.c_attn", "attn.c_attn", 4, None, "linear"),
        ("model.embed_tokens.weight", "model.embed_tokens", "embed_tokens", None, None, "embedding"),
        ("lm_head.weight", "lm_head", "lm_head", None, None, "lm_head"),
    ],
)
def test_parse(param, module, type_, layer, expert, kind):
    p = parse(param)
    assert (p.module, p.type, p.layer, p.expert, p.kind) == (module, type_, layer, expert, kind)


@pytest.mark.parametrize(
    "gguf,hf",
    [
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
        ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
        ("blk.2.ffn_gate_exps.weight", "model.layers.2.mlp.experts.gate_proj"),
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ],
)
def test_gguf_names_map_to_hugging_face(gguf, hf):
    assert gguf_to_hf(gguf) == hf


def test_mixtral_experts_are_one_type_across_experts(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
    )
    mods = scan_of(MixtralForCausalLM(cfg), tmp_path)
    w1 = [m for m in mods.values() if m.type == "block_sparse_moe.experts.w1"]
    assert sorted((m.layer, m.expert) for m in w1) == [(layer, e) for layer in range(2) for e in range(4)]
    assert all(m.ranked for m in w1)


def test_qwen2_moe_experts_shared_expert_and_router(tmp_path):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=3,
        num_experts_per_tok=2,
    )
    mods = scan_of(Qwen2MoeForCausalLM(cfg), tmp_path)
    assert mods["model.layers.1.mlp.experts.2.down_proj"].type == "mlp.experts.down_proj"
    assert mods["model.layers.1.mlp.experts.2.down_proj"].expert == 2
    assert mods["model.layers.0.mlp.shared_expert.up_proj"].type == "mlp.shared_expert.up_proj"
    gate = mods["model.layers.0.mlp.shared_expert_gate"]
    assert gate.snr is None and "too few singular values" in gate.skipped
    bias = mods["model.layers.0.self_attn.q_proj.bias"]
    assert bias.kind == "bias" and bias.type == "self_attn.q_proj.bias" and not bias.ranked


def test_fused_3d_expert_tensor_is_scored_per_expert(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "model.layers.0.mlp.experts.gate_up_proj": torch.randn(4, 24, 16, generator=g),
            "model.layers.0.mlp.experts.down_proj": torch.randn(4, 16, 12, generator=g),
        },
        tmp_path / "model.safetensors",
    )
    mods = spectrum_llm.scan(tmp_path).modules
    gu = [m for m in mods if m.type == "mlp.experts.gate_up_proj"]
    assert [m.expert for m in gu] == [0, 1, 2, 3]
    assert gu[2].name == "model.layers.0.mlp.experts.2.gate_up_proj"
    assert gu[2].param == "model.layers.0.mlp.experts.gate_up_proj" and gu[2].rows == [2, 3]
    assert gu[2].shape == [24, 16] and all(m.ranked for m in mods)


def test_gpt2_conv1d_and_fused_c_attn_parts(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    mods = scan_of(model, tmp_path)
    whole = mods["transformer.h.1.attn.c_attn"]
    assert whole.type == "attn.c_attn" and whole.shape == [32, 96] and whole.ranked
    parts = [mods[f"transformer.h.1.attn.c_attn.{p}"] for p in "qkv"]
    assert [(p.part, p.dim, p.rows) for p in parts] == [("q", 1, [0, 32]), ("k", 1, [32, 64]), ("v", 1, [64, 96])]
    w = model.transformer.h[1].attn.c_attn.weight.detach()
    s = torch.linalg.svdvals(w[:, 32:64].double())
    from spectrum_llm.estimators import mp_snr

    assert parts[1].snr == pytest.approx(mp_snr(s, 32, 32).snr, rel=1e-6)
    assert mods["transformer.wte"].kind == "embedding"
    assert mods["transformer.h.0.ln_1"].kind == "norm" and mods["transformer.h.0.attn.c_attn.bias"].kind == "bias"


def test_phi3_fused_qkv_and_gate_up_parts(tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    mods = scan_of(Phi3ForCausalLM(cfg), tmp_path)
    assert mods["model.layers.0.self_attn.qkv_proj"].type == "self_attn.qkv_proj"
    q, k, v = (mods[f"model.layers.0.self_attn.qkv_proj.{p}"] for p in "qkv")
    assert (q.rows, k.rows, v.rows) == ([0, 32], [32, 48], [48, 64])
    assert q.type == "self_attn.qkv_proj.q" and q.dim == 0
    gate, up = mods["model.layers.1.mlp.gate_up_proj.gate"], mods["model.layers.1.mlp.gate_up_proj.up"]
    assert (gate.rows, up.rows) == ([0, 48], [48, 96])


@pytest.mark.parametrize("arch,hf", [("llama", "post_attention_layernorm"), ("gemma3", "pre_feedforward_layernorm")])
def test_gguf_ffn_norm_is_the_pre_mlp_norm_of_gemma(arch, hf):
    """Gemma's blocks have four norms; llama.cpp's post_attention_norm and ffn_norm must not become one name."""
    assert gguf_to_hf("blk.4.ffn_norm.weight", arch) == f"model.layers.4.{hf}.weight"
    assert gguf_to_hf("blk.4.post_attention_norm.weight", arch) == "model.layers.4.post_attention_layernorm.weight"


def test_gemma3_gguf_names_are_unique(tmp_path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma3")
    for part in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
        writer.add_tensor(f"blk.0.{part}.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from spectrum_llm.checkpoint import open_checkpoint

    names = [t.name for t in open_checkpoint(tmp_path / "g.gguf").tensors]
    assert len(set(names)) == 4 and "model.layers.0.pre_feedforward_layernorm.weight" in names


def test_fused_parts_follow_the_config():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32, "intermediate_size": 48}
    assert fused_parts("model.layers.0.self_attn.qkv_proj.weight", (64, 32), cfg) == [
        ("q", 0, 0, 32),
        ("k", 0, 32, 48),
        ("v", 0, 48, 64),
    ]
    assert fused_parts("model.layers.0.mlp.gate_up_proj.weight", (96, 32), cfg) == [
        ("gate", 0, 0, 48),
        ("up", 0, 48, 96),
    ]
    assert fused_parts("h.0.attn.c_attn.weight", (32, 96), {"n_head": 4, "n_embd": 32})[2] == ("v", 1, 64, 96)
    assert fused_parts("model.layers.0.self_attn.qkv_proj.weight", (60, 32), cfg) == []  # the config disagrees


def test_column_type_folds_reference_expert_index_and_keeps_grouped_types():
    ref = ModuleScore(
        name="model.layers.3.mlp.experts.17.down_proj", type="mlp.experts.17.down_proj", layer=3, shape=[], snr=1.0
    )
    ours = ModuleScore(
        name="model.layers.3.mlp.experts.17.down_proj",
        type="mlp.experts.down_proj",
        layer=3,
        shape=[],
        snr=1.0,
        expert=17,
    )
    mixtral = ModuleScore(name="x", type="block_sparse_moe.experts.0.w1", layer=0, shape=[], snr=1.0)
    assert column_type(ref) == column_type(ours) == "mlp.experts.down_proj"
    assert column_type(mixtral) == "block_sparse_moe.experts.w1"
