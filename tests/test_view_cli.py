"""report, show and compare take catalogue model ids; what they say when given something else; --version;
show's heading counts the shown type; report warns about selection patterns that match nothing; no library
FutureWarning reaches the user."""

import warnings

import spectrum_llm
from helpers_cli import run_cli

BASE, INSTRUCT = "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"


def test_version(capsys):
    assert run_cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"spectrum-llm {spectrum_llm.__version__}"


def test_show_takes_a_catalogue_id_and_counts_the_shown_type(capsys):
    assert run_cli(["show", BASE, "--type", "self_attn.v_proj", "-n", "5"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "5 shown of 16 self_attn.v_proj modules" in out


def test_compare_takes_catalogue_ids(tmp_path, capsys):
    assert run_cli(["compare", BASE, INSTRUCT, "-n", "3", "-o", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").is_file()
    assert "largest relative changes" in capsys.readouterr().out


def test_report_takes_a_catalogue_id(tmp_path):
    assert run_cli(["report", BASE, "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file()


def test_report_of_a_hub_id_without_scan_says_how_to_scan_it(tmp_path, capsys):
    for cmd in (
        ["report", "HuggingFaceTB/SmolLM2-135M", "-o", str(tmp_path / "r.html")],
        ["show", "HuggingFaceTB/SmolLM2-135M"],
    ):
        assert run_cli(cmd) == 2
        err = capsys.readouterr().err
        assert "spectrum scan HuggingFaceTB/SmolLM2-135M -o scan.json" in " ".join(err.split())
        assert "-o HuggingFaceTB/SmolLM2-135M" not in err
        assert "spectrum catalogue" in err


def test_report_warns_about_patterns_that_match_nothing(tmp_path, capsys):
    sel = tmp_path / "sel.txt"
    sel.write_text("model.layers.0.self_attn.q_proj\nmodel.layers.99.mlp.up_proj\nfoo\\.bar\n")
    assert run_cli(["report", BASE, "--selection", str(sel), "-o", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if "match nothing" in x]
    assert len(lines) == 1 and "model.layers.99.mlp.up_proj" in lines[0] and "foo\\.bar" in lines[0]


def test_library_future_warnings_are_silenced(tmp_path, llama_dir):
    sel = tmp_path / "sel.txt"
    sel.write_text("model.layers.0.self_attn.q_proj\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert run_cli(["check", str(sel), "--model", str(llama_dir)]) == 0
    assert not [w for w in seen if issubclass(w.category, FutureWarning)]
