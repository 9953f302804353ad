"""The second study's main blocks (benchmarks/study_main.py): which runs each block makes, and that they resume."""

import json
import re
import zlib

import numpy as np
import pytest

from benchmarks import study, study_main, study_task
from benchmarks.study_arms import run_key


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    import spectrum_llm
    from conftest import plant_signal, save_model, tiny_llama

    folder = tmp_path_factory.mktemp("main")
    model = tiny_llama(num_hidden_layers=8)
    plant_signal(model)
    path = save_model(model, folder / "model")
    return spectrum_llm.scan(str(path), output=folder / "scan.json", progress=False), str(path)


def _layers(patterns):
    return {int(m.group(1)) for p in patterns if (m := re.search(r"layers\.(\d+)\.", p))}


def _per_type_quarter(patterns, layers=8):
    """How many modules of each type sit in each quarter of the layers."""
    out: dict = {}
    for p in patterns:
        if m := re.search(r"layers\.(\d+)\.(\w+\.\w+)\.", p):
            key = (m.group(2), min(3, int(m.group(1)) * 4 // layers))
            out[key] = out.get(key, 0) + 1
    return out


def test_every_block_pairs_training_order_seeds_across_its_arms(scanned):
    scan, model = scanned
    for block in study_main.BLOCKS.values():
        arms = study_main.block_arms(block, scan, model)
        assert len({a.name for a in arms}) == len(arms)
        by_seed: dict = {}
        for a in arms:
            if not a.sweep:
                by_seed.setdefault(a.data_seed, set()).add(a.group)
        assert len({frozenset(g) for g in by_seed.values()}) <= 2  # the draws' seeds may stop earlier


def test_random_draws_are_the_products_and_depth_matched_ones_keep_spectrums_depth(scanned):
    import spectrum_llm

    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["snr"], scan, model)
    per_type = next(a for a in arms if a.group == "random25")
    assert per_type.patterns == list(
        spectrum_llm.select(scan, top_percent=25, random=True, seed=per_type.seed, model=model).patterns
    )
    s25 = spectrum_llm.select(scan, top_percent=25, model=model)
    depth = [a for a in arms if a.group == "random-depth25"]
    assert depth and all(a.seed >= 30 for a in depth)
    assert all(_per_type_quarter(a.patterns) == _per_type_quarter(s25.patterns) for a in depth)
    assert any(_per_type_quarter(a.patterns) != _per_type_quarter(s25.patterns) for a in arms if a.group == "random25")


def test_selectors_share_spectrums_budget_and_methods_carry_their_options(scanned):
    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["selectors"], scan, model)
    by_group = {a.group: a for a in arms if not a.sweep}
    top = by_group["top-layers"]
    assert max(_layers(top.patterns)) == 7 and _layers(top.patterns) == set(range(min(_layers(top.patterns)), 8))
    assert min(_layers(by_group["hybrid"].patterns)) >= 8 // 3
    assert by_group["qlora"].method == "qlora" and by_group["qlora"].lora_rank == by_group["lora"].lora_rank
    assert by_group["spectrum25-nf4"].options == {"frozen_precision": "nf4"}
    assert by_group["spectrum25-nf4"].train_fields("s.txt")["frozen_precision"] == "nf4"
    curves = [a for a in arms if a.sweep]
    assert {a.group for a in curves} == {"full", "spectrum25", "spectrum50", "top-layers", "lora"} and all(
        a.data_seed == 0 for a in curves
    )
    # full fine-tuning's curve (the matched-forgetting reference) runs right after every arm's first seed
    first_seed = [a for a in arms if not a.sweep and a.data_seed == 0]
    assert all(a.group == "full" for a in arms[len(first_seed) : len(first_seed) + 2]) and arms[len(first_seed)].sweep


def test_options_enter_the_run_key_only_when_set(scanned):
    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["selectors"], scan, model)
    settings = study.MODES["quick"]
    keys = {run_key(settings, a, "fp") for a in arms}
    assert len(keys) == len(arms)
    nf4 = next(a for a in arms if a.options)
    plain = study_main.Arm(**{**nf4.__dict__, "options": {}})
    assert run_key(settings, nf4, "fp") != run_key(settings, plain, "fp")
    dyn = study_main.Arm("d", "partial", "dynamic", "spectrum", 1e-3, options={"scan": "/work/a/scan.json"})
    moved = study_main.Arm("d", "partial", "dynamic", "spectrum", 1e-3, options={"scan": "/tmp/b/scan.json"})
    assert run_key(settings, dyn, "fp") == run_key(settings, moved, "fp")  # another --work folder, the same run


