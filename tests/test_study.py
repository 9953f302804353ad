"""The study's pure logic: the task, budget matching, seeding, resume keys, exact match and statistics."""

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import benchlib, stats, study, study_arms, study_task, study_tasks
from benchmarks import study_report as report
from helpers_selection import module_table

# ------------------------------------------------------------------------------------------ the task


def test_facts_are_seeded_and_every_name_is_unique():
    a, b = study_task.make_facts(30, seed=1), study_task.make_facts(30, seed=1)
    assert a == b and a != study_task.make_facts(30, seed=2)
    names = [f["answer"] for f in a] + list({f["entity"] for f in a})
    assert len(names) == len(set(names)) == 90 + 30
    assert [f["attribute"] for f in a[:3]] == list(study_task.ATTRIBUTES)


def test_phrasings_split_into_disjoint_train_val_test():
    for fid in range(10):
        train, val, test = study_task.split_phrasings(fid)
        assert sorted(train + [val, test]) == list(range(study_task.PHRASINGS)) and val != test


def test_every_test_phrasing_is_trained_on_other_facts_never_on_its_own():
    facts = study_task.make_facts(10, seed=0)
    rows = study_task.task_rows(facts, seed=0)
    train_prompts = {r["prompt"] for r in rows["train"]}
    assert len(rows["train"]) == 3 * len(facts)
    assert len(rows["test"]) == len(rows["val"]) == len(rows["seen"]) == len(facts)
    assert {r["prompt"] for r in rows["seen"]} <= train_prompts
    assert not train_prompts & {r["prompt"] for r in rows["test"] + rows["val"]}
    for f in facts:
        template = study_task.ATTRIBUTES[f["attribute"]][study_task.split_phrasings(f["id"])[2]]
        others = {
            template.format(e=g["entity"])
            for g in facts
            if g["attribute"] == f["attribute"] and g["entity"] != f["entity"]
        }
        assert any(study_task.prompt(q) in train_prompts for q in others)


def test_training_order_is_seeded():
    facts = study_task.make_facts(5, seed=0)
    assert study_task.task_rows(facts, seed=3) == study_task.task_rows(facts, seed=3)
    assert study_task.task_rows(facts, seed=3)["train"] != study_task.task_rows(facts, seed=4)["train"]


# ------------------------------------------------------------------------------------------ budgets and keys


def test_random_draws_keep_the_per_type_counts_and_differ_by_seed():
    mods = module_table(layers=8)
    kept = {"self_attn.q_proj": 2, "mlp.up_proj": 3}
    draws = [benchlib.random_patterns(mods, kept, seed) for seed in range(5)]
    for d in draws:
        assert sum("q_proj" in p for p in d) == 2 and sum("up_proj" in p for p in d) == 3
    assert len({tuple(d) for d in draws}) > 1
    assert benchlib.random_patterns(mods, kept, 0) == draws[0]


def test_global_percent_reproduces_the_closest_budget():
    mods = module_table(layers=4)  # q: 64 params each, up: 128 each; 8 modules
    scores = {m["name"]: float(i) for i, m in enumerate(mods)}  # later modules score higher
    pct, numel = study_arms.matched_global_percent(mods, scores, target=300)
    k = int(len(mods) * pct / 100)
    top = sorted(mods, key=lambda m: -scores[m["name"]])[:k]
    assert sum(m["numel"] for m in top) == numel
    assert abs(numel - 300) == min(
        abs(sum(m["numel"] for m in sorted(mods, key=lambda m: -scores[m["name"]])[:j]) - 300) for j in range(1, 9)
    )


def _settings(**kw):
    return study_arms.Settings(**{**study_arms.MODES["quick"].__dict__, **kw})


def test_run_key_is_stable_and_covers_the_whole_configuration():
    s = _settings()
    arm = study_arms.Arm("x", "partial", "random25", "spectrum", 1e-3, ["^a$", "^b$"], seed=0)
    key = study_arms.run_key(s, arm, "fp")
    assert key == study_arms.run_key(
        s, study_arms.Arm("x", "partial", "random25", "spectrum", 1e-3, ["^b$", "^a$"]), "fp"
    )
    assert key != study_arms.run_key(
        s, study_arms.Arm("x", "partial", "random25", "spectrum", 3e-4, ["^a$", "^b$"]), "fp"
    )
    assert key != study_arms.run_key(s, study_arms.Arm("x", "partial", "random25", "spectrum", 1e-3, ["^a$"]), "fp")
    assert key != study_arms.run_key(_settings(steps=7), arm, "fp")
    assert key != study_arms.run_key(s, arm, "other-model")
    # which arms run (grid, number of draws) is not part of a run: a later session can add draws
    assert key == study_arms.run_key(_settings(arms=None, random25_seeds=20, lr_grid={"full": (1.0,)}), arm, "fp")


