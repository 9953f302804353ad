"""Learning at matched forgetting (benchmarks/study_matched.py) on synthetic runs with known curves."""

import numpy as np
import pytest

from benchmarks.study_matched import curve_at, matched, matched_table
from benchmarks.study_primary import Metric

LEARN = Metric("learning", "points", True, 100.0, 5.0, lambda r: r["hits"])
FORGET = Metric("forgetting", "nats", False, 1.0, 0.2, lambda r: r["nll"])


def _run(rate: float, loss: float, seed: int, n: int = 200) -> dict:
    rng = np.random.default_rng(seed)
    return {"hits": list((rng.random(n) < rate).astype(float)), "nll": list(loss + rng.normal(0, 0.05, n))}


def _full() -> dict[float, list[dict]]:
    # full fine-tuning learns 10 points more per nat of forgetting: 50% at 1 nat, 70% at 3 nats
    return {
        1e-4: [_run(0.5, 1.0, 1)],
        3e-4: [_run(0.6, 2.0, 2), _run(0.6, 2.0, 3)],
        1e-3: [_run(0.7, 3.0, 4)],
    }


def test_the_curve_is_read_between_its_points_and_never_beyond():
    curve = [(3.0, 70.0), (1.0, 50.0), (2.0, 60.0)]
    assert curve_at(1.5, curve) == pytest.approx(55.0)
    assert curve_at(0.5, curve) is None and curve_at(3.5, curve) is None


def test_an_arm_above_full_fine_tunings_curve_reads_better_and_one_below_worse():
    above = [_run(0.8, 1.5, 10), _run(0.8, 1.5, 11)]  # the curve gives 55% at 1.5 nats
    below = [_run(0.3, 2.5, 12), _run(0.3, 2.5, 13)]  # the curve gives 65% at 2.5 nats
    up = matched(LEARN, FORGET, above, _full(), (2.0, 0.05), n_boot=400)
    down = matched(LEARN, FORGET, below, _full(), (2.0, 0.05), n_boot=400)
    assert up is not None and down is not None
    assert up["estimate"] == pytest.approx(25, abs=7) and up["reading"] == "better"
    assert down["estimate"] == pytest.approx(-35, abs=7) and down["reading"] == "worse"


def test_an_arm_that_forgets_outside_the_curve_is_not_compared():
    assert matched(LEARN, FORGET, [_run(0.9, 5.0, 20), _run(0.9, 5.0, 21)], _full(), (2.0, 0.05)) is None


def test_the_best_arm_is_read_at_the_bonferroni_level():
    arms = {
        "a": [_run(0.8, 1.5, 30), _run(0.8, 1.5, 31)],
        "b": [_run(0.55, 1.5, 32), _run(0.55, 1.5, 33)],
        "c": [_run(0.6, 2.5, 34), _run(0.6, 2.5, 35)],
    }
    out = matched_table(LEARN, FORGET, arms, _full(), n_boot=300)
    assert out["best"]["arm"] == "a" and out["best"]["of"] == 3
    assert out["best"]["level"] == pytest.approx(1 - 0.05 / 3)
    assert out["seed_sd"]["learning"] > 0


def test_an_arm_at_the_curves_end_gets_no_reading():
    edge = [_run(0.95, 2.98, 40), _run(0.95, 2.98, 41)]  # full's last rate forgets 3.0 nats
    out = matched(LEARN, FORGET, edge, _full(), (2.0, 0.05), n_boot=300)
    assert out is not None and out["inside_curve"] < 0.95 and out["reading"].startswith("not shown")