def test_a_block_runs_stops_and_resumes(tmp_path, monkeypatch, scanned):
    _, model = scanned
    calls = []

    def fake_child(script, spec, work, name):
        calls.append(spec["name"])
        rng = np.random.default_rng(len(calls))
        hits = "".join("1" if x else "0" for x in rng.random(10) < 0.6)
        ev = {split: {"hits": hits, "nll": [1.0] * 10, "tokens": [2] * 10} for split in ("seen", "val", "test")} | {
            "general": {"nll": [4.0], "tokens": [2]},
            "chat": {"nll": [2.0], "tokens": [2]},
        }
        out = {"eval": ev, **study_task.summarise(ev)}
        if name != "baseline":
            out |= {"trainable_params": 1, "total_params": 2, "median_step_s": 0.1, "losses": [1.0], "wall_s": 1.0}
        return out

    monkeypatch.setattr(study, "run_child", fake_child)
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    ctx = {"work": tmp_path, "model": model, "files": {}, "fingerprint": "fp", "code": "abc"}
    monkeypatch.setattr(study, "setup", lambda work, mode, s: dict(ctx))
    study.main(["--main", "snr", "--quick", "--max-runs", "2"])
    assert len(calls) == 1 + 2
    study.main(["--main", "snr", "--quick"])
    folder = tmp_path / "results" / "study-runs" / "main-quick-snr"
    stored = [json.loads(p.read_text()) for p in folder.glob("snr-*.json")]
    block = study_main.BLOCKS["snr"]
    assert len(stored) == block.draws * 2 * block.draw_seeds
    assert all(r["selection_seed"] is not None for r in stored)
    for group in ("random25", "random-depth25"):  # draw i trains with data seed i: the pick's seeds, once each
        assert sorted(r["data_seed"] for r in stored if r["group"] == group) == list(range(block.draws))
    n = len(calls)
    study.main(["--main", "snr", "--quick"])
    assert len(calls) == n


def test_arms_keeps_the_named_groups_of_a_block_in_block_order(scanned):
    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["cpt"], scan, model)
    kept = study_main.only_groups(arms, "top-layers, full")
    assert [(a.group, a.data_seed, a.sweep) for a in kept] == [
        ("full", 0, False),
        ("top-layers", 0, False),
        ("top-layers", 0, True),  # the block's extra rate
        ("full", 1, False),
        ("top-layers", 1, False),
        ("top-layers", 1, True),
    ]
    assert study_main.only_groups(arms, None) == arms


def test_a_blocks_extra_rates_run_after_each_of_their_seeds(scanned):
    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["cpt"], scan, model)
    extra = [i for i, a in enumerate(arms) if a.sweep]
    assert [(arms[i].group, arms[i].lr, arms[i].data_seed) for i in extra] == [
        ("top-layers", 3e-4, 0),
        ("top-layers", 3e-4, 1),
    ]
    assert all(a.data_seed == 0 for a in arms[: extra[0]]) and arms[extra[0] + 1].data_seed == 1
    assert extra[1] == len(arms) - 1  # after every other run of seed 1
    assert arms[extra[0]].patterns == next(a for a in arms if a.group == "top-layers").patterns
    # the first seed's key did not move when the second was added: its stored run still counts
    assert arms[extra[0]].name == "cpt-top-layers-lr0.0003-d0"


def test_a_rate_run_with_two_seeds_meets_every_named_pick_at_its_operating_rate(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs" / "main-selectors"
    for d in range(2):
        _stored(runs, f"selectors-full-d{d}", "full", d, 0.9, lr=3e-4)
        _stored(runs, f"selectors-top-layers-d{d}", "top-layers", d, 0.5)
        _stored(runs, f"selectors-top-layers-lr3e-4-d{d}", "top-layers", d, 0.9, sweep=True, lr=3e-4, general=4.0)
    _stored_baseline(runs)
    an = rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)["selectors"]
    rate = [c for c in an["comparisons"] if c["arm"] == "top-layers at 0.0003"]
    assert [c["against"] for c in rate] == ["full", "top-layers"]
    assert rate[1]["learning"]["reading"] == "better" and rate[1]["forgetting"]["reading"] == "better"
    assert "| top-layers at 0.0003 - top-layers |" in an["markdown"]


@pytest.fixture
def one_seed_rate(tmp_path):
    """Full FT at one rate, top layers at 1e-3 over two seeds and at 3e-4 once: the block's report."""
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs" / "main-selectors"
    for d in range(2):
        _stored(runs, f"selectors-full-d{d}", "full", d, 0.9, lr=3e-4)
        _stored(runs, f"selectors-top-layers-d{d}", "top-layers", d, 0.5)
    _stored(runs, "selectors-top-layers-lr3e-4", "top-layers", 0, 0.9, sweep=True, lr=3e-4)
    _stored_baseline(runs)
    return rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)["selectors"]