def test_best_rates_use_validation_only():
    rows = [
        {"sweep": True, "family": "full", "lr": 1e-4, "val_exact_match": 0.5, "val_loss": 1.0, "test_exact_match": 0.9},
        {"sweep": True, "family": "full", "lr": 3e-4, "val_exact_match": 0.6, "val_loss": 2.0, "test_exact_match": 0.1},
        {"sweep": True, "family": "lora", "lr": 1e-3, "val_exact_match": 0.2, "val_loss": 1.5},
        {"sweep": True, "family": "lora", "lr": 3e-3, "val_exact_match": 0.2, "val_loss": 1.2},
    ]
    assert study_arms.best_rates(rows) == {"full": 3e-4, "lora": 3e-3}


def test_a_stored_run_is_never_run_again(tmp_path, monkeypatch):
    calls = []

    def fake_child(script, spec, work, name):
        calls.append(name)
        ev = {
            "val": {"hits": "10", "nll": [1.0, 2.0], "tokens": [2, 2]},
            "test": {"hits": "01", "nll": [1.0, 1.0], "tokens": [2, 2]},
            "general": {"nll": [4.0], "tokens": [2]},
            "chat": {"nll": [2.0], "tokens": [2]},
        }
        return {"trainable_params": 1, "total_params": 2, "median_step_s": 0.1, "eval": ev, **study_task.summarise(ev)}

    monkeypatch.setattr(study, "run_child", fake_child)
    store = study.Store(tmp_path / "runs")
    ctx = {"work": tmp_path, "model": "m", "files": {}, "fingerprint": "fp", "code": "abc"}
    arm = study_arms.Arm("full", "full", "full", "full", 1e-4, sweep=True)
    first = study.execute(arm, _settings(), ctx, store)
    again = study.execute(arm, _settings(), ctx, store)
    assert len(calls) == 1 and first == again and first["test_exact_match"] == 0.5
    study.execute(study_arms.Arm("full", "full", "full", "full", 3e-4, sweep=True), _settings(), ctx, store)
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------ exact match


def test_teacher_forced_exact_match_equals_greedy_decoding():
    from conftest import tiny_llama

    model = tiny_llama(vocab_size=64).eval()
    torch.manual_seed(1)
    items = []
    for i in range(6):
        p = torch.randint(0, 64, (1, 5 + i))
        gen = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=3, do_sample=False, pad_token_id=0)[
            0, p.shape[1] :
        ].tolist()
        answer = gen if i % 2 == 0 else gen[:-1] + [(gen[-1] + 1) % 64]  # odd items: last token not greedy
        items.append({"id": i, "prompt_ids": p[0].tolist(), "answer_ids": answer})
    scores = study_task.answer_scores(model, items, batch_size=4)
    assert [s["hit"] for s in scores] == [True, False] * 3
    assert all(s["nll"] > 0 and s["tokens"] == 3 for s in scores)


def test_block_losses_are_token_weighted_and_ignore_masked_labels():
    from conftest import tiny_llama

    model = tiny_llama(vocab_size=64).eval()
    ids = list(range(10))
    full = study_task.block_losses(model, [{"input_ids": ids, "labels": ids}])[0]
    half = study_task.block_losses(model, [{"input_ids": ids, "labels": [-100] * 5 + ids[5:]}])[0]
    assert full["tokens"] == 9 and half["tokens"] == 5 and half["nll"] < full["nll"]


# ------------------------------------------------------------------------------------------ statistics


def test_paired_interval_of_identical_arms_is_zero():
    a = np.array([1, 0, 1, 1, 0], dtype=float)
    iv = stats.paired_diff(a, a)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0) and not iv.excludes_zero


