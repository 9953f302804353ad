import math

import pytest

from helpers_report import synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.scan_files import load_scan
from spectrum_llm.tables import format_score, top_modules


def test_format_score_spells_out_infinity_and_missing():
    assert [format_score(x) for x in (12.345678, math.inf, -math.inf, None, math.nan)] == [
        "12.35",
        "+inf",
        "-inf",
        "–",
        "–",
    ]


def test_top_modules_sorted_high_to_low_inf_first_skipped_last():
    mods = top_modules(synthetic_scan())
    assert mods[0].name == "model.layers.0.self_attn.k_proj" and math.isinf(mods[0].snr)
    scores = [m.snr for m in mods if m.ranked]
    assert scores == sorted(scores, reverse=True)
    assert [m.ranked for m in mods[-2:]] == [False, False]
    assert all(m.kind == "linear" for m in mods)


def test_top_and_type_filter():
    mods = top_modules(synthetic_scan(), top=2, type="mlp.experts.down_proj")
    assert [m.name for m in mods] == [
        "model.layers.2.mlp.experts.3.down_proj",
        "model.layers.2.mlp.experts.2.down_proj",
    ]


def test_type_filter_matches_reference_per_expert_types(reference_dir):
    scan = load_scan(reference_dir / "snr_results_Qwen-Qwen2-MoE-57B-A14B.json")
    mods = top_modules(scan, type="mlp.experts.down_proj")
    assert len({m.type for m in mods}) == 64 and all(".experts." in m.name for m in mods)


def test_unknown_type_and_bad_top_are_refused():
    with pytest.raises(SpectrumError, match="No module of type 'mlp.nope'"):
        top_modules(synthetic_scan(), type="mlp.nope")
    with pytest.raises(SpectrumError, match="positive"):
        top_modules(synthetic_scan(), top=0)
