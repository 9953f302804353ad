"""Output formats, the reference tool's bytes, and the `spectrum select` command."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers_cli import run_cli
from helpers_selection import synthetic_scan
from spectrum_llm.cli import main
from spectrum_llm.errors import SpectrumError
from spectrum_llm.exports import to_yaml, write_selection
from spectrum_llm.selection import select

PUBLISHED = ["meta-llama-Meta-Llama-3.1-8B-Instruct", "akjindal53244-Llama-3.1-Storm-8B"]


@pytest.mark.parametrize("model", PUBLISHED)
def test_compat_yaml_is_byte_identical_to_the_published_file(reference_dir, model):
    sel = select(reference_dir / f"snr_results_{model}.json", top_percent=50, compat=True)
    expected = (reference_dir / f"snr_results_{model}_unfrozenparameters_50percent.yaml").read_bytes()
    assert to_yaml(sel).encode() == expected


def test_cli_compat_writes_the_published_bytes(reference_dir, tmp_path):
    model = PUBLISHED[0]
    out = tmp_path / "sel.yaml"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "select",
                str(reference_dir / f"snr_results_{model}.json"),
                "--top-percent",
                "50",
                "--compat",
                "-o",
                str(out),
            ]
        )
    assert e.value.code in (0, None)
    assert out.read_bytes() == (reference_dir / f"snr_results_{model}_unfrozenparameters_50percent.yaml").read_bytes()


def test_yaml_is_an_axolotl_unfrozen_parameters_list(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0], "self_attn.q_proj": [3.0, 1.0]}), top_percent=50)
    write_selection(sel, tmp_path / "s.yaml")
    text = (tmp_path / "s.yaml").read_text()
    assert yaml.safe_load(text) == {"unfrozen_parameters": sel.patterns}
    assert "# mlp.down_proj layers\n" in text


def test_txt_is_one_pattern_per_line(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=100)
    write_selection(sel, tmp_path / "s.txt")
    assert (tmp_path / "s.txt").read_text().splitlines() == sel.patterns


def test_json_holds_modules_types_scores_counts_and_rule(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=50)
    write_selection(sel, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["modules"] == ["model.layers.1.mlp.down_proj"]
    assert data["types"]["mlp.down_proj"]["kept"] == 1
    assert data["scores"]["model.layers.0.mlp.down_proj"] == 1.0
    assert data["trainable_params"] == 300 and data["total_params"] == 400
    assert data["rule"]["rule"] == "per-type" and data["rule"]["top_percent"] == 50


def test_dash_prints_yaml(capsys):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=50)
    write_selection(sel, "-")
    assert capsys.readouterr().out == to_yaml(sel)


def test_unknown_extension_writes_nothing(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=50)
    with pytest.raises(SpectrumError, match=".yaml"):
        write_selection(sel, tmp_path / "s.csv")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args", [["--top-percent", "0"], ["--top-percent", "101"], ["--rule", "global"], ["--budget", "lots"]]
)
def test_cli_bad_input_exits_2_and_leaves_no_file(reference_dir, tmp_path, capsys, args):
    out = tmp_path / "sel.yaml"
    code = run_cli(["select", str(reference_dir / "snr_results_Qwen-Qwen2-7B.json"), *args, "-o", str(out)])
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_keeps_an_existing_output_when_it_fails(tmp_path, capsys):
    out = tmp_path / "sel.yaml"
    out.write_text("old\n")
    (tmp_path / "scan.json").write_text("{}")
    assert run_cli(["select", str(tmp_path / "scan.json"), "-o", str(out)]) == 2
    assert out.read_text() == "old\n"


def test_cli_model_prints_the_freeze_summary(llama_dir, tmp_path, capsys):
    import spectrum_llm

    spectrum_llm.scan(llama_dir, output=tmp_path / "scan.json", progress=False)
    code = run_cli(
        ["select", str(tmp_path / "scan.json"), "-p", "50", "-o", str(tmp_path / "s.json"), "--model", str(llama_dir)]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "trainable" in err and "self_attn.q_proj" in err