def test_a_rate_run_with_one_seed_gets_no_interval(one_seed_rate):
    assert [(c["arm"], c["against"]) for c in one_seed_rate["comparisons"]] == [("top-layers", "full")]


def test_a_rate_point_without_full_fts_curve_says_full_ft_ran_at_one_rate(one_seed_rate):
    an = one_seed_rate
    assert re.search(
        r"\| top-layers at 0.0003 \| [\d.]+ \| \+1.00 \| - \| no curve: full FT ran at one rate \|", an["markdown"]
    )


def test_arms_naming_a_group_the_block_lacks_says_which_it_has(scanned):
    scan, model = scanned
    arms = study_main.block_arms(study_main.BLOCKS["cpt"], scan, model)
    with pytest.raises(SystemExit, match="qlora not in this block; its arms are: spectrum25, full"):
        study_main.only_groups(arms, "full,qlora")


def test_task_aware_and_dynamic_arms_join_when_their_inputs_exist(scanned):
    scan, model = scanned
    block = study_main.BLOCKS["selectors"]
    assert not {"task-aware", "dynamic"} & {a.group for a in study_main.block_arms(block, scan, model)}
    arms = study_main.block_arms(block, scan, model, scores=scan, scan_path="/scan.json")
    dyn = next(a for a in arms if a.group == "dynamic")
    fields = dyn.train_fields("unused.txt")
    assert fields["schedule"] == "dynamic" and fields["scan"] == "/scan.json" and "selection" not in fields
    aware = next(a for a in arms if a.group == "task-aware")
    assert aware.patterns and aware.method == "spectrum"