def test_paired_interval_excludes_zero_for_a_clear_gain():
    rng = np.random.default_rng(0)
    b = rng.random(300) < 0.3
    a = b | (rng.random(300) < 0.4)
    iv = stats.paired_diff(a, b)
    assert iv.excludes_zero and iv.low > 0 and iv.low <= iv.estimate <= iv.high


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=2, max_size=30), st.floats(-2, 2))
def test_paired_interval_brackets_the_estimate(xs, shift):
    a = np.array(xs)
    iv = stats.paired_diff(a + shift, a, n_boot=500)
    assert iv.low - 1e-9 <= iv.estimate <= iv.high + 1e-9
    assert iv.estimate == pytest.approx(shift)


def test_ratio_diff_is_token_weighted():
    iv = stats.ratio_diff([2.0, 10.0], [1.0, 1.0], [1, 9])
    assert iv.estimate == pytest.approx((12 - 2) / 10)


def test_empirical_p_and_rank():
    draws = [0.1, 0.2, 0.3, 0.4]
    assert stats.empirical_p(0.5, draws) == pytest.approx(1 / 5)
    assert stats.empirical_p(0.25, draws) == pytest.approx(3 / 5)
    assert stats.rank_among(0.5, draws) == 1 and stats.rank_among(0.25, draws) == 3
    assert stats.empirical_p(0.05, draws, higher_is_better=False) == pytest.approx(1 / 5)


def test_diff_to_population_covers_items_and_draws():
    rng = np.random.default_rng(1)
    draws = (rng.random((6, 200)) < 0.3).astype(float)
    a = (rng.random(200) < 0.6).astype(float)
    iv = stats.diff_to_population(a, draws, n_boot=1000)
    assert iv.estimate == pytest.approx(a.mean() - draws.mean()) and iv.excludes_zero
    with pytest.raises(ValueError):
        stats.diff_to_population(a, draws[:1])


def _row(name, group, hits, general=4.0, family="partial", lr=1e-3, sweep=False):
    ev = {
        "val": {"hits": hits, "nll": [1.0] * len(hits), "tokens": [2] * len(hits)},
        "test": {"hits": hits, "nll": [1.0] * len(hits), "tokens": [2] * len(hits)},
        "general": {"nll": [general * 3, general * 3], "tokens": [3, 3]},
        "chat": {"nll": [3.0, 3.0], "tokens": [3, 3]},
    }
    return {
        "name": name,
        "group": group,
        "family": family,
        "lr": lr,
        "sweep": sweep,
        "method": "spectrum",
        "trainable_params": 10,
        "total_params": 100,
        "median_step_s": 1.0,
        "eval": ev,
        **study_task.summarise(ev),
    }


def test_statistics_rank_a_pick_among_random_draws_and_pair_arms():
    base = _row("baseline", "base", "0000", general=3.0)
    rows = [
        _row("full", "full", "1111", family="full", lr=1e-4, sweep=True),
        _row("full", "full", "0000", family="full", lr=3e-4, sweep=True),
        _row("spectrum25-mp", "spectrum25", "1110", sweep=True),
        _row("lora", "lora", "1000", family="lora", sweep=True),
        _row("spectrum25-ref", "spectrum25", "1100"),
    ]
    rows += [_row(f"random25-s{i}", "random25", h, general=4.5) for i, h in enumerate(["1000", "1100", "0100"])]
    rates = study_arms.best_rates(rows)
    assert rates == {"full": 1e-4, "partial": 1e-3, "lora": 1e-3}
    st_ = report.statistics(base, rows, rates)
    v = st_["vs_random"]["spectrum25-mp"]
    assert v["rank_exact_match"] == 1 and v["p_exact_match"] == pytest.approx(1 / 4)
    assert v["rank_forgetting"] == 1
    full_pair = next(p for p in st_["pairs"] if (p["a"], p["b"]) == ("spectrum25-mp", "full"))
    assert full_pair["exact_match"]["estimate"] == pytest.approx(-0.25)
    assert st_["forgetting_vs_base"]["full"]["general"]["estimate"] == pytest.approx(1.0)
    assert "| spectrum25-mp | 3 |" in report.claims_table(st_)


def by_name(arms):
    return {a.name: a for a in arms}


