"""The built-in catalogue of published scans: every file validated, found by model id like Axolotl, users'
folders first, local checkpoints winning, defective files a clear error."""

from __future__ import annotations

import json

import pytest

from helpers_cli import run_cli
from spectrum_llm import catalogue
from spectrum_llm.catalogue import builtin, entries, find, slug, validate_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.scan_files import load_scan
from spectrum_llm.selection import select

ENTRIES = builtin()
GOOD = [e.name for e in ENTRIES if e.problem is None]
DEFECTIVE = {"deepseek-ai-DeepSeek-V3.1-Base": "empty", "openai-gpt-oss-120b": "no expert"}
LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"


@pytest.fixture(autouse=True)
def _no_user_catalogue(monkeypatch):
    monkeypatch.delenv(catalogue.ENV, raising=False)


def test_every_packaged_file_matches_its_index():
    lines = validate_data()
    assert len(lines) == len(ENTRIES) == 33
    assert sum(e.source == "reference-tool" for e in ENTRIES) == 22
    assert sum(e.source == "axolotl" for e in ENTRIES) == 11
    assert {e.name for e in ENTRIES if e.problem} == set(DEFECTIVE)


def test_attribution_ships_beside_the_data():
    notice = (catalogue.DATA / "NOTICE.md").read_text()
    for needle in (
        "QuixiAI/spectrum",
        "cognitivecomputations/spectrum",
        "axolotl-ai-cloud/axolotl",
        "Apache",
        catalogue.SOURCES["reference-tool"]["commit"],
        catalogue.SOURCES["axolotl"]["commit"],
    ):
        assert needle in notice


@pytest.mark.parametrize("name", GOOD)
def test_every_good_scan_selects_by_model_id(name):
    sel = select(name, top_percent=25)
    assert sel.modules and "published scan" in sel.rule["scan"]
    assert select(name, top_percent=50, compat=True).patterns[:2] == ["^lm_head.weight$", "^model.embed_tokens.weight$"]


@pytest.mark.parametrize("name,problem", DEFECTIVE.items())
def test_every_defective_scan_is_an_error_naming_file_and_problem(name, problem):
    with pytest.raises(SpectrumError, match=problem) as e:
        select(name, top_percent=25)
    assert f"snr_results_{name}.json" in str(e.value)


def test_hub_id_is_slugged_like_axolotl():
    assert slug("meta-llama/Meta-Llama-3.1-8B-Instruct") == "meta-llama-Meta-Llama-3.1-8B-Instruct"
    assert slug("org/some_model") == "org-some-model"
    assert find(LLAMA).file == "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json"


def test_hub_id_selection_equals_selection_from_the_file():
    entry = find(LLAMA)
    sel = select(LLAMA, top_percent=25)
    assert sel.patterns == select(load_scan(entry.path), top_percent=25).patterns
    assert "QuixiAI/spectrum" in sel.rule["scan"]


def _flat(names, type_="mlp.down_proj"):
    return {n: {"snr": float(i + 1), "type": type_} for i, n in enumerate(names)}


def test_users_folder_wins_over_the_packaged_scan(tmp_path):
    mine = _flat([f"model.layers.{i}.mlp.down_proj" for i in range(4)])
    (tmp_path / f"snr_results_{slug(LLAMA)}.json").write_text(json.dumps(mine))
    sel = select(LLAMA, top_percent=50, catalogue=tmp_path)
    assert sel.modules == ["model.layers.3.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    assert str(tmp_path) in sel.rule["scan"]


def test_environment_variable_names_users_folders(tmp_path, monkeypatch):
    mine = _flat([f"model.layers.{i}.mlp.up_proj" for i in range(2)], "mlp.up_proj")
    (tmp_path / "snr_results_me-my-model.json").write_text(json.dumps(mine))
    monkeypatch.setenv(catalogue.ENV, str(tmp_path))
    assert select("me/my_model", top_percent=50).modules == ["model.layers.1.mlp.up_proj"]
    assert [e.name for e in entries()][0] == "me-my-model"


def test_defective_user_scan_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / f"snr_results_{slug(LLAMA)}.json").write_text("\n\n")
    with pytest.raises(SpectrumError, match="empty") as e:
        select(LLAMA, top_percent=25, catalogue=tmp_path)
    assert f"snr_results_{slug(LLAMA)}.json" in str(e.value)


