"""CPU scan details: the eigensolver's thread count, the chunked finiteness check, the GGUF reader's memory."""

import pytest
import torch

from spectrum_llm import spectra
from spectrum_llm.checkpoint import open_checkpoint
from spectrum_llm.errors import SpectrumError
from spectrum_llm.scan_plan import finite


def test_eigensolver_runs_on_one_thread_on_few_cores_and_restores_the_count(monkeypatch):
    seen = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda g: (seen.append(torch.get_num_threads()), real(g))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = spectra.singular_values_from_gram(torch.eye(3, dtype=torch.float64) * 4)
        assert seen == [1] and torch.get_num_threads() == 2
        assert torch.allclose(s, torch.full((3,), 2.0, dtype=torch.float64))
    finally:
        torch.set_num_threads(before)


def test_many_cores_keep_their_threads(monkeypatch):
    monkeypatch.setattr(spectra, "FEW_THREADS", 0)
    seen = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda g: (seen.append(torch.get_num_threads()), real(g))[1])
    spectra.singular_values_from_gram(torch.eye(2, dtype=torch.float64))
    assert seen == [torch.get_num_threads()]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finiteness_check_sees_the_last_chunk(bad):
    w = torch.ones(5, 7)
    assert finite(w, chunk=3)
    w[4, 6] = bad
    assert not finite(w, chunk=3)


def test_gguf_reader_keeps_no_tokenizer_but_the_config():
    try:
        ckpt = open_checkpoint("builtin:smollm2-135m")
    except SpectrumError:
        pytest.skip("the default model's package is not installed")
    reader = ckpt.handle(ckpt.tensors[0].file)
    assert not any(k.startswith("tokenizer.") for k in reader.fields)
    assert ckpt.config["hidden_size"] == 576 and ckpt.config["num_hidden_layers"] == 30