def test_plan_builds_every_arm_with_matched_budgets(tmp_path):
    from conftest import plant_signal, save_model, tiny_llama

    model = tiny_llama(num_hidden_layers=8)
    plant_signal(model)
    folder = save_model(model, tmp_path / "model")
    s = _settings(arms=None, random25_seeds=2, random50_seeds=1, noemb_seeds=1)
    sweep, info = study_arms.plan(tmp_path, folder, s, None)
    assert {a.name for a in sweep} == {"full", "spectrum25-mp", "lora"} and all(a.sweep for a in sweep)
    arms, info = study_arms.plan(tmp_path, folder, s, {"full": 1e-4, "partial": 1e-3, "lora": 1e-3})
    names = {a.name for a in arms}
    assert {
        "random25-s0",
        "random25-s1",
        "spectrum25-ref",
        "spectrum50-mp",
        "random50-s0",
        "global25-mp",
        "budget25-mp",
        "top-layers25",
        "spectrum25-mp-noemb",
        "random25-noemb-s0",
    } <= names
    assert all(a.lr == 1e-3 for a in arms if a.group != "random25-lo")
    low = [a for a in arms if a.group == "random25-lo"]
    assert [a.lr for a in low] == [3e-4] and low[0].patterns == by_name(arms)["random25-s0"].patterns
    by = {a.name: a for a in arms}
    for t, k in info["kept_per_type_25"].items():
        assert sum(f".{t}." in p for p in by["random25-s0"].patterns) == k
    assert not any("embed" in p or "lm_head" in p for p in by["spectrum25-mp-noemb"].patterns)


def test_timing_pass_times_each_pick_and_one_draw_per_random_group():
    arm = lambda name, group: study_arms.Arm(name, "partial", group, "spectrum", 1e-3)  # noqa: E731
    arms = [
        arm("full", "full"),
        arm("random25-s0", "random25"),
        arm("random25-s1", "random25"),
        arm("spectrum25-mp", "spectrum25"),
        arm("spectrum25-ref", "spectrum25"),
        arm("random50-s100", "random50"),
    ]
    assert [a.name for a in study_arms.timing_arms(arms)] == [
        "full",
        "random25-s0",
        "spectrum25-mp",
        "spectrum25-ref",
        "random50-s100",
    ]


def test_random_draws_take_their_groups_quiet_step_time():
    timings = [
        {"name": "random25-s0", "group": "random25", "median_step_s": 1.5},
        {"name": "full", "group": "full", "median_step_s": 2.0},
    ]
    assert report.quiet_step({"name": "random25-s7", "group": "random25"}, timings) == 1.5
    assert report.quiet_step({"name": "full", "group": "full"}, timings) == 2.0
    assert report.quiet_step({"name": "lora", "group": "lora"}, timings) is None
    assert report._step_cells(1.5, 2.0) == "1.50 | 0.75x"


def test_the_low_rate_draws_are_compared_with_the_pick_at_that_rate():
    base = _row("baseline", "base", "0000")
    rows = [
        _row("spectrum25-mp", "spectrum25", "1100", lr=1e-3, sweep=True),
        _row("spectrum25-mp", "spectrum25", "1111", lr=3e-3, sweep=True),
        *[_row(f"random25-lo-s{i}", "random25-lo", h, lr=1e-3) for i, h in enumerate(["1000", "0000"])],
    ]
    v = report.statistics(base, rows, {"full": 1e-4, "partial": 3e-3, "lora": 1e-3})["vs_random"]
    assert v["spectrum25-mp@0.001"]["test_exact_match"] == 0.5 and v["spectrum25-mp@0.001"]["rank_exact_match"] == 1


def test_settings_that_choose_runs_are_not_part_of_run_keys():
    arm = study_arms.Arm("random25-s0", "partial", "random25", "spectrum", 1e-3, ["^a$"])
    assert study_arms.run_key(_settings(low_rate_seeds=0), arm, "fp") == study_arms.run_key(
        _settings(low_rate_seeds=9), arm, "fp"
    )


def test_run_keys_are_those_of_the_stored_runs():
    """Stored runs are found again by key: these are the keys STUDY_VERSION 1 has always written."""
    arm = study_arms.Arm("random25-s0", "partial", "random25", "spectrum", 1e-3, ["^b$", "^a$"], seed=0)
    lora = study_arms.Arm("lora", "lora", "lora", "lora", 3e-3, lora_rank=7, sweep=True)
    assert study_arms.run_key(study_arms.MODES["full"], arm, "fp123") == "2ca6ac5355cdb9c2"
    assert study_arms.run_key(study_arms.MODES["quick"], lora, "fp123") == "eb32fb8e1e062502"