def test_user_scan_without_any_score_is_refused_before_selection(tmp_path):
    unscored = {f"model.layers.{i}.mlp.down_proj": {"snr": None, "type": "mlp.down_proj"} for i in range(3)}
    (tmp_path / f"snr_results_{slug(LLAMA)}.json").write_text(json.dumps(unscored))
    assert "no weight matrix in it has a score" in entries(tmp_path)[0].problem
    with pytest.raises(SpectrumError, match="no weight matrix in it has a score"):
        select(LLAMA, top_percent=50, catalogue=tmp_path)


def test_missing_catalogue_folder_is_an_error(tmp_path):
    with pytest.raises(SpectrumError, match="does not exist"):
        select(LLAMA, catalogue=tmp_path / "nope")


def test_local_checkpoint_wins_over_the_catalogue(tmp_path, monkeypatch, llama_dir):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    shutil.copytree(llama_dir, tmp_path / "TinyLlama" / "TinyLlama-v1.1")
    assert find("TinyLlama/TinyLlama-v1.1") is not None
    sel = select("TinyLlama/TinyLlama-v1.1", top_percent=50)
    assert "a scan of the checkpoint" in sel.rule["scan"]
    assert all(m.startswith("model.layers.") for m in sel.modules) and len(sel.modules) == 7
    assert list((tmp_path / "cache" / "scans").glob("*.json"))


def test_unknown_model_suggests_near_names():
    with pytest.raises(SpectrumError, match="did you mean meta-llama-Llama-3.2-1B"):
        select("meta-llama/llama-3.2-1B")


def test_a_missing_scan_file_keeps_its_message(tmp_path):
    with pytest.raises(SpectrumError, match="does not exist. Run `spectrum scan"):
        select(tmp_path / "scan.json")


def test_cli_select_by_model_id_says_which_scan(tmp_path, capsys):
    out = tmp_path / "sel.yaml"
    assert run_cli(["select", LLAMA, "--top-percent", "25", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "published scan" in err and "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json" in err
    assert out.read_text().startswith("unfrozen_parameters:\n")


def test_cli_defective_scan_exits_2(tmp_path, capsys):
    assert run_cli(["select", "openai/gpt-oss-120b", "-o", str(tmp_path / "s.yaml")]) == 2
    assert "snr_results_openai-gpt-oss-120b.json" in capsys.readouterr().err
    assert not (tmp_path / "s.yaml").exists()


def test_cli_catalogue_lists_models_sources_and_defects(tmp_path, capsys):
    (tmp_path / "snr_results_me-mine.json").write_text(json.dumps(_flat(["model.layers.0.mlp.down_proj"])))
    assert run_cli(["catalogue", "--catalogue", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for needle in (
        "me-mine",
        "meta-llama-Meta-Llama-3.1-8B-Instruct",
        "QuixiAI/spectrum",
        "axolotl",
        "defective",
        "reference",
    ):
        assert needle in out


def test_validation_catches_a_changed_file_or_index(tmp_path, monkeypatch):
    import gzip
    import shutil

    data = tmp_path / "data"
    shutil.copytree(catalogue.DATA, data)
    monkeypatch.setattr(catalogue, "DATA", data)
    validate_data()
    target = data / "axolotl" / "snr_results_meta-llama-Llama-3.2-1B.json.gz"
    raw = json.loads(gzip.decompress(target.read_bytes()))
    raw.pop(next(iter(raw)))
    target.write_bytes(gzip.compress(json.dumps(raw).encode()))
    with pytest.raises(SpectrumError, match="Llama-3.2-1B.json.gz: bytes differ") as e:
        validate_data()
    assert "modules is 146, index.json says 147" in str(e.value)
