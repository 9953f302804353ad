"""The seed-aware comparison of a pick against random draws (benchmarks/stats.hierarchical_diff)."""

import numpy as np
import pytest

from benchmarks.stats import MIN_DRAWS, Interval, hierarchical_diff, paired_diff, reading


def _runs(rng, rate, seeds, items=60):
    return (rng.random((seeds, items)) < rate).astype(float)


def test_estimate_is_the_pick_mean_minus_the_mean_of_draw_means():
    pick = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], float)  # 0.5, 0.75
    draws = [np.array([[0, 0, 0, 0]], float), np.array([[1, 0, 0, 0], [1, 1, 0, 0]], float)]  # 0, 0.375
    c = hierarchical_diff(pick, draws, n_boot=200)
    assert c.difference.estimate == pytest.approx(0.625 - 0.1875)
    assert (c.pick_seeds, c.draws, c.runs) == (2, 2, 5)


def test_weights_make_each_run_a_token_weighted_mean():
    pick = np.array([[2.0, 9.0]])  # loss sums of two blocks with 1 and 3 tokens: 11 / 4
    draws = [np.array([[1.0, 3.0]]), np.array([[1.0, 3.0]])]  # 4 / 4
    c = hierarchical_diff(pick, draws, weights=[1, 3], pick_seed_sd=0.0, n_boot=100)
    assert c.difference.estimate == pytest.approx(11 / 4 - 1)


def test_a_single_run_pick_needs_its_seed_noise_stated():
    draws = [np.ones((2, 5)), np.zeros((2, 5))]
    with pytest.raises(ValueError, match="pick_seed_sd"):
        hierarchical_diff(np.ones(5), draws)


def test_counting_the_picks_seed_noise_widens_the_interval():
    rng = np.random.default_rng(1)
    pick = _runs(rng, 0.8, 1)
    draws = [_runs(rng, r, 1) for r in (0.5, 0.55, 0.6, 0.65)]
    narrow = hierarchical_diff(pick, draws, pick_seed_sd=0.0, n_boot=2000)
    wide = hierarchical_diff(pick, draws, pick_seed_sd=0.15, n_boot=2000)
    assert wide.difference.high - wide.difference.low > narrow.difference.high - narrow.difference.low + 0.2
    assert narrow.difference.excludes_zero and not wide.difference.excludes_zero and wide.p > 0.05


def test_a_clear_difference_over_seeds_and_draws_is_found():
    rng = np.random.default_rng(2)
    pick = _runs(rng, 0.9, 4)
    draws = [_runs(rng, r, 3) for r in (0.4, 0.5, 0.45)]
    c = hierarchical_diff(pick, draws, n_boot=2000)
    assert c.difference.low > 0.3 and c.p < 0.01


def test_mismatched_items_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match="one score per item"):
        hierarchical_diff(np.ones((2, 5)), [np.ones((2, 4)), np.ones((2, 4))])


def test_the_seed_level_is_what_item_resampling_misses():
    """Same selection everywhere, so no true difference; runs differ only by a per-seed offset. An item-only
    paired interval is fooled by the pick's lucky seed; the hierarchical one is not."""
    rng = np.random.default_rng(3)
    offsets = rng.normal(0, 0.12, size=40)

    def runs(k0, k):
        return np.clip(0.5 + offsets[k0 : k0 + k, None] + rng.normal(0, 0.02, (k, 200)), 0, 1)

    pick = runs(int(np.argmax(offsets[:4])), 1)  # the luckiest of four seeds, run once
    draws = [runs(10 + 3 * i, 3) for i in range(6)]
    item_only = paired_diff(pick[0], np.mean([d.mean(axis=0) for d in draws], axis=0), n_boot=2000)
    counted = hierarchical_diff(pick, draws, pick_seed_sd=0.12, n_boot=2000)
    assert item_only.excludes_zero
    assert not counted.difference.excludes_zero


def test_a_configuration_run_twice_is_counted_once():
    from benchmarks.study_report import distinct

    rows = [{"name": "spectrum25-mp", "key": "k1"}, {"name": "budget25-mp", "key": "k1"}, {"name": "full", "key": "k2"}]
    keep, dups = distinct(rows)
    assert [r["name"] for r in keep] == ["spectrum25-mp", "full"] and dups == {"budget25-mp": "spectrum25-mp"}


def test_a_single_run_pick_against_draws_counts_the_draws_spread_as_its_own():
    from benchmarks.study_report import seed_counted

    rng = np.random.default_rng(4)

    def run(rate):
        hits = "".join("1" if x else "0" for x in rng.random(100) < rate)
        return {"eval": {"test": {"hits": hits}, "general": {"nll": [8.0, 4.0], "tokens": [2, 1]}}}

    pick, draws = run(0.9), [run(r) for r in (0.3, 0.5, 0.6, 0.7, 0.9)]
    out = seed_counted(pick, draws, n_boot=2000)
    em = out["exact_match"]
    assert em["high"] - em["low"] > 0.5  # about four draws' SD (20 points) each side: wider than the items alone
    assert em["reading"] == "not shown" and out["general_loss"]["estimate"] == pytest.approx(0.0)


def test_one_wording_rule_both_ways_and_enough_draws_against_random_picks():
    up, down, across = Interval(3.0, 1.0, 5.0), Interval(-3.0, -5.0, -1.0), Interval(1.0, -1.0, 3.0)
    assert reading(up, True) == "better" and reading(down, True) == "worse" and reading(across, True) == "not shown"
    assert reading(up, False) == "worse" and reading(down, False) == "better"
    assert reading(up, True, draws=MIN_DRAWS) == "better"
    assert reading(up, True, draws=2) == f"too few draws (2 of {MIN_DRAWS})"
