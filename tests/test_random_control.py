"""The random control: `select --random` draws the rule's (or --match's) per-type counts, or with --match-depth
the same counts per type and depth quarter; one draw per seed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from helpers_selection import LLAMA_TYPES, synthetic_scan
from spectrum_llm.cli import main
from spectrum_llm.depth import depth_bin
from spectrum_llm.errors import SpectrumError
from spectrum_llm.random_control import draw_matched
from spectrum_llm.selection import load_selection, select


def _scan(layers: int = 12):
    return synthetic_scan({t: [float((i * (j + 3)) % 11) for i in range(layers)] for j, t in enumerate(LLAMA_TYPES)})


def _types(sel) -> Counter:
    return Counter(".".join(m.split(".")[3:]) for m in sel.modules)


def _depth(sel, layers: int = 12) -> Counter:
    return Counter((".".join(m.split(".")[3:]), depth_bin(int(m.split(".")[2]), layers)) for m in sel.modules)


def test_random_draw_keeps_the_rules_per_type_counts():
    scan = _scan()
    assert _types(select(scan, top_percent=25, random=True, seed=3)) == _types(select(scan, top_percent=25))


def test_match_depth_keeps_the_counts_per_type_and_depth_quarter():
    scan = _scan()
    ref = select(scan, top_percent=50)
    sel = select(scan, top_percent=50, random=True, seed=3, match_depth=True)
    assert _depth(sel) == _depth(ref) and sel.trainable_params == ref.trainable_params
    assert sel.modules != ref.modules


def test_the_draw_is_the_same_for_a_seed_and_differs_across_seeds():
    scan = _scan()
    draws = [tuple(sorted(select(scan, top_percent=25, random=True, seed=s).modules)) for s in range(4)]
    assert draws[0] == tuple(sorted(select(scan, top_percent=25, random=True, seed=0).modules))
    assert len(set(draws)) == 4


def test_draw_matched_is_pinned_across_python_versions():
    pools = {"a": [f"a{i}" for i in range(10)], "b": [f"b{i}" for i in range(6)]}
    assert sorted(draw_matched(pools, {"a": 3, "b": 2}, seed=7)) == ["a2", "a5", "a6", "b0", "b5"]


def test_the_selection_records_the_draw_and_what_it_matched(tmp_path):
    sel = select(_scan(), top_percent=25, random=True, seed=5, match_depth=True)
    sel_back = load_selection(_save(sel, tmp_path / "r.json"))
    assert sel_back.rule["rule"] == "random" and sel_back.rule["seed"] == 5 and sel_back.rule["match_depth"] is True
    assert sel_back.rule["matched"] == {"rule": "per-type", "top_percent": 25}


def _save(sel, path):
    path.write_text(json.dumps(sel.to_json()))
    return path


def test_match_draws_another_selections_counts(tmp_path):
    scan = _scan()
    ref = select(scan, rule="top-layers-per-type", top_percent=25)
    path = _save(ref, tmp_path / "ref.json")
    sel = select(scan, random=True, seed=1, match=path, match_depth=True)
    assert _depth(sel) == _depth(ref) and sel.rule["matched"]["selection"] == str(path)


def test_old_selection_files_without_the_new_fields_still_load(tmp_path):
    data = select(_scan(), top_percent=25).to_json()
    data["rule"] = {"rule": "per-type", "top_percent": 25}
    assert load_selection(_save_raw(data, tmp_path / "old.json")).rule["rule"] == "per-type"


def _save_raw(data, path):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"random": True, "compat": True}, "--compat writes exactly"),
        ({"match_depth": True}, "add --random"),
    ],
)
def test_bad_random_options_are_one_error_line(options, message):
    with pytest.raises(SpectrumError, match=message) as e:
        select(_scan(), **options)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("match_depth", [False, True])
def test_a_reference_that_the_window_cannot_hold_is_refused(tmp_path, match_depth):
    path = _save(select(_scan(), top_percent=50), tmp_path / "ref.json")  # half of each type, all depths
    with pytest.raises(SpectrumError, match="Cannot draw"):
        select(_scan(), random=True, match=path, match_depth=match_depth, min_layer=10 if not match_depth else 6)


def test_matching_a_selection_of_another_model_is_refused(tmp_path):
    other = synthetic_scan({"mlp.fc1": [1.0] * 4})
    path = _save(select(other, top_percent=50), tmp_path / "other.json")
    with pytest.raises(SpectrumError, match="a selection of another model"):
        select(_scan(), random=True, match=path)


def test_cli_random_prints_the_draw_and_the_embeddings_cost(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    path = _scan().save(tmp_path / "scan.json")
    with pytest.raises(SystemExit) as e:
        main(["select", str(path), "-p", "25", "--random", "--seed", "3", "-o", str(tmp_path / "r.json")])
    assert e.value.code in (0, None)
    err = capsys.readouterr()
    out = err.out + err.err
    assert "by a random draw (seed 3) with as many modules per type as the per-type rule (Spectrum-25)" in out
    assert "embeddings/lm_head: trained (200 parameters" in out and "--embeddings freeze leaves them out" in out


def test_matching_a_selection_with_other_shapes_is_refused(tmp_path):
    ref = select(_scan(), top_percent=25)
    ref.shapes = {m: [4, 4] for m in ref.modules}
    with pytest.raises(SpectrumError, match="a selection of another model"):
        select(_scan(), random=True, match=_save(ref, tmp_path / "ref.json"))


def test_depth_bins_set_how_finely_depth_is_matched():
    scan = _scan()
    ref = select(scan, top_percent=50)
    sel = select(scan, top_percent=50, random=True, seed=2, match_depth=True, depth_bins=6)  # two layers each
    six = Counter((".".join(m.split(".")[3:]), int(m.split(".")[2]) // 2) for m in sel.modules)
    assert six == Counter((".".join(m.split(".")[3:]), int(m.split(".")[2]) // 2) for m in ref.modules)
    assert sel.modules != ref.modules and sel.rule["depth_bins"] == 6
    with pytest.raises(SpectrumError, match="--depth-bins 13 must be from 1"):
        select(scan, random=True, match_depth=True, depth_bins=13)