# ------------------------------------------------------------------------------------------ the second study


def test_a_training_order_seed_enters_the_key_and_the_plain_fields():
    s = study_arms.MODES["full"]
    pats = ["^a$"]
    old = study_arms.Arm("random25-s0", "partial", "random25", "spectrum", 1e-3, pats, seed=0)
    new = [
        study_arms.Arm("p", "partial", "pilot-random25", "spectrum", 1e-3, pats, seed=0, data_seed=d) for d in (0, 1)
    ]
    keys = {study_arms.run_key(s, a, "fp") for a in [old, *new]}
    assert len(keys) == 3  # a seeded run is never mistaken for the first study's run, nor for another seed
    moved = study_arms.Arm("p", "partial", "pilot-random25", "spectrum", 1e-3, pats, seed=1, data_seed=0)
    assert study_arms.run_key(s, moved, "fp") != study_arms.run_key(s, new[0], "fp")  # the selection seed too
    assert study_arms.run_fields(s, old) == {
        "task": "fictional-facts:70-countries:facts-seed-1234",
        "model": "SmolLM2-135M-Instruct",
        "data_seed": 42,  # the first study's order: the trainer's seed
        "selection_seed": 0,
    }
    assert study_arms.run_fields(s, new[1])["data_seed"] == 1
    # a setting added later leaves the first study's keys alone at its default, and enters them otherwise
    assert study_arms.run_key(s, old, "fp") != study_arms.run_key(_settings_full(eval_at=(50,)), old, "fp")
    assert study_arms.run_key(s, old, "fp") == study_arms.run_key(_settings_full(eval_at=()), old, "fp")


def test_another_model_gets_its_own_keys_and_model_field_and_the_default_keeps_its_own():
    arm = study_arms.Arm("random25-s0", "partial", "random25", "spectrum", 1e-3, ["^b$", "^a$"], seed=0)
    s = study_arms.MODES["full"]
    gemma = _settings_full(model="gemma3-270m")
    assert study_arms.run_key(_settings_full(model="smollm2-135m"), arm, "fp123") == "2ca6ac5355cdb9c2"
    assert study_arms.run_key(gemma, arm, "fp123") != study_arms.run_key(s, arm, "fp123")
    assert study_arms.run_fields(gemma, arm)["model"] == "Gemma-3-270M"
    assert study_arms.run_fields(s, arm)["model"] == study_arms.MODEL == "SmolLM2-135M-Instruct"
    assert set(study_arms.LATER_SETTINGS) <= set(study_arms.Settings.__dataclass_fields__)


def _settings_full(**kw):
    return study_arms.Settings(**{**study_arms.MODES["full"].__dict__, **kw})


def _components_data(k, n, sd_b, sd_w, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(50 + sd_b * rng.normal(), sd_w, size=n) for _ in range(k)]


def test_variance_components_recover_known_components():
    c = stats.variance_components(_components_data(400, 4, sd_b=6.0, sd_w=3.0))
    assert np.sqrt(c["sigma2_between"]) == pytest.approx(6.0, rel=0.1)
    assert np.sqrt(c["sigma2_within"]) == pytest.approx(3.0, rel=0.05)
    assert c["icc"] == pytest.approx(36 / 45, abs=0.05)
    unbalanced = [g[: 2 + i % 5] for i, g in enumerate(_components_data(400, 6, sd_b=2.0, sd_w=5.0, seed=1))]
    c = stats.variance_components(unbalanced)
    assert np.sqrt(c["sigma2_between"]) == pytest.approx(2.0, rel=0.2)
    assert np.sqrt(c["sigma2_within"]) == pytest.approx(5.0, rel=0.05)


def test_variance_components_by_hand_and_floored_at_zero():
    c = stats.variance_components([[1.0, 3.0], [5.0, 7.0]])  # means 2, 6; MSW 2; MSB 2 * 8 = 16; n0 2
    assert (c["msw"], c["msb"], c["n0"], c["sigma2_between"]) == (2.0, 16.0, 2.0, 7.0)
    assert stats.variance_components([[1.0, 9.0], [2.0, 8.0]])["sigma2_between"] == 0.0
    with pytest.raises(ValueError):
        stats.variance_components([[1.0], [2.0]])


