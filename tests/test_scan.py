import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import spectrum_llm
from conftest import save_model, tiny_llama
from spectrum_llm import scan_cpu
from spectrum_llm import scanning as scan_mod
from spectrum_llm.errors import SpectrumError
from spectrum_llm.scan_files import load_scan
from test_estimators import direct_reference


def test_reference_scan_matches_the_formula_for_every_module(llama_dir, tmp_path):
    result = spectrum_llm.scan(llama_dir, estimator="reference", output=tmp_path / "scan.json")
    weights = load_file(llama_dir / "model.safetensors")
    ranked = [m for m in result.modules if m.ranked]
    assert len(ranked) == 2 * 7 + 2  # 7 projections per layer, embeddings and lm_head
    for m in ranked:
        assert m.snr == pytest.approx(direct_reference(weights[m.param]), rel=1e-4), m.name


def test_llama_names_types_layers_and_kinds(llama_dir):
    by_name = {m.name: m for m in spectrum_llm.scan(llama_dir).modules}
    q = by_name["model.layers.1.self_attn.q_proj"]
    assert (q.type, q.layer, q.kind, q.shape, q.param) == (
        "self_attn.q_proj",
        1,
        "linear",
        [64, 64],
        "model.layers.1.self_attn.q_proj.weight",
    )
    assert by_name["model.embed_tokens"].kind == "embedding"
    assert by_name["lm_head"].kind == "lm_head"
    norm = by_name["model.layers.0.input_layernorm"]
    assert norm.kind == "norm" and norm.snr is None and "not ranked" in norm.skipped
    types = {m.type for m in by_name.values() if m.kind == "linear"}
    assert types == {f"self_attn.{p}_proj" for p in "qkvo"} | {f"mlp.{p}_proj" for p in ("gate", "up", "down")}


def test_mp_scan_finds_planted_rank(llama_dir):
    for m in spectrum_llm.scan(llama_dir, estimator="mp").modules:
        if m.kind == "linear":
            assert m.stats["signal_rank"] == 3, m.name


def test_scores_are_finite_or_skipped_with_reason(llama_dir):
    for m in spectrum_llm.scan(llama_dir).modules:
        assert (m.snr is not None and math.isfinite(m.snr)) or m.skipped


def test_bf16_checkpoint_scans_like_fp32(tmp_path):
    model = tiny_llama()
    a = spectrum_llm.scan(save_model(model, tmp_path / "bf16", torch.bfloat16))
    direct = load_file(tmp_path / "bf16" / "model.safetensors")
    m = next(x for x in a.modules if x.name == "model.layers.0.mlp.down_proj")
    s = torch.linalg.svdvals(direct[m.param].double())
    from spectrum_llm.estimators import mp_snr

    assert m.snr == pytest.approx(mp_snr(s, *direct[m.param].shape).snr, rel=1e-6)


def test_output_json_layout(llama_dir, tmp_path):
    out = tmp_path / "scan.json"
    spectrum_llm.scan(llama_dir, output=out)
    data = json.loads(out.read_text())
    assert data["format"] == "spectrum-llm/scan" and data["estimator"] == "mp"
    assert data["fingerprint"] and data["version"] == spectrum_llm.__version__
    assert {"name", "type", "layer", "shape", "snr"} <= set(data["modules"][0])
    assert not (tmp_path / "scan.json.partial").exists()


def test_reference_json_flat_layout(llama_dir, tmp_path):
    spectrum_llm.scan(llama_dir, estimator="reference", reference_json=tmp_path)
    (f,) = tmp_path.glob("snr_results_*.json")
    data = json.loads(f.read_text())
    assert data["model.layers.0.mlp.down_proj"]["type"] == "mlp.down_proj"
    assert load_scan(f).layout == "reference-flat"


