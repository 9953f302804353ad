"""Depth-aware rules: top-layers fills a budget from the top, top-layers-per-type keeps Spectrum-n's counts from
the top, and --min-layer narrows every rule; bad input is one error line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_selection import LLAMA_TYPES, synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.selection import select

TYPES = ("self_attn.q_proj", "mlp.up_proj")


def _scan(layers: int = 8, numel: int | dict[str, int] = 100):
    return synthetic_scan(
        {t: [float((3 * i + 5 * j) % 7) for i in range(layers)] for j, t in enumerate(TYPES)}, numel=numel
    )


def _layers(sel) -> set[int]:
    return {int(m.split(".")[2]) for m in sel.modules}


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 12),
    sizes=st.lists(st.integers(1, 500), min_size=2, max_size=2),
    extra=st.booleans(),
    budget=st.integers(1, 20_000),
)
def test_top_layers_fills_the_budget_from_the_top_and_never_exceeds_it(layers, sizes, extra, budget):
    scan = _scan(layers, numel=dict(zip(TYPES, sizes)))
    per_layer = sum(sizes)
    extras = 200 if extra else 0
    kw = {"embeddings": "train" if extra else "freeze"}
    if budget < extras + per_layer:
        with pytest.raises(SpectrumError, match="smaller than the top layer"):
            select(scan, rule="top-layers", budget=budget, **kw)
        return
    sel = select(scan, rule="top-layers", budget=budget, **kw)
    n = min(layers, (budget - extras) // per_layer)
    assert _layers(sel) == set(range(layers - n, layers))
    assert len(sel.modules) == 2 * n  # whole layers
    assert sel.trainable_params <= budget
    assert n == layers or sel.trainable_params + per_layer > budget  # the next layer down would overflow
    assert sel.rule["layers"] == list(range(layers - 1, layers - n - 1, -1))


def test_top_layers_without_a_budget_takes_the_per_type_picks_size():
    scan = _scan(8)
    ref = select(scan, top_percent=25)
    sel = select(scan, rule="top-layers", top_percent=25)
    assert sel.rule["budget_params"] == ref.trainable_params
    assert _layers(sel) == {6, 7} and sel.trainable_params == ref.trainable_params


def test_top_layers_can_take_its_budget_from_a_matched_selection(tmp_path):
    scan = _scan(8)
    path = tmp_path / "ref.json"
    ref = select(scan, top_percent=50)
    path.write_text(__import__("json").dumps(ref.to_json()))
    sel = select(scan, rule="top-layers", match=path)
    assert sel.rule["budget_params"] == ref.trainable_params and _layers(sel) == {4, 5, 6, 7}


def test_top_layers_per_type_keeps_spectrums_counts_from_the_top():
    scan = synthetic_scan({t: [1.0] * 8 for t in LLAMA_TYPES})
    spectrum = select(scan, top_percent=25)
    sel = select(scan, rule="top-layers-per-type", top_percent=25)
    assert {t: ts.kept for t, ts in sel.types.items()} == {t: ts.kept for t, ts in spectrum.types.items()}
    assert _layers(sel) == {6, 7}


@pytest.mark.parametrize(
    "options",
    [
        {"top_percent": 50},
        {"rule": "global", "top_percent": 50},
        {"budget": 700},
        {"rule": "top-layers", "budget": 700},
        {"rule": "top-layers-per-type", "top_percent": 50},
        {"top_percent": 50, "random": True, "seed": 1},
    ],
)
def test_min_layer_excludes_the_lower_layers_under_every_rule(options):
    sel = select(_scan(8), min_layer=5, **options)
    assert sel.modules and min(_layers(sel)) >= 5
    assert sel.rule["min_layer"] == 5


def test_min_layer_ranks_by_score_inside_the_window():
    scan = synthetic_scan({"mlp.up_proj": [9.0, 8.0, 1.0, 2.0, 3.0, 4.0]})
    assert select(scan, top_percent=50, min_layer=2).modules == [
        "model.layers.5.mlp.up_proj",
        "model.layers.4.mlp.up_proj",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_layer": 8}, "outside synthetic's layers 0-7"),
        ({"min_layer": -1}, "outside synthetic's layers 0-7"),
        ({"budget": 250}, "smaller than the first module"),
        ({"rule": "top-layers", "budget": 250}, "smaller than the top layer"),
        ({"rule": "top-layers-per-type", "budget": 500}, "drop --budget"),
        ({"compat": True, "rule": "top-layers"}, "--compat writes exactly"),
        ({"compat": True, "min_layer": 2}, "--compat writes exactly"),
    ],
)
def test_bad_depth_options_are_one_error_line(options, message):
    with pytest.raises(SpectrumError, match=message) as e:
        select(_scan(8), **options)
    assert "\n" not in str(e.value)


def test_embeddings_switch_sets_embeddings_and_head():
    scan = _scan(4)
    frozen = select(scan, embeddings="freeze")
    assert frozen.extras == [] and frozen.rule["train_embeddings"] is False and frozen.rule["train_lm_head"] is False
    assert select(scan, embeddings="train").extras == select(scan).extras
    with pytest.raises(SpectrumError, match="sets the output head too"):
        select(scan, embeddings="freeze", train_lm_head=True)
    with pytest.raises(SpectrumError, match="use train or freeze"):
        select(scan, embeddings="off")


def test_train_reads_the_same_embeddings_switch():
    from spectrum_llm.training import TrainConfig

    with pytest.raises(SpectrumError, match="use train or freeze"):
        TrainConfig(model="m", data="d.jsonl", output_dir="o", embeddings="off").validate()
    with pytest.raises(SpectrumError, match="sets the output head too"):
        TrainConfig(model="m", data="d.jsonl", output_dir="o", embeddings="train", train_lm_head=False).validate()