def _stored(folder, name, group, d, rate, sel=None, sweep=False, lr=1e-3, general=5.0):
    rng = np.random.default_rng(zlib.crc32(f"{name}-{d}".encode()))  # hash() is salted per process
    hits = "".join("1" if x else "0" for x in rng.random(40) < rate)
    record = {
        "name": name,
        "group": group,
        "data_seed": d,
        "selection_seed": sel,
        "sweep": sweep,
        "lr": lr,
        "eval": {"test": {"hits": hits}, "general": {"nll": [general * 2, general], "tokens": [2, 1]}},
        "checkpoints": {"100": {"test_hits": hits}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{d}.json").write_text(json.dumps(record))


def _stored_baseline(folder):
    base = {"name": "baseline", "eval": {"general": {"nll": [8.0, 4.0], "tokens": [2, 1]}}}
    (folder / "baseline.json").write_text(json.dumps(base))


@pytest.mark.parametrize("kind,flipped", [("exact", False), ("cpt", True)])
def test_learning_points_up_on_every_blocks_figure(monkeypatch, tmp_path, kind, flipped):
    from benchmarks import study_main_figure as fig_mod
    from benchmarks import study_main_report as rep

    shown = {}
    monkeypatch.setattr(fig_mod, "save_figure", lambda fig, path: shown.setdefault("ylim", fig.axes[0].get_ylim()))
    curve = {"group": "full", "lr": 3e-4, "sweep": False, "data_seed": 0}
    base = {"eval": {"general": {"nll": [8.0, 4.0], "tokens": [2, 1]}}}
    curves = [{**curve, "learning": y, "forgetting": 4.1} for y in (2.5, 2.7)]
    fig_mod.figure(
        {"block": "b", "baseline": base, "curves": curves}, rep.OUTCOMES[kind]["learning"], tmp_path / "f.png"
    )
    bottom, top = shown["ylim"]
    assert (bottom > top) == flipped


def test_a_rate_curve_runs_through_each_rates_mean(monkeypatch, tmp_path):
    from benchmarks import study_main_figure as fig_mod
    from benchmarks.study_primary import METRICS

    shown = {}
    monkeypatch.setattr(fig_mod, "save_figure", lambda fig, path: shown.setdefault("lines", fig.axes[0].get_lines()))
    base = {"eval": {"general": {"nll": [8.0, 4.0], "tokens": [2, 1]}}}
    runs = [(1e-3, False, 0, 1.0), (1e-3, False, 1, 3.0), (3e-4, True, 0, 2.0), (3e-4, True, 1, 4.0)]
    curves = [
        {"group": "top-layers", "lr": lr, "sweep": sw, "data_seed": d, "learning": y, "forgetting": 4.1}
        for lr, sw, d, y in runs
    ]
    fig_mod.figure({"block": "b", "baseline": base, "curves": curves}, METRICS["em_early"], tmp_path / "f.png")
    [curve] = [line for line in shown["lines"] if len(line.get_ydata()) > 1]
    assert list(curve.get_ydata()) == [3.0, 2.0]  # 3e-4 then 1e-3, each over both seeds


def test_the_main_report_compares_every_arm_over_its_seeds(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs"
    for d in range(3):
        _stored(runs / "pilot", f"pilot-spectrum25-mp-d{d}", "pilot-spectrum25", d, 0.5)
        _stored(runs / "main-selectors", f"selectors-full-d{d}", "full", d, 0.95, general=4.5)
        for sel in (10, 11):
            _stored(runs / "pilot", f"pilot-random25-s{sel}-d{d}", "pilot-random25", d, 0.5, sel)
    _stored(runs / "main-selectors", "selectors-full-lr0.003-d0", "full", 0, 0.9, sweep=True, lr=3e-3, general=6.0)
    _stored_baseline(runs / "pilot")
    out = rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)
    an = out["selectors"]
    assert an["arms"]["spectrum25"]["runs"] == 3 and an["arms"]["random25"]["selections"] == 2
    assert an["arms"]["full"]["runs"] == 3  # the rate curve's extra run is not one of the arm's seeds
    s25_vs_full = next(c for c in an["comparisons"] if c["arm"] == "spectrum25" and c["against"] == "full")
    assert s25_vs_full["learning"]["reading"] == "worse" and s25_vs_full["forgetting"]["reading"] == "worse"
    assert s25_vs_full["forgetting"]["estimate"] == pytest.approx(0.5)
    assert "| spectrum25 - full |" in an["markdown"] and an["figure"].endswith("study-main-selectors.png")
    # each pair once, and the random draws (the snr block's question) not compared here
    assert [(c["arm"], c["against"]) for c in an["comparisons"]] == [("spectrum25", "full")]
    # Spectrum's 50% sits far below full fine-tuning's curve (90-95%) at its forgetting
    assert an["matched"]["arms"]["spectrum25"]["reading"] == "worse" and "Best at matched forgetting" in an["markdown"]
    assert (tmp_path / "study-main.json").exists()


def test_qlora_meets_lora_its_bf16_twin_in_the_main_report(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs" / "main-selectors"
    for d in range(3):
        _stored(runs, f"selectors-lora-d{d}", "lora", d, 0.9)
        _stored(runs, f"selectors-qlora-d{d}", "qlora", d, 0.4)
    _stored_baseline(runs)
    an = rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)["selectors"]
    [c] = an["comparisons"]
    assert (c["arm"], c["against"]) == ("qlora", "lora") and c["learning"]["reading"] == "worse"
    assert "| qlora - lora |" in an["markdown"]


def test_each_family_with_a_rate_curve_meets_full_fts_curve_at_every_rate(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs" / "main-selectors"
    for d in range(2):
        _stored(runs, f"selectors-full-d{d}", "full", d, 0.9, lr=3e-4)
        _stored(runs, f"selectors-top-layers-d{d}", "top-layers", d, 0.9, general=6.0)
    _stored(runs, "selectors-full-lr1e-4", "full", 0, 0.3, sweep=True, lr=1e-4, general=4.2)
    _stored(runs, "selectors-full-lr1e-3", "full", 0, 0.9, sweep=True, lr=1e-3, general=7.0)
    _stored(runs, "selectors-top-layers-lr3e-4", "top-layers", 0, 0.9, sweep=True, lr=3e-4, general=4.5)
    _stored_baseline(runs)
    an = rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)["selectors"]
    points = an["every_rate"]["arms"]
    assert list(points) == ["top-layers at 0.0003", "top-layers at 0.001"]
    # at +0.5 nats full fine-tuning's curve learns about half; the top layers learned 90% of the items
    assert points["top-layers at 0.0003"]["reading"] == "better"
    assert points["top-layers at 0.0003"]["forgetting"] == pytest.approx(4.5)
    assert "| top-layers at 0.0003 |" in an["markdown"] and "Bonferroni over 2 points" in an["markdown"]


def test_the_main_report_writes_its_tables_between_the_docs_markers(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs"
    for d in range(2):
        _stored(runs / "pilot", f"pilot-spectrum25-mp-d{d}", "pilot-spectrum25", d, 0.5)
        _stored(runs / "main-snr", f"snr-random-depth25-s3{d}-d0", "random-depth25", 0, 0.7, 30 + d)
    for name, g in (("baseline", 4.0), ("baseline-nf4", 5.0)):
        base = {"name": name, "eval": {"general": {"nll": [2 * g, g], "tokens": [2, 1]}}}
        (runs / "main-snr" / f"{name}--k.json").write_text(json.dumps(base))
    doc = tmp_path / "evidence.md"
    doc.write_text(f"before\n{rep.BEGIN}\nold\n{rep.END}\nafter\n")
    rep.report_main({"snr": "exact"}, results=tmp_path, images=tmp_path, doc=doc)
    text = doc.read_text()
    assert "old" not in text and text.startswith("before\n") and text.endswith("after\n")
    assert "**Block `snr`** (stored runs: 4, rate curves included)" in text
    assert "| spectrum25 - random-depth25 |" in text
    assert "in NF4 (QLoRA's base), untrained: general-text loss +1.00 nats" in text


def test_the_nf4_baseline_is_stored_apart_from_the_bf16_one(tmp_path, monkeypatch):
    specs = []

    def fake_child(script, spec, work, name):
        specs.append(spec)
        return {"eval": {"general": {"nll": [4.0 + len(specs)], "tokens": [1]}}}

    monkeypatch.setattr(study, "run_child", fake_child)
    store = study.Store(tmp_path)
    from benchmarks.study_pilot import PILOTS

    s = PILOTS["pilot-quick"].settings
    ctx = {"work": tmp_path, "model": "m", "files": {}, "fingerprint": "fp"}
    plain = study.baseline(s, ctx, store)
    nf4 = study.baseline(s, ctx, store, quantize="nf4")
    assert [sp["quantize"] for sp in specs] == [None, "nf4"]
    assert nf4["name"] == "baseline-nf4" and nf4["key"] != plain["key"]
    assert study.baseline(s, ctx, store, quantize="nf4") == nf4 and len(specs) == 2  # stored, not run again


def test_a_fact_set_block_trains_on_its_own_facts_in_its_own_work_folder(monkeypatch):
    seen = []

    def fake_setup(work, mode, s):
        seen.append((mode, s.facts_seed))
        raise SystemExit(0)  # the block's settings are all this test needs

    monkeypatch.setattr(study, "setup", fake_setup)
    with pytest.raises(SystemExit):
        study.main(["--main", "facts-b", "--quick"])
    with pytest.raises(SystemExit):
        study.main(["--main", "snr", "--quick"])
    assert seen == [("main-quick-facts2001", 2001), ("main-quick", 1234)]


def test_the_timing_pass_times_each_group_once_with_spectrum25_beside_the_selectors(scanned):
    scan, model = scanned
    block = study_main.BLOCKS["selectors"]
    arms = study_main.block_arms(block, scan, model)
    timed = study_main.timing_plan(block, arms, scan, model)
    groups = [a.group for a in timed]
    assert len(groups) == len(set(groups)) and "spectrum25" in groups
    assert set(groups) == {a.group for a in arms if not a.sweep} | {"spectrum25"}
    assert all(not a.sweep and a.data_seed == 0 for a in timed)
    snr = study_main.BLOCKS["snr"]
    assert {a.group for a in study_main.timing_plan(snr, study_main.block_arms(snr, scan, model), scan, model)} == {
        "random25",
        "random-depth25",
        "spectrum25",
    }


def test_the_main_report_shows_each_arms_size_memory_and_step_time_alone(tmp_path):
    from benchmarks import study_main_report as rep

    runs = tmp_path / "study-runs"
    for d in range(2):
        _stored(runs / "pilot", f"pilot-spectrum25-mp-d{d}", "pilot-spectrum25", d, 0.5)
        _stored(runs / "main-selectors", f"selectors-full-d{d}", "full", d, 0.9)
    for f in runs.rglob("*.json"):
        r = json.loads(f.read_text())
        full = r["group"] == "full"
        r |= {"trainable_params": 8e6 if full else 2e6, "peak_rss_anon_bytes": (3 if full else 2) * 2**30}
        f.write_text(json.dumps(r))
    timing = runs / "main-selectors" / "timing"
    timing.mkdir()
    for group, step in (("full", 2.0), ("spectrum25", 1.5)):
        (timing / f"{group}.json").write_text(json.dumps({"name": group, "group": group, "median_step_s": step}))
    an = rep.report_main({"selectors": "exact"}, results=tmp_path, images=tmp_path)["selectors"]
    assert an["cost"]["spectrum25"] == {"trainable_params": 2e6, "peak_mib": 2048.0, "step_s": 1.5}
    assert "| spectrum25 | 2.0 | 2,048 | 1.50 | 0.75x |" in an["markdown"]
    assert "| full | 8.0 | 3,072 | 2.00 | 1.00x |" in an["markdown"]