def test_bootstrap_components_cover_the_truth():
    ci = stats.bootstrap_components(_components_data(60, 4, sd_b=6.0, sd_w=3.0, seed=2), n_boot=400)
    assert ci["sd_between"].low < 6.0 < ci["sd_between"].high
    assert ci["sd_within"].low < 3.0 < ci["sd_within"].high


def test_power_matches_the_normal_formula_and_the_cheapest_design_is_minimal():
    # no between-selection variance, one draw-seed each: SE^2 = s2w (1/m + 1/D) as for two independent means
    e = stats.detectable_effect(0.0, 100.0, 10, 10, 1)
    assert e == pytest.approx((1.959964 + 0.841621) * np.sqrt(100 * (1 / 10 + 1 / 10)), rel=1e-4)
    assert stats.detectable_effect(25.0, 100.0, 10, 10, 1) > e  # draws' spread costs power
    d = stats.cheapest_design(25.0, 100.0, effect=10.0)
    assert d is not None and stats.detectable_effect(25.0, 100.0, d["pick_seeds"], d["draws"], d["seeds"]) <= 10.0
    for runs in range(3, d["runs"]):  # nothing cheaper reaches it
        assert stats.best_effect_for_runs(25.0, 100.0, runs)["effect"] > 10.0
    b = stats.best_effect_for_runs(25.0, 100.0, d["runs"])
    assert b["effect"] <= 10.0 and b["runs"] <= d["runs"]


def test_the_quick_pilot_runs_resumes_and_reports(tmp_path, monkeypatch):
    from benchmarks import study_pilot
    from conftest import plant_signal, save_model, tiny_llama

    model = tiny_llama(num_hidden_layers=8)
    plant_signal(model)
    folder = save_model(model, tmp_path / "model")
    calls = []

    def fake_child(script, spec, work, name):
        calls.append(spec)
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        hits = "".join("1" if x else "0" for x in rng.random(10) < 0.6)
        ev = {split: {"hits": hits, "nll": [1.0] * 10, "tokens": [2] * 10} for split in ("seen", "val", "test")} | {
            "general": {"nll": [4.0], "tokens": [2]},
            "chat": {"nll": [2.0], "tokens": [2]},
        }
        if name == "baseline":
            return {"eval": ev, **study_task.summarise(ev)}
        return {
            "trainable_params": 1,
            "total_params": 2,
            "median_step_s": 0.1,
            "losses": [1.0, 0.5],
            "wall_s": 60.0,
            "eval": ev,
            **study_task.summarise(ev),
        }

    monkeypatch.setattr(study, "run_child", fake_child)
    monkeypatch.setattr(study_pilot, "RESULTS", tmp_path / "results")
    ctx = {"work": tmp_path, "model": str(folder), "files": {}, "fingerprint": "fp", "code": "abc"}
    monkeypatch.setattr(study, "setup", lambda work, mode, s: ctx)
    doc = tmp_path / "evidence.md"
    doc.write_text(f"# doc\n{study_pilot.BEGIN}\npending\n{study_pilot.END}\ntail\n")
    monkeypatch.setattr(study_pilot, "DOC", doc)
    p = study_pilot.PILOTS["pilot-quick"]
    study.main(["--pilot", "--quick", "--max-runs", "3"])  # a partial pilot: stopped, reported so far
    assert len(calls) == 1 + 3
    study.main(["--pilot", "--quick"])
    runs = [c for c in calls if c["name"] != "baseline"]
    assert len(runs) == p.spectrum_seeds + len(p.selection_seeds) * p.draw_seeds == 6
    assert {c["data_seed"] for c in runs} == {0, 1} and len({c["name"] for c in runs}) == 6
    n = len(calls)
    study.main(["--pilot", "--quick"])
    assert len(calls) == n  # resumable: every finished run is stored under its key
    stored = study_pilot.load_runs("pilot-quick")[1]
    assert all({"task", "model", "data_seed", "selection_seed"} <= r.keys() for r in stored)
    assert {r["selection_seed"] for r in stored} == {None, 10, 11}
    report = __import__("json").loads((tmp_path / "results" / "study-pilot-quick.json").read_text())
    st = report["pilot"]["statistics"]
    assert st["stored_runs"] == 6 and st["primary"]["em_end"]["components"]["groups"] == 2
    assert "power" in st["primary"]["em_end"] and "pick_minus_random" in st["primary"]["general_end"]
    study_pilot.report_pilot("pilot-quick", doc=doc)
    assert "6 of 6 pilot runs stored" in doc.read_text() and doc.read_text().endswith("tail\n")


