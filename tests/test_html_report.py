import base64
import re

import pytest

import spectrum_llm
from helpers_report import assert_sane_png, synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.html_report import heatmap_png, module_spectrum, report
from spectrum_llm.results import ModuleScore, ScanResult
from spectrum_llm.scan_files import load_scan

LLAMA_31 = "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct"
REFERENCE_FILES = [
    LLAMA_31,
    "snr_results_deepseek-ai-DeepSeek-V2",
    "snr_results_Qwen-Qwen2-MoE-57B-A14B",
    "snr_results_mistralai-Mixtral-8x22B-v0.1",
    "snr_results_microsoft-Phi-3-mini-4k-instruct",
]


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_heatmap_png_of_synthetic_scan(tmp_path):
    files = report(synthetic_scan(), output=None, png=tmp_path / "heat.png")
    assert files.html is None
    assert_sane_png(files.png)


def test_html_is_self_contained_and_names_every_type(tmp_path):
    scan = synthetic_scan()
    sel = ["model.layers.2.self_attn.q_proj", "model.layers.0.mlp.experts.3.down_proj"]
    files = report(scan, selection=sel, output=tmp_path / "r.html")
    html = files.html.read_text()
    for t in scan.types():
        assert t in html, t
    assert "mp" in html and "synthetic-moe" in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must not load anything from the network"
    images = _images(html)
    assert len(images) == 2  # heatmap and trainable-by-type
    for img in images:
        assert_sane_png(img)
    assert (files.grid.selected > 0).sum() == 2


def test_legend_says_what_grey_and_red_mean(tmp_path):
    files = report(synthetic_scan(), selection=["model.layers.1.self_attn.q_proj"], output=tmp_path / "r.html")
    html = files.html.read_text()
    assert "2 cells without a finite score" in html
    assert "median over up to 4 experts" in html and "red box: a cell with a selected expert" in html


def test_selection_of_another_model_is_refused(tmp_path):
    with pytest.raises(SpectrumError, match="None of the 1 selected modules"):
        report(synthetic_scan(), selection=["model.layers.40.mlp.down_proj"], output=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_non_png_heatmap_path_is_refused_before_writing(tmp_path):
    with pytest.raises(SpectrumError, match=r"ending in \.png"):
        report(synthetic_scan(), output=tmp_path / "r.html", png=tmp_path / "heat.jpg")
    assert list(tmp_path.iterdir()) == []


def test_module_without_model_is_refused():
    with pytest.raises(SpectrumError, match="--model"):
        report(synthetic_scan(), output=None, module="model.layers.0.self_attn.q_proj")


def test_scan_without_layered_linear_modules_is_refused():
    scan = ScanResult(
        "norms",
        "mp",
        [ModuleScore(name="model.norm", type="norm", layer=None, shape=[8], snr=None, kind="norm", skipped="1-D")],
    )
    with pytest.raises(SpectrumError, match="nothing to draw"):
        heatmap_png(scan)


def test_report_of_a_tiny_model_scan_with_its_spectrum(llama_dir, tmp_path):
    scan = spectrum_llm.scan(llama_dir, estimator="mp")
    name = "model.layers.1.mlp.down_proj"
    files = report(
        scan, selection=[name], output=tmp_path / "r.html", png=tmp_path / "h.png", module=name, model=llama_dir
    )
    html = files.html.read_text()
    assert_sane_png(files.png)
    assert len(_images(html)) == 3  # heatmap, spectrum, trainable by type
    assert f"spectrum of {name}" in html and "parameters" in html


def test_spectrum_of_a_module_matches_its_scan_score(llama_dir):
    scan = spectrum_llm.scan(llama_dir, estimator="mp")
    m = next(x for x in scan.modules if x.name == "model.layers.0.self_attn.q_proj")
    sp = module_spectrum(scan, m.name, llama_dir)
    assert sp.snr == pytest.approx(m.snr, rel=1e-6)
    assert sp.threshold == pytest.approx(sp.edge) and (sp.values > sp.edge).sum() == m.stats["signal_rank"]


def test_unknown_module_suggests_close_names(llama_dir):
    scan = spectrum_llm.scan(llama_dir, estimator="mp")
    with pytest.raises(SpectrumError, match="Did you mean model.layers.0.self_attn.q_proj"):
        report(scan, output=None, module="model.layers.0.self_attn.q_prj", model=llama_dir)


@pytest.mark.parametrize("stem", REFERENCE_FILES)
def test_reference_scans_render(reference_dir, tmp_path, stem):
    scan = load_scan(reference_dir / f"{stem}.json")
    yaml = reference_dir / f"{stem}_unfrozenparameters_50percent.yaml"
    files = report(scan, selection=yaml if yaml.exists() else None, output=tmp_path / "r.html", png=tmp_path / "h.png")
    assert_sane_png(files.png)
    html = files.html.read_text()
    for t in scan.types():
        assert t in html, t
    assert "reference" in html
    assert len(files.grid.types) <= 16  # MoE experts folded into one column per projection


def test_reference_selection_marks_half_of_each_type(reference_dir):
    scan = load_scan(reference_dir / f"{LLAMA_31}.json")
    files = report(scan, selection=reference_dir / f"{LLAMA_31}_unfrozenparameters_50percent.yaml", output=None)
    assert (files.grid.selected > 0).sum(axis=0).tolist() == [16] * 7