def test_scan_files_record_the_estimator_version(llama_dir, tmp_path):
    from spectrum_llm.estimators import get

    out = tmp_path / "scan.json"
    result = spectrum_llm.scan(llama_dir, output=out, estimator="reference")
    assert json.loads(out.read_text())["estimator_version"] == get("reference").version == result.estimator_version
    assert load_scan(out).estimator_version == get("reference").version
    spectrum_llm.scan(llama_dir, estimator="reference", reference_json=tmp_path)
    (flat,) = tmp_path.glob("snr_results_*.json")
    assert all(set(v) == {"snr", "type"} for v in json.loads(flat.read_text()).values())  # the reference layout


def test_scan_files_without_an_estimator_version_load_and_are_reused(llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "scan.json"
    first = spectrum_llm.scan(llama_dir, output=out)
    data = json.loads(out.read_text())
    del data["estimator_version"]
    out.write_text(json.dumps(data))
    assert load_scan(out).estimator_version is None
    assert [m.snr for m in load_scan(out).modules] == [m.snr for m in first.modules]
    _no_scoring(monkeypatch)
    assert spectrum_llm.scan(llama_dir, output=out).cached


def test_a_scan_by_another_estimator_version_is_not_reused(llama_dir, tmp_path, monkeypatch):
    import dataclasses

    from spectrum_llm.estimators import REGISTRY

    out = tmp_path / "scan.json"
    spectrum_llm.scan(llama_dir, output=out)
    monkeypatch.setitem(REGISTRY, "mp", dataclasses.replace(REGISTRY["mp"], version=REGISTRY["mp"].version + 1))
    again = spectrum_llm.scan(llama_dir, output=out)
    assert not again.cached and load_scan(out).estimator_version == REGISTRY["mp"].version


def test_modules_regex_limits_the_scan(llama_dir):
    result = spectrum_llm.scan(llama_dir, modules=r"layers\.0\..*q_proj")
    assert [m.name for m in result.modules] == ["model.layers.0.self_attn.q_proj"]


def test_repeated_scan_of_unchanged_checkpoint_is_instant(llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "scan.json"
    first = spectrum_llm.scan(llama_dir, output=out)
    monkeypatch.setattr(scan_cpu, "score_tensor", lambda *a, **k: pytest.fail("re-scored a cached checkpoint"))
    again = spectrum_llm.scan(llama_dir, output=out)
    assert [m.snr for m in again.modules] == [m.snr for m in first.modules]


def test_changed_estimator_rescans(llama_dir, tmp_path):
    out = tmp_path / "scan.json"
    spectrum_llm.scan(llama_dir, output=out, estimator="mp")
    assert spectrum_llm.scan(llama_dir, output=out, estimator="reference").estimator == "reference"
    assert load_scan(out).estimator == "reference"


def test_interrupted_scan_resumes_where_it_stopped(llama_dir, tmp_path, monkeypatch):
    out = tmp_path / "scan.json"
    real = scan_cpu.score_tensor
    calls = []

    def dies_after_five(*a, **k):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(a[0].name)
        return real(*a, **k)

    monkeypatch.setattr(scan_cpu, "score_tensor", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        spectrum_llm.scan(llama_dir, output=out)
    assert not out.exists() and (tmp_path / "scan.json.partial").exists()

    resumed = []
    monkeypatch.setattr(scan_cpu, "score_tensor", lambda *a, **k: resumed.append(a[0].name) or real(*a, **k))
    result = spectrum_llm.scan(llama_dir, output=out)
    assert not set(calls) & set(resumed)
    assert len(calls) + len(resumed) == len({m.param for m in result.modules})
    full = spectrum_llm.scan(llama_dir)
    assert [(m.name, m.snr) for m in result.modules] == [(m.name, m.snr) for m in full.modules]


def test_in_memory_model_reports_offloaded_parameters_as_skipped():
    model = tiny_llama()
    with torch.device("meta"):
        model.model.layers[1].self_attn.q_proj = torch.nn.Linear(64, 64, bias=False)
    result = spectrum_llm.scan(model)
    q = next(m for m in result.modules if m.name == "model.layers.1.self_attn.q_proj")
    assert q.snr is None and "offloaded" in q.skipped
    assert all(m.snr is None or math.isfinite(m.snr) for m in result.modules)


def test_dtype_conversion_is_per_tensor(tmp_path):
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight": torch.randn(32, 48, dtype=torch.float16),
            "model.layers.0.mlp.down_proj.weight": torch.randn(48, 32, dtype=torch.bfloat16),
        },
        tmp_path / "model.safetensors",
    )
    assert all(m.ranked for m in spectrum_llm.scan(tmp_path).modules)


# ------------------------------------------------------------------------------------- the cache, by content


def _no_scoring(monkeypatch):
    monkeypatch.setattr(scan_cpu, "score_tensor", lambda *a, **k: pytest.fail("scanned weights it had scanned"))


def test_a_scan_of_the_same_weights_is_reused_wherever_they_lie(llama_dir, tmp_path, monkeypatch):
    first = spectrum_llm.scan(llama_dir, output=tmp_path / "a.json")
    copy = shutil.copytree(llama_dir, tmp_path / "elsewhere" / "copy")
    _no_scoring(monkeypatch)
    again = spectrum_llm.scan(copy, output=tmp_path / "b.json")
    assert again.cached and not first.cached
    assert [(m.name, m.snr) for m in again.modules] == [(m.name, m.snr) for m in first.modules]
    assert load_scan(tmp_path / "b.json").fingerprint == first.fingerprint
    assert spectrum_llm.scan(copy).cached  # no output file needed


def test_no_resume_scans_again(llama_dir, tmp_path):
    spectrum_llm.scan(llama_dir)
    assert not spectrum_llm.scan(llama_dir, resume=False).cached


def test_a_converted_folder_finds_the_scan_of_its_gguf(llama_dir, tmp_path, monkeypatch):
    import gguf

    from spectrum_llm import cache

    q = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)).numpy()
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tensor("blk.0.attn_q.weight", q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    source = spectrum_llm.scan(tmp_path / "m.gguf")
    folder = tmp_path / "converted"
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": torch.from_numpy(q).bfloat16()},
        folder.mkdir() or folder / "model.safetensors",
    )
    (folder / cache.SOURCE_FILE).write_text(json.dumps({"fingerprint": source.fingerprint}))
    _no_scoring(monkeypatch)
    assert spectrum_llm.scan(folder).modules == source.modules