def test_the_data_seed_changes_only_the_training_order(tmp_path):
    """The trainer's data_seed (the pilot's knob) gives another order, and the same seed the same run; the
    evaluations at intermediate steps (``eval_at``) are recorded and leave the run unchanged."""
    from helpers_models import build_tiny_llama, write_sft_data
    from spectrum_llm.training import TrainConfig, train

    model = build_tiny_llama(tmp_path / "m", dtype="float32")
    data = write_sft_data(tmp_path / "d.jsonl", repeat=4, style="prompt")
    items = [{"id": i, "prompt_ids": [1, 5 + i, 7], "answer_ids": [9 + i, 2]} for i in range(3)]
    blocks = [{"input_ids": list(range(3, 19)), "labels": list(range(3, 19))}]
    evals = {"seen": items, "val": items, "test": items, "general": blocks, "chat": blocks}

    def losses(data_seed, name, callbacks=None):
        cfg = TrainConfig(
            model=str(model),
            data=str(data),
            output_dir=str(tmp_path / name),
            task="sft",
            seq_len=32,
            batch_size=2,
            max_steps=4,
            learning_rate=1e-3,
            logging_steps=1,
            save_steps=100,
            extra_args={"save_strategy": "no", "data_seed": data_seed},
        )
        return train(cfg, callbacks=callbacks).losses

    checkpoints: dict = {}
    a = losses(0, "a", [study_tasks.checkpoint_evals({2}, evals, None, checkpoints)])
    b, c = losses(0, "b"), losses(1, "c")
    assert a == b and a != c
    assert list(checkpoints) == ["2"] and len(checkpoints["2"]["test_hits"]) == 3
    assert {"seen_exact_match", "test_exact_match", "general_loss", "chat_loss"} <= checkpoints["2"].keys()


def test_pilot_statistics_on_a_partial_pilot():
    from benchmarks import study_pilot

    def run(name, group, sel, d, em):
        hits = "1" * int(round(10 * em)) + "0" * (10 - int(round(10 * em)))
        return {
            "name": name,
            "group": group,
            "selection_seed": sel,
            "data_seed": d,
            "test_exact_match": em,
            "seen_exact_match": 0.99,
            "losses": [0.1] * 5,
            "general_loss": 5.0,
            "chat_loss": 2.0,
            "wall_s": 600,
            "eval": {"test": {"hits": hits}, "general": {"nll": [10.0, 5.0], "tokens": [2, 1]}},
        }

    rows = [
        run("s-d0", "pilot-spectrum25", None, 0, 0.8),
        run("s-d1", "pilot-spectrum25", None, 1, 0.7),
        run("r10-d0", "pilot-random25", 10, 0, 0.6),
        run("r10-d1", "pilot-random25", 10, 1, 0.5),
        run("r11-d0", "pilot-random25", 11, 0, 0.9),
    ]
    base = {"general_loss": 4.0, "chat_loss": 1.5}
    st = study_pilot.pilot_statistics(study_pilot.PILOTS["pilot"], base, rows, [], n_boot=200)
    em = st["primary"]["em_end"]
    assert st["stored_runs"] == 5 and em["components"]["groups"] == 2
    assert em["pick_mean"] == pytest.approx(75.0) and st["runs"][0]["general_loss_change"] == 1.0
    assert em["random_mean"] == pytest.approx((55.0 + 90.0) / 2)  # the mean of the draws' means
    assert em["pick_minus_random"]["estimate"] == pytest.approx(75.0 - 72.5)
    assert em["power"]["budget_runs"] == 150  # 25 h of 600 s runs
    assert "em_early" not in st["primary"] or "components" not in st["primary"]["em_early"]
    assert "5 of 16 pilot runs stored (partial" in study_pilot.markdown(st)


def test_stored_figure_paths_are_relative_to_the_repository(tmp_path):
    inside = Path(benchlib.__file__).parents[1] / "docs" / "images" / "x.png"
    assert benchlib.repo_relative(inside) == "docs/images/x.png"
    assert benchlib.repo_relative(tmp_path / "x.png") == str(tmp_path / "x.png")
