"""freeze(): Axolotl's rule, row masks, MoE name mapping, bad selections, and the Trainer callback."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import tiny_llama
from helpers_selection import axolotl_unfrozen
from spectrum_llm.errors import SpectrumError
from spectrum_llm.exports import write_selection
from spectrum_llm.freezing import freeze
from spectrum_llm.models import load_meta_model
from spectrum_llm.selection import select


@pytest.fixture(scope="module")
def llama_scan(llama_dir):
    import spectrum_llm

    return spectrum_llm.scan(llama_dir, progress=False)


def _sgd_step(model, lr=0.5):
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    model.zero_grad()


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "kw",
    [
        {"top_percent": 50},
        {"top_percent": 50, "compat": True},
        {"top_percent": 100, "train_norms": True},
        {"budget": 0.5},
    ],
)
def test_axolotl_rule_freeze_and_selection_agree(llama_scan, kw, tmp_path):
    sel = select(llama_scan, **kw)
    write_selection(sel, tmp_path / "s.yaml")
    model = tiny_llama()
    axolotl = set(axolotl_unfrozen(model.named_parameters(), sel.patterns))
    summary = freeze(model, tmp_path / "s.yaml")
    frozen_by_us = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{m}.weight" for m in sel.modules} | {"model.embed_tokens.weight", "lm_head.weight"}
    if kw.get("train_norms"):
        expected |= {n for n, _ in model.named_parameters() if "norm" in n}
    assert len(sel.modules) >= 4
    assert axolotl == frozen_by_us == set(summary.trainable) == expected
    assert summary.trainable_params == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    if not kw.get("compat"):
        assert summary.trainable_params == sel.trainable_params and summary.total_params == sel.total_params


def test_row_ranges_train_only_their_rows():
    model = tiny_llama()
    q = "model.layers.0.self_attn.q_proj.weight"
    summary = freeze(model, [f"^{q}$[8:24]", "^lm_head.weight$"])
    assert summary.partial == {q: ["[8:24]"]}
    assert summary.trainable_params == 16 * 64 + model.lm_head.weight.numel()
    before = _snapshot(model)
    _sgd_step(model)
    after = _snapshot(model)
    changed = (after[q] != before[q]).any(dim=1)
    assert changed[8:24].all() and not changed[:8].any() and not changed[24:].any()
    assert all(torch.equal(after[n], before[n]) for n in before if n not in (q, "lm_head.weight"))


def test_a_ranged_pattern_limits_an_unranged_one_like_axolotl():
    model = tiny_llama()
    q = "model.layers.0.self_attn.q_proj.weight"
    summary = freeze(model, [f"^{q}$[0:4]", "^model.layers.0.self_attn.q_proj"])
    assert summary.partial[q] == ["[0:4]"] and summary.trainable_params == 4 * 64


def test_pattern_matching_nothing_is_an_error_naming_it():
    model = tiny_llama()
    with pytest.raises(SpectrumError, match=r"model\.layers\.7\.mlp\.down_proj.*scan this model"):
        freeze(model, ["^lm_head.weight$", "model.layers.7.mlp.down_proj"])


def test_non_strict_warns_and_freezes_the_rest(caplog):
    model = tiny_llama()
    with caplog.at_level(logging.WARNING):
        summary = freeze(model, ["^lm_head.weight$", "model.layers.7.mlp.down_proj"], strict=False)
    assert summary.trainable == ["lm_head.weight"] and "layers.7" in caplog.text


def test_selection_for_another_model_is_refused(reference_dir):
    model = tiny_llama()
    yaml = reference_dir / "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct_unfrozenparameters_50percent.yaml"
    with pytest.raises(SpectrumError, match="another model"):
        freeze(model, yaml)


def test_tied_head_pattern_alone_trains_nothing_like_axolotl():
    model = tiny_llama(tie_word_embeddings=True)
    pats = ["^lm_head.weight$", "^model.layers.0.mlp.down_proj"]
    summary = freeze(model, pats)
    assert (
        set(axolotl_unfrozen(model.named_parameters(), pats))
        == set(summary.trainable)
        == {"model.layers.0.mlp.down_proj.weight"}
    )
    assert not model.model.embed_tokens.weight.requires_grad
    assert summary.trainable_params == 96 * 64
    assert "tied to model.embed_tokens.weight" in summary.notes[0]


def test_tied_weight_trains_by_its_embedding_name():
    model = tiny_llama(tie_word_embeddings=True)
    summary = freeze(model, ["^lm_head.weight$", "^model.embed_tokens.weight$"])
    assert summary.trainable == ["model.embed_tokens.weight"] and not summary.notes
    assert summary.trainable_params == summary.total_params - sum(
        p.numel() for n, p in model.named_parameters() if n != "model.embed_tokens.weight"
    )


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    from conftest import plant_signal, save_model

    model = tiny_llama(tie_word_embeddings=True)
    plant_signal(model)
    return save_model(model, tmp_path_factory.mktemp("tied"))


@pytest.mark.parametrize(
    "emb,head,trains_shared",
    [
        (True, None, True),
        (False, None, False),
        (False, False, False),
        (False, True, True),
        (True, False, True),
        (True, True, True),
    ],
)
def test_tied_selection_select_freeze_and_axolotl_count_the_same(tied_dir, emb, head, trains_shared, tmp_path):
    import spectrum_llm

    scan = spectrum_llm.scan(tied_dir, progress=False)
    for model_arg in (None, tied_dir):
        sel = select(scan, top_percent=50, train_embeddings=emb, train_lm_head=head, model=model_arg)
        write_selection(sel, tmp_path / "s.yaml")
        model = tiny_llama(tie_word_embeddings=True)
        axolotl = axolotl_unfrozen(model.named_parameters(), sel.patterns)
        summary = freeze(model, tmp_path / "s.yaml")
        assert set(axolotl) == set(summary.trainable)
        axolotl_count = sum(p.numel() for n, p in model.named_parameters() if n in axolotl)
        assert sel.trainable_params == summary.trainable_params == axolotl_count
        assert sel.total_params == summary.total_params
        assert ("model.embed_tokens.weight" in axolotl) == trains_shared
        assert sel.rule["lm_head_tied"] and not summary.notes


def test_no_embeddings_no_head_trains_neither_on_a_tied_model(tied_dir):
    import spectrum_llm

    sel = select(
        spectrum_llm.scan(tied_dir, progress=False), top_percent=50, train_embeddings=False, train_lm_head=False
    )
    assert not any("embed" in p or "lm_head" in p for p in sel.patterns)
    model = tiny_llama(tie_word_embeddings=True)
    freeze(model, sel)
    assert not model.model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad


def test_frozen_embeddings_enable_input_grads_for_reentrant_checkpointing_on_request():
    model = tiny_llama()
    assert not freeze(model, ["^model.layers.1.mlp.down_proj"]).input_require_grads  # the backward pass stops early
    summary = freeze(model, ["^model.layers.1.mlp.down_proj"], input_require_grads=True)
    assert summary.input_require_grads
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    before = _snapshot(model)
    _sgd_step(model)  # reentrant checkpointing gives no gradient at all without input grads
    w = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(_snapshot(model)[w], before[w])
    assert freeze(model, ["^model.embed_tokens"], input_require_grads=True).input_require_grads is False


def test_refreezing_replaces_the_previous_masks():
    model = tiny_llama()
    q = "model.layers.0.self_attn.q_proj.weight"
    freeze(model, [f"^{q}$[0:4]"])
    freeze(model, [f"^{q}$"])
    before = _snapshot(model)
    _sgd_step(model)
    assert (_snapshot(model)[q] != before[q]).any(dim=1)[4:].any()


def _tiny_mixtral(layers=1):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=4,
        max_position_embeddings=64,
    )
    return MixtralForCausalLM(cfg)


def test_mixtral_checkpoint_experts_map_to_fused_slices():
    model = _tiny_mixtral()
    gu = "model.layers.0.mlp.experts.gate_up_proj"
    down = "model.layers.0.mlp.experts.down_proj"
    assert gu in dict(model.named_parameters())
    summary = freeze(
        model,
        [
            "^model.layers.0.block_sparse_moe.experts.1.w1.(weight|bias)$",
            "model.layers.0.block_sparse_moe.experts.2.w2",
        ],
    )
    assert summary.mapped["model.layers.0.block_sparse_moe.experts.2.w2"] == f"{down}[2, :]"
    assert summary.trainable_params == 48 * 32 + 32 * 48
    before = _snapshot(model)
    _sgd_step(model)
    after = _snapshot(model)
    changed = after[gu] != before[gu]
    assert changed[1, :48].any() and not changed[1, 48:].any() and not changed[[0, 2, 3]].any()
    changed = after[down] != before[down]
    assert changed[2].any() and not changed[[0, 1, 3]].any()


def test_mixtral_router_gate_maps_to_mlp_gate():
    model = _tiny_mixtral()
    summary = freeze(
        model, ["model.layers.0.block_sparse_moe.gate", "^model.layers.0.block_sparse_moe.gate.(weight|bias)$"]
    )
    assert summary.trainable == ["model.layers.0.mlp.gate.weight"]
    assert summary.mapped["model.layers.0.block_sparse_moe.gate"] == "model.layers.0.mlp.gate.weight"
    assert summary.trainable_params == 4 * 32


def _checkpoint_params(folder):
    """(name, tensor-like) pairs of a checkpoint's own layout: what Axolotl sees on transformers 4."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return [(k, torch.empty(f.get_slice(k).get_shape(), device="meta")) for k in f.keys()]


