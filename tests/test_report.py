import base64
import math
import re

import numpy as np
import pytest

import spectrum_llm
from spectrum_llm.errors import SpectrumError
from spectrum_llm.reporting import (colour_norm, column_type, heatmap_png, mp_density, report, score_grid,
                                 trainable_by_type)
from spectrum_llm.results import ModuleScore, ScanResult, load_scan

from helpers_report import assert_sane_png, synthetic_scan

LLAMA_31 = "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct"
REFERENCE_FILES = [LLAMA_31, "snr_results_deepseek-ai-DeepSeek-V2", "snr_results_Qwen-Qwen2-MoE-57B-A14B",
                   "snr_results_mistralai-Mixtral-8x22B-v0.1", "snr_results_microsoft-Phi-3-mini-4k-instruct"]


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_column_type_folds_reference_expert_index_and_keeps_grouped_types():
    ref = ModuleScore(name="model.layers.3.mlp.experts.17.down_proj", type="mlp.experts.17.down_proj", layer=3,
                      shape=[], snr=1.0)
    ours = ModuleScore(name="model.layers.3.mlp.experts.17.down_proj", type="mlp.experts.down_proj", layer=3, shape=[],
                       snr=1.0, expert=17)
    mixtral = ModuleScore(name="x", type="block_sparse_moe.experts.0.w1", layer=0, shape=[], snr=1.0)
    assert column_type(ref) == column_type(ours) == "mlp.experts.down_proj"
    assert column_type(mixtral) == "block_sparse_moe.experts.w1"


def test_grid_takes_the_median_over_experts_and_masks_inf_and_skipped():
    grid = score_grid(synthetic_scan())
    assert grid.layers == [0, 1, 2]
    assert grid.types == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.experts.down_proj"]
    experts = grid.types.index("mlp.experts.down_proj")
    assert grid.values[0, experts] == 12.0  # experts 0, 2, 3 scored 10, 12, 13; expert 1 skipped
    assert list(grid.count[:, experts]) == [3, 4, 4]
    assert np.isinf(grid.values[0, 1]) and np.isnan(grid.values[1, 3])
    assert grid.masked().sum() == 2
    assert [m.name for m in grid.outside] == ["model.embed_tokens", "lm_head"]


def test_colour_scale_ignores_non_finite_and_goes_log_for_wide_ranges():
    norm, scale = colour_norm(np.array([0.05, 1.0, 30.0, np.inf, np.nan, 2000.0]))
    assert scale == "log scale" and 0.05 <= norm.vmin and norm.vmax <= 2000.0
    norm, scale = colour_norm(np.array([0.0, 0.5, 1.0]))
    assert scale == "linear scale" and math.isfinite(norm.vmax)
    norm, scale = colour_norm(np.array([0.0, 0.0, 0.1, 1.0, 5.0, 40.0]))
    assert scale.startswith("log scale, linear below") and norm.vmin == 0.0 and np.isfinite(norm(np.array([0.0]))).all()
    norm, _ = colour_norm(np.array([np.inf, np.nan]))
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)


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


def test_trainable_by_type_counts_parameters_and_selected_norm_types():
    scan = synthetic_scan()
    rows, unit = trainable_by_type(scan, ["model.layers.0.self_attn.q_proj", "model.layers.1.input_layernorm"])
    by_type = {t: (a, b) for t, a, b in rows}
    assert unit == "parameters"
    assert by_type["self_attn.q_proj"] == (256, 3 * 256)
    assert by_type["input_layernorm"] == (16, 3 * 16)
    assert by_type["mlp.experts.down_proj"] == (0, 12 * 512)