def test_an_unwritable_cache_does_not_stop_a_scan(llama_dir, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "file" / "cache"))
    assert spectrum_llm.scan(llama_dir).ranked()


def test_cli_says_how_many_were_scored_and_skipped(llama_dir, tmp_path, capsys):
    from spectrum_llm.cli import main

    with pytest.raises(SystemExit):
        main(["scan", str(llama_dir), "-o", str(tmp_path / "s.json"), "--no-progress"])
    assert "16 scored, 5 skipped (1-D weights) ->" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["scan", str(llama_dir), "-o", str(tmp_path / "t.json"), "--no-progress"])
    assert "reused from an earlier scan" in capsys.readouterr().err


def test_one_module_is_read_again_as_the_scan_cut_it(tmp_path):
    torch.manual_seed(0)
    experts, qkv = torch.randn(3, 16, 24), torch.randn(48, 16)
    save_file(
        {"model.layers.0.mlp.experts.down_proj": experts, "model.layers.0.self_attn.qkv_proj.weight": qkv},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 2, "hidden_size": 16}))
    by_name = {m.name: m for m in spectrum_llm.scan(tmp_path, resume=False).modules}
    for name, w in (
        ("model.layers.0.mlp.experts.1.down_proj", experts[1]),
        ("model.layers.0.self_attn.qkv_proj.k", qkv[16:32]),
    ):
        shape, s = scan_mod.module_singular_values(tmp_path, by_name[name], "mp")
        assert shape == tuple(w.shape)
        np.testing.assert_allclose(s.numpy(), torch.linalg.svdvals(w.double()).numpy(), rtol=1e-6)


def test_a_module_the_scan_skipped_has_no_spectrum(llama_dir):
    norm = next(m for m in spectrum_llm.scan(llama_dir).modules if m.kind == "norm")
    with pytest.raises(SpectrumError, match="no spectrum to draw: 1-D weight"):
        scan_mod.module_singular_values(llama_dir, norm, "mp")
