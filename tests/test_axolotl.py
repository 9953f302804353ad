"""Axolotl's pattern language and files: build, write, read and parse agree with each other and with Axolotl."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from helpers_selection import axolotl_unfrozen, column_part
from spectrum_llm.axolotl import (
    AxolotlPattern,
    check_patterns,
    from_txt,
    from_yaml,
    has_rows,
    module_pattern,
    pattern_module,
    read,
    tensor_pattern,
    to_txt,
    to_yaml,
)
from spectrum_llm.errors import SpectrumError
from spectrum_llm.results import ModuleScore

part = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
module_names = st.builds(
    lambda pre, layer, leaf: f"{pre}.layers.{layer}.{leaf}",
    part,
    st.integers(0, 99),
    st.lists(part, min_size=1, max_size=3).map(".".join),
)


def _whole(name: str) -> ModuleScore:
    return ModuleScore(
        name=name, type="t", layer=0, shape=[8, 8], snr=1.0, kind="linear", param=name + ".weight", numel=64
    )


def _rows(name: str, a: int, b: int) -> ModuleScore:
    return ModuleScore(
        name=f"{name}.q",
        type="t.q",
        layer=0,
        shape=[b - a, 8],
        snr=1.0,
        kind="linear",
        param=name + ".weight",
        part="q",
        rows=[a, b],
    )


@given(module_names)
def test_a_whole_module_pattern_trains_its_weight_and_bias_and_names_the_module(name):
    pat = module_pattern(_whole(name))
    assert pattern_module(pat) == name
    p = AxolotlPattern(pat)
    assert p.match(name + ".weight") and p.match(name + ".bias") and p.range is None
    assert not p.match(name + "x.weight") and not p.match("x" + name + ".weight")
    assert not p.match(name.replace(".layers.", ".layersX"))  # dots are literal


@given(module_names, st.integers(0, 1000), st.integers(1, 1000))
def test_a_row_range_pattern_trains_those_rows_of_the_shared_tensor(name, a, n):
    pat = module_pattern(_rows(name, a, a + n))
    assert pat == f"^{name}.weight$[{a}:{a + n}]" and has_rows(pat)
    assert pattern_module(pat) == name
    p = AxolotlPattern(pat)
    assert p.range == (a, a + n) and p.match(name + ".weight") and not p.match(name + ".bias")


def test_a_tensor_of_its_own_name_gets_an_exact_pattern():
    m = ModuleScore(name="model.norm", type="norm", layer=None, shape=[8], snr=None, kind="norm", param="model.norm")
    assert module_pattern(m) == tensor_pattern("model.norm") == "^model.norm$"
    fused = ModuleScore(
        name="model.layers.0.mlp.experts.3.down_proj",
        type="mlp.experts.down_proj",
        layer=0,
        shape=[8, 8],
        snr=1.0,
        kind="linear",
        param="model.layers.0.mlp.experts.down_proj",
        expert=3,
    )
    assert module_pattern(fused) == "^model.layers.0.mlp.experts.down_proj$"


def test_column_ranges_cannot_be_written():
    with pytest.raises(SpectrumError, match="dimension 0"):
        module_pattern(column_part())


def test_pattern_module_reads_plain_patterns_only():
    assert pattern_module("^model.layers.1.mlp.down_proj.(weight|bias)$") == "model.layers.1.mlp.down_proj"
    assert pattern_module("model.layers.0.mlp.experts.3.w1") == "model.layers.0.mlp.experts.3.w1"
    assert pattern_module("^lm_head.weight$") == "lm_head"
    assert pattern_module("layers.2[0-9]+.mlp") is None


@pytest.mark.parametrize(
    "pattern,rng",
    [("^w$[3]", (3, 4)), ("^w$[:8]", (0, 8)), ("^w$[4:]", (4, None)), ("^w$[2:5]", (2, 5)), ("^w$", None)],
)
def test_row_ranges_parse_as_axolotl_reads_them(pattern, rng):
    assert AxolotlPattern(pattern).range == rng
    assert has_rows(pattern) == (rng is not None)


@pytest.mark.parametrize("pattern,match", [("^w$[5:3]", "end after it starts"), ("^a.(b$", "not a valid regex")])
def test_bad_patterns_are_refused_with_the_reason(pattern, match):
    with pytest.raises(SpectrumError, match=match):
        AxolotlPattern(pattern)


def test_dots_are_literal_unless_a_plus_follows():
    norms = AxolotlPattern("^.+norm")
    assert norms.match("model.layers.0.input_layernorm.weight") and not norms.match("norm")
    assert not AxolotlPattern("^a.b").match("aXb")


@given(
    st.lists(
        st.sampled_from(["^a.weight$", "^a.weight$[0:2]", "^b.(weight|bias)$", "^.+norm", "^c$[3]", "^a.+"]),
        min_size=1,
        max_size=4,
    )
)
def test_matching_agrees_with_axolotl_restated(patterns):
    params = [("a.weight", [0] * 6), ("b.weight", [0] * 4), ("b.bias", [0] * 4), ("x.norm", [0]), ("c", [0] * 5)]
    axolotl = axolotl_unfrozen(params, patterns)
    ours = {n for n, _ in params if any(AxolotlPattern(p).match(n) for p in patterns)}
    assert ours == set(axolotl)


def test_first_match_names_the_alias_a_pattern_reaches():
    assert AxolotlPattern("^lm_head.weight$").first_match(["x", "lm_head.weight"]) == "lm_head.weight"
    assert AxolotlPattern("^lm_head.weight$").first_match({}) is None


patterns = st.lists(
    st.builds(lambda n, r: module_pattern(_rows(n, 0, r) if r else _whole(n)), module_names, st.integers(0, 64)),
    min_size=1,
    max_size=8,
    unique=True,
)


@given(patterns, st.integers(0, 3))
def test_yaml_round_trips_and_is_an_unfrozen_parameters_list(pats, first):
    sections = {"mlp.down_proj": pats[first:]}
    text = to_yaml(pats, sections, first=pats[:first])
    assert from_yaml(text, "s.yaml") == pats == yaml.safe_load(text)["unfrozen_parameters"]
    assert text.startswith("unfrozen_parameters:\n") and "# mlp.down_proj layers\n" in text


def test_yaml_lists_first_then_sections_then_the_rest_once():
    text = to_yaml(["^h$", "^e$", "^a$", "^b$", "^x$"], {"t1": ["^a$"], "t2": ["^b$"]}, first=["^h$", "^e$"])
    assert text == ("unfrozen_parameters:\n- ^h$\n- ^e$\n# t1 layers\n- ^a$\n# t2 layers\n- ^b$\n- ^x$\n")


@given(patterns)
def test_txt_round_trips(pats):
    assert from_txt(to_txt(pats)) == pats


def test_txt_skips_blank_lines_and_comments():
    assert from_txt("# top\n\n  ^a$  \n#x\n^b$\n") == ["^a$", "^b$"]


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".txt"])
def test_read_dispatches_on_the_suffix(tmp_path, suffix):
    pats = ["^lm_head.weight$", "^model.layers.0.mlp.down_proj.(weight|bias)$"]
    path = tmp_path / f"s{suffix}"
    path.write_text(to_txt(pats) if suffix == ".txt" else to_yaml(pats))
    assert read(path) == pats


@pytest.mark.parametrize(
    "text,match",
    [
        ("base_model: x\n", "unfrozen_parameters"),
        ("", "unfrozen_parameters"),
        ("unfrozen_parameters: [\n", "not valid YAML"),
    ],
)
def test_foreign_yaml_is_refused(text, match):
    with pytest.raises(SpectrumError, match=match):
        from_yaml(text, "s.yaml")


@pytest.mark.parametrize(
    "pats,match", [([], "selects nothing"), (["^a$", " "], "not a pattern"), (["^a$", 3], "not a pattern")]
)
def test_check_patterns_refuses_empty_lists_and_non_patterns(pats, match):
    with pytest.raises(SpectrumError, match=match):
        check_patterns(pats, "s.yaml")