def test_trainable_by_type_counts_a_fused_projection_once():
    whole = ModuleScore(name="model.layers.0.self_attn.qkv_proj", type="self_attn.qkv_proj", layer=0, shape=[48, 16],
                        snr=1.0, numel=768)
    parts = [ModuleScore(name=f"model.layers.0.self_attn.qkv_proj.{p}", type=f"self_attn.qkv_proj.{p}", layer=0,
                         shape=[16, 16], snr=1.0, part=p, rows=[16 * i, 16 * (i + 1)],
                         numel=256) for i, p in enumerate("qkv")]
    scan = ScanResult("fused", "mp", [whole, *parts])
    rows, _ = trainable_by_type(scan, ["model.layers.0.self_attn.qkv_proj.q"])
    assert sum(r[2] for r in rows) == 768 and sum(r[1] for r in rows) == 256
    rows, _ = trainable_by_type(scan, ["model.layers.0.self_attn.qkv_proj"])
    assert [(t, a, b) for t, a, b in rows] == [("self_attn.qkv_proj", 768, 768)]


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
    scan = ScanResult("norms", "mp", [ModuleScore(name="model.norm", type="norm", layer=None, shape=[8], snr=None,
                                                  kind="norm", skipped="1-D")])
    with pytest.raises(SpectrumError, match="nothing to draw"):
        heatmap_png(scan)


def test_mp_density_is_a_density():
    sigma, m, n = 0.02, 64, 256
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    x = np.linspace(1e-6, edge * 1.05, 200001)
    area = float(np.sum(mp_density(x, sigma, m, n)) * (x[1] - x[0]))
    assert area == pytest.approx(1.0, abs=2e-3)
    assert mp_density(np.array([edge * 1.01]), sigma, m, n)[0] == 0.0


def test_report_of_a_tiny_model_scan_with_its_spectrum(llama_dir, tmp_path):
    scan = spectrum_llm.scan(llama_dir, estimator="mp")
    name = "model.layers.1.mlp.down_proj"
    files = report(scan, selection=[name], output=tmp_path / "r.html", png=tmp_path / "h.png", module=name,
                   model=llama_dir)
    html = files.html.read_text()
    assert_sane_png(files.png)
    assert len(_images(html)) == 3  # heatmap, spectrum, trainable by type
    assert f"spectrum of {name}" in html and "parameters" in html


def test_spectrum_of_a_module_matches_its_scan_score(llama_dir):
    from spectrum_llm.reporting import module_spectrum

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
    files = report(scan, selection=yaml if yaml.exists() else None, output=tmp_path / "r.html",
                   png=tmp_path / "h.png")
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


def test_spectrum_of_an_expert_and_of_a_fused_part_is_cut_from_its_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    from spectrum_llm.reporting import module_spectrum

    torch.manual_seed(0)
    experts, qkv = torch.randn(3, 16, 24), torch.randn(48, 16)
    save_file({"model.layers.0.mlp.experts.down_proj": experts, "model.layers.0.self_attn.qkv_proj.weight": qkv},
              tmp_path / "model.safetensors")
    mods = [ModuleScore(name="model.layers.0.mlp.experts.1.down_proj", type="mlp.experts.down_proj", layer=0,
                        shape=[16, 24], snr=1.0, param="model.layers.0.mlp.experts.down_proj", expert=1, rows=[1, 2]),
            ModuleScore(name="model.layers.0.self_attn.qkv_proj.k", type="self_attn.qkv_proj.k", layer=0,
                        shape=[16, 16], snr=1.0, param="model.layers.0.self_attn.qkv_proj.weight", part="k",
                        rows=[16, 32])]
    scan = ScanResult("fused", "mp", mods)
    sp = module_spectrum(scan, mods[0].name, tmp_path)
    assert sp.shape == (16, 24)
    np.testing.assert_allclose(sp.values, torch.linalg.svdvals(experts[1].double()).numpy(), rtol=1e-6)
    sp = module_spectrum(scan, mods[1].name, tmp_path)
    np.testing.assert_allclose(sp.values, torch.linalg.svdvals(qkv[16:32].double()).numpy(), rtol=1e-6)
