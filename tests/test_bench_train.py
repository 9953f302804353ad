"""The training benchmark's pure logic: data recovery, random and top-layer selections, LoRA rank. No training."""

import json

import pytest

from benchmarks import train as bench
from helpers_selection import module_table


def test_recover_json_items_stops_at_truncation():
    items = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(3)]
    text = json.dumps(items, indent=2)
    cut = text[: text.rindex('"q2"')]  # the third item is cut off mid-way
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)
    assert bench.recover_json_items(cut) == items[:2]
    assert bench.recover_json_items(text) == items
    assert bench.recover_json_items(text, limit=1) == items[:1]


def test_first_exchange_maps_roles_and_rejects_unusable_items():
    item = {
        "conversations": [
            {"from": "human", "value": " hi "},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "more"},
        ]
    }
    assert bench.first_exchange(item) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert (
        bench.first_exchange({"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]})
        is None
    )
    assert (
        bench.first_exchange({"conversations": [{"from": "human", "value": "x" * 700}, {"from": "gpt", "value": "y"}]})
        is None
    )


def test_random_patterns_keep_per_type_counts_and_vary_with_seed():
    mods = module_table(layers=10)
    kept = {"self_attn.q_proj": 2, "mlp.up_proj": 3}
    by_pattern = {m["pattern"]: m for m in mods}
    draws = []
    for seed in (0, 1, 2):
        pats = bench.random_patterns(mods, kept, seed)
        counts = {}
        for p in pats:
            counts[by_pattern[p]["type"]] = counts.get(by_pattern[p]["type"], 0) + 1
        assert counts == kept
        assert pats == bench.random_patterns(mods, kept, seed)  # reproducible
        draws.append(tuple(pats))
    assert len(set(draws)) > 1


def test_top_layers_matches_budget_from_the_top():
    mods = module_table(layers=4)  # each layer: 64 + 128 = 192 params
    layers, pats, numel = bench.top_layers(mods, target_params=400)
    assert layers == [3, 2] and numel == 384
    assert all(".3." in p or ".2." in p for p in pats) and len(pats) == 4
    assert bench.top_layers(mods, target_params=10)[0] == [3]  # at least one layer


def test_lora_rank_for_comparable_budget():
    mods = module_table(layers=2)  # per rank: 2 * ((8 + 8) + (16 + 8)) = 80
    assert bench.lora_rank_for(mods, 800) == (10, 800)
    assert bench.lora_rank_for(mods, 1) == (1, 80)