@pytest.mark.parametrize("kw", [{"top_percent": 50}, {"top_percent": 100}, {"top_percent": 50, "compat": True}])
def test_mixtral_selection_trains_what_axolotl_trains_on_the_checkpoint_layout(tmp_path, kw):
    import spectrum_llm

    _tiny_mixtral(layers=2).save_pretrained(tmp_path)
    sel = select(spectrum_llm.scan(tmp_path, progress=False), **kw)
    assert any(".block_sparse_moe.gate" in p for p in sel.patterns)
    ckpt = _checkpoint_params(tmp_path)
    axolotl = axolotl_unfrozen(ckpt, sel.patterns)
    axolotl_count = sum(t.numel() for n, t in ckpt if n in axolotl)
    summary = freeze(_tiny_mixtral(layers=2), sel)
    assert summary.trainable_params == axolotl_count
    if not kw.get("compat"):
        assert sel.trainable_params == axolotl_count


def test_unmappable_expert_is_an_error():
    model = _tiny_mixtral()
    with pytest.raises(SpectrumError, match="experts.9.w1"):
        freeze(model, ["model.layers.0.block_sparse_moe.experts.9.w1"])


def test_meta_model_summary_needs_no_weights(llama_dir, llama_scan):
    model = load_meta_model(llama_dir)
    assert next(model.parameters()).is_meta
    summary = freeze(model, select(llama_scan, top_percent=50))
    assert 0 < summary.trainable_params < summary.total_params


