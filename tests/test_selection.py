"""Selection rules, their order on ties and non-finite scores, and bad input."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers_selection import LLAMA_TYPES, column_part, synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.exports import write_selection
from spectrum_llm.results import ModuleScore, ScanResult
from spectrum_llm.rules import order_key
from spectrum_llm.selection import candidates, load_selection, rank, select

score = st.one_of(st.floats(-5, 50, allow_nan=False), st.none(), st.just(math.nan), st.just(math.inf))
scans = st.dictionaries(st.sampled_from(LLAMA_TYPES), st.lists(score, min_size=1, max_size=9), min_size=1)


def _has_finite(scores):
    return any(v is not None and not math.isnan(v) for vs in scores.values() for v in vs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scores=scans, p=st.floats(1, 100))
def test_per_type_keeps_int_n_p_over_100_of_each_type_best_first(scores, p):
    assume(_has_finite(scores))
    scan = synthetic_scan(scores)
    sel = select(scan, top_percent=p)
    key = order_key(compat=False)
    for t, vals in scores.items():
        ts = sel.types[t]
        assert ts.total == len(vals) and ts.kept == int(len(vals) * p / 100)
        keys = {f"model.layers.{i}.{t}": key((i, v)) for i, v in enumerate(vals)}
        kept = {keys[m] for m in ts.modules}
        dropped = {k for m, k in keys.items() if m not in ts.modules}
        assert not kept or not dropped or max(kept) < min(dropped)


def test_ties_keep_file_order_and_nan_and_inf_rank_last():
    scan = synthetic_scan({"mlp.down_proj": [1.0, math.nan, math.inf, 2.0, 1.0, None]})
    order = [m.layer for m in rank([m for m in scan.modules if m.kind == "linear"])]
    assert order == [3, 0, 4, 1, 2, 5]


def test_compat_ranks_inf_first():
    scan = synthetic_scan({"mlp.down_proj": [1.0, math.inf, 2.0, None]})
    order = [m.layer for m in rank([m for m in scan.modules if m.kind == "linear"], compat=True)]
    assert order == [1, 2, 0, 3]


def test_default_selection_trains_embeddings_and_head_not_norms():
    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]})
    scan.modules.append(
        ModuleScore(
            name="model.norm",
            type="norm",
            layer=None,
            shape=[10],
            snr=None,
            kind="norm",
            param="model.norm.weight",
            numel=10,
        )
    )
    sel = select(scan, top_percent=50)
    assert sel.extras == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert sel.modules == ["model.layers.1.mlp.down_proj"]
    assert sel.patterns[-1] == "^model.layers.1.mlp.down_proj.(weight|bias)$"
    with_norms = select(scan, top_percent=50, train_norms=True, train_embeddings=False, train_lm_head=False)
    assert with_norms.extras == ["^model.norm.(weight|bias)$"]


def test_global_rule_pools_types():
    scan = synthetic_scan({"mlp.down_proj": [9.0, 8.0], "mlp.up_proj": [1.0, 2.0]})
    sel = select(scan, rule="global", top_percent=50)
    assert sel.modules == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_global_rule_refused_on_reference_scores():
    scan = synthetic_scan({"mlp.down_proj": [9.0, 8.0]}, estimator="reference")
    with pytest.raises(SpectrumError, match="scale differs by type"):
        select(scan, rule="global", top_percent=50)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=2, max_size=12), frac=st.floats(0.05, 1.0), data=st.data())
def test_budget_is_met_to_within_one_module(sizes, frac, data):
    types = LLAMA_TYPES[:3]
    scores = {t: [data.draw(st.floats(0, 10)) for _ in sizes] for t in types}
    numel = {t: data.draw(st.sampled_from(sizes)) for t in types}
    scan = synthetic_scan(scores, numel=numel, extras=False)
    total = sum(m.numel for m in scan.modules)
    budget = int(total * frac)
    if budget < min(numel.values()):  # not even one module fits: an error, not an empty selection
        with pytest.raises(SpectrumError, match="smaller than the first module"):
            select(scan, budget=frac)
        return
    try:
        sel = select(scan, budget=frac)
    except SpectrumError as e:  # the best-ranked module is larger than the budget: also an error, never empty
        assert "smaller than the first module" in str(e) and budget < max(numel.values())
        return
    used = sum(t.selected_numel for t in sel.types.values())
    assert used == sel.trainable_params <= budget
    missing = [n for t in types for n in [numel[t]] * (sel.types[t].total - sel.types[t].kept)]
    assert not missing or budget - used < max(missing)


def test_budget_as_a_count_and_percentiles_rise_together():
    scan = synthetic_scan({t: [float(i) for i in range(4)] for t in LLAMA_TYPES[:2]}, numel=100)
    sel = select(scan, budget="500")  # 200 in extras, then one module of each type, then a third
    assert sel.trainable_params == 500
    assert [t.kept for t in sel.types.values()] == [2, 1]
    assert sel.types["self_attn.q_proj"].modules == [
        "model.layers.3.self_attn.q_proj",
        "model.layers.2.self_attn.q_proj",
    ]


def test_budget_needs_parameter_counts(reference_dir):
    with pytest.raises(SpectrumError, match="--model"):
        select(reference_dir / "snr_results_Qwen-Qwen2-7B.json", budget=0.25)


def test_budget_smaller_than_embeddings_is_refused():
    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]})
    with pytest.raises(SpectrumError, match="no-train-embeddings"):
        select(scan, budget="150")


def test_include_and_exclude_narrow_the_candidates():
    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0], "self_attn.q_proj": [3.0, 4.0]})
    assert select(scan, top_percent=100, include="self_attn").modules == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.0.self_attn.q_proj",
    ]
    assert all("layers.0" not in m for m in select(scan, top_percent=100, exclude=r"layers\.0\.").modules)


def test_fused_parts_become_row_ranges_and_never_double_with_the_whole():
    whole = ModuleScore(
        name="model.layers.0.self_attn.qkv_proj",
        type="self_attn.qkv_proj",
        layer=0,
        shape=[9216, 3072],
        snr=1.0,
        kind="linear",
        param="model.layers.0.self_attn.qkv_proj.weight",
        numel=9216 * 3072,
    )
    parts = [
        ModuleScore(
            name=f"{whole.name}.{p}",
            type=f"self_attn.qkv_proj.{p}",
            layer=0,
            shape=[3072, 3072],
            snr=s,
            kind="linear",
            param=whole.param,
            part=p,
            rows=[i * 3072, (i + 1) * 3072],
            numel=3072 * 3072,
        )
        for i, (p, s) in enumerate(zip("qkv", (5.0, 1.0, 2.0)))
    ]
    scan = ScanResult("phi", "mp", [whole, *parts])
    assert select(scan, top_percent=100).modules == [whole.name]
    sel = select(scan, top_percent=100, parts=True, train_embeddings=False, train_lm_head=False)
    assert sel.patterns == [f"^{whole.param}$[0:3072]", f"^{whole.param}$[3072:6144]", f"^{whole.param}$[6144:9216]"]


def test_candidates_are_the_linear_modules_in_scan_order_parts_replacing_their_wholes():
    whole = ModuleScore(
        name="model.layers.0.self_attn.qkv_proj",
        type="self_attn.qkv_proj",
        layer=0,
        shape=[6, 2],
        snr=1.0,
        kind="linear",
        param="model.layers.0.self_attn.qkv_proj.weight",
    )
    parts = [
        ModuleScore(
            name=f"{whole.name}.{p}",
            type=f"self_attn.qkv_proj.{p}",
            layer=0,
            shape=[2, 2],
            snr=1.0,
            kind="linear",
            param=whole.param,
            part=p,
            rows=[2 * i, 2 * i + 2],
        )
        for i, p in enumerate("qkv")
    ]
    scan = synthetic_scan({"mlp.down_proj": [2.0, 1.0]})
    scan.modules += [whole, *parts]
    linear = ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert [m.name for m in candidates(scan)] == linear + [whole.name]
    assert [m.name for m in candidates(scan, parts=True)] == linear + [m.name for m in parts]


def test_experts_of_a_3d_tensor_become_row_ranges():
    p = "model.layers.0.mlp.experts.gate_up_proj"
    mods = [
        ModuleScore(
            name=f"model.layers.0.mlp.experts.{e}.gate_up_proj",
            type="mlp.experts.gate_up_proj",
            layer=0,
            shape=[8, 4],
            snr=float(e),
            kind="linear",
            param=p,
            expert=e,
            rows=[e, e + 1],
            numel=32,
        )
        for e in range(4)
    ]
    sel = select(ScanResult("moe", "mp", mods), top_percent=50, train_embeddings=False, train_lm_head=False)
    assert sel.patterns == [f"^{p}$[3:4]", f"^{p}$[2:3]"]


def test_column_parts_cannot_be_exported():
    with pytest.raises(SpectrumError, match="dimension 0"):
        select(ScanResult("gpt2", "mp", [column_part()]), top_percent=100, parts=True)


def test_every_reference_scan_selects(reference_dir):
    files = sorted(p for p in reference_dir.glob("snr_results_*.json"))
    assert len(files) >= 14
    for f in files:
        for kw in ({"compat": True}, {}):
            sel = select(f, top_percent=25, **kw)
            assert sel.modules and sel.patterns[:2] == ["^lm_head.weight$", "^model.embed_tokens.weight$"], f


@pytest.mark.parametrize("p", [0, -1, 100.5, math.nan, math.inf])
def test_percent_outside_0_100_is_refused(p):
    with pytest.raises(SpectrumError, match="top-percent"):
        select(synthetic_scan({"mlp.down_proj": [1.0]}), top_percent=p)


def test_all_nan_scores_are_refused():
    with pytest.raises(SpectrumError, match="NaN"):
        select(synthetic_scan({"mlp.down_proj": [math.nan, None]}), top_percent=50)


@pytest.mark.parametrize("text", ["", "{}", "[1, 2]", '{"a": [1, 2]}', "not json"])
def test_empty_or_foreign_scan_files_are_refused(tmp_path, text):
    f = tmp_path / "scan.json"
    f.write_text(text)
    with pytest.raises(SpectrumError):
        select(f, top_percent=50)


def test_load_selection_accepts_every_form(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [1.0, 2.0]}), top_percent=50)
    assert load_selection(sel) is sel
    assert load_selection(sel.patterns).patterns == sel.patterns
    for ext in (".json", ".yaml", ".txt"):
        write_selection(sel, tmp_path / f"s{ext}")
        back = load_selection(tmp_path / f"s{ext}")
        assert back.patterns == sel.patterns
        assert "model.layers.1.mlp.down_proj" in back.modules
    assert load_selection(tmp_path / "s.json").types["mlp.down_proj"].kept == 1


@pytest.mark.parametrize(
    "name,text",
    [
        ("a.yaml", ""),
        ("b.yaml", "base_model: x\n"),
        ("c.json", '{"x": 1}'),
        ("d.txt", "# nothing\n"),
        ("e.toml", "x"),
        ("f.yaml", "unfrozen_parameters: [\n"),
    ],
)
def test_load_selection_rejects_empty_or_foreign_files(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(SpectrumError):
        load_selection(tmp_path / name)


def test_selection_json_is_strict_json_with_inf_scores(tmp_path):
    sel = select(synthetic_scan({"mlp.down_proj": [math.inf, 2.0]}), top_percent=50)
    write_selection(sel, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["scores"]["model.layers.0.mlp.down_proj"] == "inf"
    assert load_selection(tmp_path / "s.json").scores["model.layers.0.mlp.down_proj"] == math.inf


def test_select_takes_a_config_or_its_fields_as_keywords():
    from spectrum_llm.selection import SelectConfig

    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0, 3.0, 4.0], "self_attn.q_proj": [4.0, 3.0, 2.0, 1.0]})
    by_keywords = select(scan, top_percent=25, train_lm_head=False)
    cfg = SelectConfig(top_percent=25, train_lm_head=False)
    assert select(scan, cfg) == by_keywords
    assert select(scan, SelectConfig(top_percent=75), top_percent=25, train_lm_head=False) == by_keywords
    with pytest.raises(TypeError):
        select(scan, top_procent=25)


def test_select_to_writes_the_format_and_reports_what_the_cli_prints(tmp_path):
    from spectrum_llm.selection import select_to

    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]})
    out = select_to(scan, tmp_path / "s.json", top_percent=50)
    assert load_selection(tmp_path / "s.json").modules == out.selection.modules == ["model.layers.1.mlp.down_proj"]
    assert out.source == "the given scan" and out.selection.rule["scan"] == "the given scan"
    text = [line for line, _ in out.lines()]
    assert text[0].startswith("[green]Selected[/] 1 ranked modules + lm_head, model.embed_tokens by the per-type rule")
    assert any(line.startswith("trains ") for line in text)
    plan = select_to(scan, tmp_path / "p.json", format="peft", max_rank=8)
    assert plan.plan.ranks == {"model.layers.1.mlp.down_proj": 8}
    assert json.loads((tmp_path / "p.json").read_text())["target_modules"] == ["model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("case", ["config says untied", "narrowed by --modules"])
def test_the_text_says_tied_exactly_when_the_selection_is_built_tied(case, tmp_path):
    """One answer (models.tied_head) drives both the patterns and the words about them."""
    from spectrum_llm.selection import select_outcome

    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]})
    scan.modules = [m for m in scan.modules if m.kind != "lm_head"]  # no lm_head scanned
    if case == "config says untied":
        scan.config = {"tie_word_embeddings": False}
    else:
        scan.modules_regex = "embed|mlp"
    out = select_outcome(scan)
    assert not out.tied and "lm_head_tied" not in out.selection.rule
    assert "^lm_head.weight$" in out.selection.patterns  # built untied: the head's own pattern
    assert "tied" not in out.lines()[0][0]
    tied = synthetic_scan({"mlp.down_proj": [1.0, 2.0]})
    tied.modules = [m for m in tied.modules if m.kind != "lm_head"]
    out = select_outcome(tied)
    assert out.tied and out.selection.rule["lm_head_tied"] and "(tied to lm_head)" in out.lines()[0][0]


def test_select_flags_are_the_select_config_fields():
    import dataclasses

    import typer

    from spectrum_llm.cli import app
    from spectrum_llm.selection import SelectConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["select"].params}
    fields = dataclasses.fields(SelectConfig)
    assert set(params) == {f.name for f in fields} | {"scan_file", "output"}
    for f in fields:
        assert params[f.name].help == f.metadata["help"] and params[f.name].default == f.default, f.name


def test_the_package_imports_no_cycle_and_the_catalogue_does_not_scan():
    import ast
    from pathlib import Path

    import spectrum_llm

    root = Path(spectrum_llm.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        graph[path.stem] = deps & {p.stem for p in root.glob("*.py")}
    assert not graph["catalogue"] & {"scanning", "checkpoint", "selection", "rules", "sources"}

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    assert [m for m in graph if m in reach(m)] == []
