import pytest

from helpers_report import assert_sane_png, synthetic_scan
from spectrum_llm.cli import main
from spectrum_llm.comparison import compare
from spectrum_llm.errors import SpectrumError
from spectrum_llm.results import ModuleScore, ScanResult

BASE = "snr_results_meta-llama-Meta-Llama-3.1-8B.json"
INSTRUCT = "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json"
LLAMA3 = "snr_results_meta-llama-Meta-Llama-3-8B.json"


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(map(str, argv)))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------------------------- show


def test_show_cli_prints_sorted_table(reference_dir, capsys):
    code, out, _ = _run(capsys, "show", reference_dir / INSTRUCT, "--top", "3", "--type", "self_attn.v_proj")
    assert code == 0
    rows = [ln for ln in out.splitlines() if "model.layers." in ln]
    assert len(rows) == 3 and all("v_proj" in r for r in rows)
    scores = [float(r.split()[-1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_show_cli_missing_file_is_a_one_line_error(tmp_path, capsys):
    code, _, err = _run(capsys, "show", tmp_path / "missing.json")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ compare


def test_compare_base_and_instruct(reference_dir, tmp_path):
    result = compare(reference_dir / BASE, reference_dir / INSTRUCT, png=tmp_path / "diff.png")
    assert_sane_png(result.png)
    assert len(result.modules) == 291
    changes = [abs(d.relative) for d in result.modules if d.relative is not None]
    assert changes == sorted(changes, reverse=True)
    assert result.modules[0].name == "model.layers.3.self_attn.v_proj"
    assert result.grid.values.shape == (32, 7)


def test_compare_absolute_sorts_by_difference():
    a = synthetic_scan()
    b = synthetic_scan()
    b.modules[1].snr += 5.0
    b.modules[20].snr += 0.5
    result = compare(a, b, relative=False)
    assert [d.name for d in result.top(2)] == [a.modules[1].name, a.modules[20].name]
    assert result.top(1)[0].diff == pytest.approx(5.0)


def test_compare_refuses_different_module_sets(reference_dir):
    with pytest.raises(SpectrumError, match="different modules .*67 only in B"):
        compare(reference_dir / LLAMA3, reference_dir / INSTRUCT)


def test_compare_refuses_different_shapes():
    a = synthetic_scan()
    b = synthetic_scan()
    b.modules[1].shape = [32, 16]
    with pytest.raises(SpectrumError, match=r"shape \[16, 16\] in A but \[32, 16\] in B"):
        compare(a, b)


def test_compare_refuses_different_estimators():
    b = synthetic_scan()
    b.estimator = "reference"
    with pytest.raises(SpectrumError, match="--estimator mp"):
        compare(synthetic_scan(), b)


def test_compare_masks_inf_differences():
    a = synthetic_scan()
    result = compare(a, synthetic_scan())
    inf = next(d for d in result.modules if d.name == "model.layers.0.self_attn.k_proj")
    assert inf.diff is None and result.modules[-1].diff is None
    assert result.grid.masked().sum() == 2


def test_compare_cli_table_and_png(reference_dir, tmp_path, capsys):
    code, out, err = _run(
        capsys, "compare", reference_dir / BASE, reference_dir / INSTRUCT, "-n", "4", "-o", tmp_path / "d.png"
    )
    assert code == 0 and "model.layers.3.self_attn.v_proj" in out and "+2.34%" in out
    assert_sane_png(tmp_path / "d.png")


def test_compare_cli_mismatch_exits_2(reference_dir, capsys):
    code, _, err = _run(capsys, "compare", reference_dir / LLAMA3, reference_dir / INSTRUCT)
    assert code == 2 and "different modules" in err


# ------------------------------------------------------------------------------------------- report


def test_report_cli_writes_html_and_png(reference_dir, tmp_path, capsys):
    stem = INSTRUCT.removesuffix(".json")
    code, _, err = _run(
        capsys,
        "report",
        reference_dir / INSTRUCT,
        "--selection",
        reference_dir / f"{stem}_unfrozenparameters_50percent.yaml",
        "-o",
        tmp_path / "r.html",
        "--png",
        tmp_path / "h.png",
    )
    assert code == 0, err
    assert_sane_png(tmp_path / "h.png")
    html = (tmp_path / "r.html").read_text()
    assert "Selected by type" in html
    # reference scans record no shapes: the one count is in modules, and the YAML does not record the rule
    assert "Trains 146 of 291 modules" in html
    assert "112 ranked modules (the red boxes) and 34 more modules (lm_head, model.embed_tokens" in html
    assert "The rule is not recorded in" in html


def test_report_cli_module_without_model_exits_2(tmp_path, capsys):
    scan = ScanResult(
        "m",
        "mp",
        [ModuleScore(name="model.layers.0.mlp.down_proj", type="mlp.down_proj", layer=0, shape=[4, 4], snr=1.0)],
    )
    path = scan.save(tmp_path / "scan.json")
    code, _, err = _run(capsys, "report", path, "--module", "model.layers.0.mlp.down_proj", "-o", tmp_path / "r.html")
    assert code == 2 and "--model" in err
    assert not (tmp_path / "r.html").exists()