def test_callback_freezes_at_the_end_of_trainer_init(tmp_path):
    from transformers import Trainer, TrainingArguments

    from spectrum_llm.integrations import SpectrumCallback

    model = tiny_llama()
    cb = SpectrumCallback(["^model.layers.1.mlp.down_proj"])
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True), callbacks=[cb])
    assert cb.summary is not None
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.layers.1.mlp.down_proj.weight"}


def test_qwen2_moe_scan_select_freeze_end_to_end(tmp_path):
    """A checkpoint keeps per-expert keys; transformers 5 loads fused experts: counts must still agree."""
    from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    import spectrum_llm

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
    )
    Qwen2MoeForCausalLM(cfg).save_pretrained(tmp_path)
    sel = select(spectrum_llm.scan(tmp_path, progress=False), top_percent=50)
    assert any(".experts.3." in m or ".experts.0." in m for m in sel.modules)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    summary = freeze(model, sel)
    assert summary.mapped and all(
        "experts.gate_up_proj[" in v or "experts.down_proj[" in v for v in summary.mapped.values()
    )
    assert (
        "model.layers.0.self_attn.q_proj.bias" in summary.trainable
        or "model.layers.1.self_attn.q_proj.bias" in summary.trainable
    )
    assert (summary.trainable_params, summary.total_params) == (sel.trainable_params, sel.total_params)


def test_cli_notes_a_tied_head_that_follows_the_embeddings(tied_dir, tmp_path, capsys):
    import spectrum_llm
    from spectrum_llm.cli import main

    spectrum_llm.scan(tied_dir, output=tmp_path / "scan.json", progress=False)
    with pytest.raises(SystemExit) as e:
        main(
            [
                "select",
                str(tmp_path / "scan.json"),
                "-o",
                str(tmp_path / "s.yaml"),
                "--no-train-embeddings",
                "--train-lm-head",
            ]
        )
    assert e.value.code in (0, None)
    assert "lm_head is tied" in capsys.readouterr().err
    assert "- ^model.embed_tokens.weight$\n" in (tmp_path / "s.yaml").read_text()
