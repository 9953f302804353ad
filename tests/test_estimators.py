import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_llm.errors import SpectrumError
from spectrum_llm.estimators import REGISTRY, get, mp_density, mp_median, mp_snr, reference_snr, score, unscorable


def direct_reference(w: torch.Tensor) -> float:
    """The published formula, written out independently with numpy."""
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    sigma = (np.quantile(s, 0.75) - np.quantile(s, 0.25)) / 1.349
    m, n = w.shape
    thr = sigma * (1 + math.sqrt(min(m, n) / max(m, n)))
    signal = s[s > thr].sum()
    noise = s[s <= thr].sum() if (s <= thr).any() else 1.0
    return signal / noise / s[0]


def spiked(m, n, rank, strength, seed=0, sigma=0.02):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(m, n, generator=g, dtype=torch.float64) * sigma
    if rank == 0:
        return noise
    u = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))[0]
    return noise + strength * sigma * (math.sqrt(m) + math.sqrt(n)) * (u @ v.T)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(2, 60), n=st.integers(2, 60), seed=st.integers(0, 1000))
def test_reference_matches_direct_formula(m, n, seed):
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    s = torch.linalg.svdvals(w.double())
    assert reference_snr(s, m, n).snr == pytest.approx(direct_reference(w), rel=1e-4)


def test_mp_median_matches_known_values():
    # Gavish & Donoho (2014): the MP median for a square matrix is about 0.6528.
    assert mp_median(1.0) == pytest.approx(0.6528, abs=2e-4)
    # As beta -> 0 the law concentrates at 1.
    assert mp_median(1e-4) == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("m,n", [(256, 256), (128, 512), (512, 96)])
def test_mp_finds_no_signal_in_pure_noise(m, n):
    w = spiked(m, n, 0, 0)
    sc = mp_snr(torch.linalg.svdvals(w), m, n)
    assert sc.signal_rank == 0 and sc.snr == 0.0
    assert sc.sigma == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_mp_finds_the_planted_rank(rank):
    w = spiked(300, 500, rank, strength=2.0, seed=rank)
    assert mp_snr(torch.linalg.svdvals(w), 300, 500).signal_rank == rank


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-4, 1e4), seed=st.integers(0, 100))
def test_mp_is_scale_invariant(scale, seed):
    w = spiked(64, 96, 2, 1.5, seed=seed)
    a = mp_snr(torch.linalg.svdvals(w), 64, 96)
    b = mp_snr(torch.linalg.svdvals(w * scale), 64, 96)
    assert b.snr == pytest.approx(a.snr, rel=1e-9) and b.signal_rank == a.signal_rank


def test_reference_is_not_scale_invariant():
    w = spiked(64, 96, 2, 1.5)
    a = reference_snr(torch.linalg.svdvals(w), 64, 96).snr
    b = reference_snr(torch.linalg.svdvals(w * 10), 64, 96).snr
    assert b == pytest.approx(a / 10, rel=1e-9)


def test_stronger_signal_scores_higher():
    weak = mp_snr(torch.linalg.svdvals(spiked(128, 256, 4, 1.2)), 128, 256).snr
    strong = mp_snr(torch.linalg.svdvals(spiked(128, 256, 4, 3.0)), 128, 256).snr
    assert strong > weak > 0


@pytest.mark.parametrize(
    "w,reason",
    [
        (torch.zeros(8, 8), "all-zero"),
        (torch.ones(1, 1), "too few"),
        (torch.ones(1, 9), "too few"),
    ],
)
def test_unscorable_matrices_get_a_reason(w, reason):
    s = torch.linalg.svdvals(w.double())
    assert reason in unscorable(s, *w.shape, "mp")
    assert reason in unscorable(s, *w.shape, "reference")


def test_rank_deficient_matrix_is_unscorable_for_mp():
    w = torch.randn(20, 2, dtype=torch.float64) @ torch.randn(2, 30, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    s[2:] = 0
    assert "rank-deficient" in unscorable(s, 20, 30, "mp")


def test_registry_entries_carry_their_properties():
    assert set(REGISTRY) == {"mp", "reference", "grad", "fisher", "rank-mean"}
    assert {n for n, e in REGISTRY.items() if e.family == "snr"} == {"mp", "reference"}
    assert get("mp").scale_invariant and not get("reference").scale_invariant
    assert all(e.name == name and e.version >= 1 for name, e in REGISTRY.items())


def test_registry_scores_are_the_estimators_own():
    w = spiked(40, 60, rank=3, strength=4.0)
    s = torch.linalg.svdvals(w)
    assert score(s, 40, 60, "mp") == mp_snr(s, 40, 60)
    assert score(s, 40, 60, "reference") == reference_snr(s, 40, 60)


def test_mp_score_does_not_change_with_the_weight_scale():
    s = torch.linalg.svdvals(spiked(40, 60, rank=3, strength=4.0))
    assert get("mp").score(s * 7.5, 40, 60).snr == pytest.approx(get("mp").score(s, 40, 60).snr, rel=1e-12)
    assert get("reference").score(s * 7.5, 40, 60).snr != pytest.approx(get("reference").score(s, 40, 60).snr)


@pytest.mark.parametrize("name", ["magic", "", "MP", None])
def test_unknown_estimator_names_the_known_ones(name):
    with pytest.raises(SpectrumError, match=r"Unknown estimator .*Use one of: mp, reference\."):
        get(name)
    with pytest.raises(SpectrumError, match="Unknown estimator"):
        score(torch.ones(3), 3, 3, name)


def test_mp_density_is_a_density():
    sigma, m, n = 0.02, 64, 256
    edge = sigma * (math.sqrt(m) + math.sqrt(n))
    x = np.linspace(1e-6, edge * 1.05, 200001)
    area = float(np.sum(mp_density(x, sigma, m, n)) * (x[1] - x[0]))
    assert area == pytest.approx(1.0, abs=2e-3)
    assert mp_density(np.array([edge * 1.01]), sigma, m, n)[0] == 0.0
