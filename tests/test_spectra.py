import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectrum_llm.errors import SpectrumError
from spectrum_llm.spectra import singular_values


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 80), n=st.integers(1, 80), seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3))
def test_gram_agrees_with_svdvals(m, n, seed, scale):
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) * scale
    exact = torch.linalg.svdvals(w.double())
    fast = singular_values(w)
    assert torch.allclose(fast, exact, rtol=0, atol=1e-6 * float(exact[0]))


def test_gram_agrees_on_ill_conditioned_bf16_matrix():
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -8, 200, dtype=torch.float64)
    w = (u[:, :200] * s) @ v.T
    exact = torch.linalg.svdvals(w)
    assert torch.allclose(singular_values(w), exact, rtol=0, atol=1e-6 * float(exact[0]))
    wb = w.to(torch.bfloat16)
    assert torch.allclose(singular_values(wb), torch.linalg.svdvals(wb.double()), rtol=0, atol=1e-6)


def test_svd_method_is_exact_and_sorted():
    w = torch.randn(40, 70)
    s = singular_values(w, method="svd")
    assert torch.equal(s, torch.linalg.svdvals(w.double()))
    assert bool((s[:-1] >= s[1:]).all())


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SpectrumError, match="no CUDA GPU"):
        singular_values(torch.randn(4, 4), device="cuda")


def test_unknown_method_names_the_known_ones():
    with pytest.raises(SpectrumError, match="use one of gram, svd"):
        singular_values(torch.randn(4, 4), method="auto")


def test_the_default_scan_keeps_its_cache_file_name():
    from spectrum_llm import cache

    assert cache.scan_path("abc", "mp").name == "abc-mp.json"
    assert cache.scan_path("abc", "mp", "svd").name == "abc-mp-svd.json"
