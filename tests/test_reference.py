"""--compat and --reference-json give what the reference tool writes for the same model (its rules restated in
helpers_reference, run on the same tiny models)."""

from __future__ import annotations

import json
import math

import pytest

import spectrum_llm
from conftest import plant_signal, save_model, tiny_llama
from helpers_reference import reference_scan, reference_yaml
from spectrum_llm.exports import to_yaml
from spectrum_llm.reference import file_name, model_id, reference_type, sort_types, to_json_text
from spectrum_llm.results import ScanResult
from spectrum_llm.scan_files import load_scan
from spectrum_llm.selection import select


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model_and_scan(request, tmp_path_factory):
    model = tiny_llama(num_hidden_layers=4, tie_word_embeddings=request.param)
    plant_signal(model)
    folder = save_model(model, tmp_path_factory.mktemp("ref"))
    return model, spectrum_llm.scan(folder, estimator="reference", progress=False)


def test_reference_types_and_order():
    assert reference_type("model.layers.3.self_attn.q_proj") == "self_attn.q_proj"
    assert reference_type("model.layers.3.mlp.experts.7.w1") == "mlp.experts.7.w1"
    assert reference_type("model.embed_tokens") == "model.embed_tokens" and reference_type("lm_head") == "lm_head"
    assert sort_types(
        [
            "self_attn.q_proj",
            "model.norm",
            "lm_head",
            "mlp.up_proj",
            "input_layernorm",
            "mlp.down_proj",
            "model.embed_tokens",
        ]
    ) == [
        "input_layernorm",
        "lm_head",
        "mlp.down_proj",
        "mlp.up_proj",
        "model.embed_tokens",
        "model.norm",
        "self_attn.q_proj",
    ]


def test_reference_json_has_its_entries_types_order_and_values(model_and_scan):
    model, scan = model_and_scan
    theirs = reference_scan(model)
    ours = json.loads(to_json_text(scan))
    assert list(ours) == list(theirs)
    assert [v["type"] for v in ours.values()] == [v["type"] for v in theirs.values()]
    for name, v in theirs.items():
        assert math.isclose(ours[name]["snr"], v["snr"], rel_tol=1e-5), name
    assert "lm_head" in ours and ours["model.norm"]["snr"] == 1.0


@pytest.mark.parametrize("percent", [25, 50, 75, 100])
def test_compat_yaml_of_our_scan_is_the_reference_tools_bytes(model_and_scan, percent):
    model, scan = model_and_scan
    assert to_yaml(select(scan, top_percent=percent, compat=True)) == reference_yaml(reference_scan(model), percent)


def test_reference_json_file_is_what_the_reference_tool_reads_as_its_own(model_and_scan, tmp_path):
    import dataclasses

    model, scan = model_and_scan
    scan = dataclasses.replace(scan, model="org/my_model")
    path = spectrum_llm.reference.write_json(scan, tmp_path)
    assert path.name == "snr_results_org-my-model.json"
    text = path.read_text()
    assert not text.endswith("\n")
    assert text.startswith('{\n    "model.layers.0.input_layernorm": {\n        "snr": 1.0,\n        "type": ')
    theirs = json.dumps(reference_scan(model), indent=4)
    assert len(text.splitlines()) == len(theirs.splitlines())
    again = select(load_scan(path), top_percent=50, compat=True)
    assert to_yaml(again) == to_yaml(select(scan, top_percent=50, compat=True))


def test_scan_reference_json_flag_names_the_file_after_the_model(llama_dir, tmp_path):
    spectrum_llm.scan(llama_dir, estimator="reference", reference_json=tmp_path, progress=False)
    (f,) = tmp_path.glob("snr_results_*.json")
    assert f.name == file_name(llama_dir.name)


def test_builtin_model_is_named_by_its_hub_id():
    scan = ScanResult(model="builtin:smollm2-135m", estimator="reference", modules=[])
    assert file_name(model_id(scan)) == "snr_results_HuggingFaceTB-SmolLM2-135M-Instruct.json"


FLAT = [
    e
    for e in __import__("spectrum_llm.catalogue", fromlist=["builtin"]).builtin()
    if e.problem is None and e.layout == "reference-flat"
]


@pytest.mark.parametrize("entry", FLAT, ids=[e.name for e in FLAT])
def test_compat_on_every_published_flat_scan_is_the_reference_tools_yaml(entry):
    from spectrum_llm.scan_files import read_scan_text

    data = json.loads(read_scan_text(entry.path))
    scan = load_scan(entry.path)
    for percent in (25, 50):
        assert to_yaml(select(scan, top_percent=percent, compat=True)) == reference_yaml(data, percent)
