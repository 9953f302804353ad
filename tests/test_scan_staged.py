"""The GPU scan path (staged reads, Gram on the device, batched eigensolver), exercised on the CPU."""

import pytest
import torch
from safetensors.torch import save_file

import spectrum_llm
from spectrum_llm import scan_gpu
from spectrum_llm.checkpoint import Checkpoint, open_checkpoint
from spectrum_llm.errors import SpectrumError
from spectrum_llm.spectra import float64_note, gram, singular_values, singular_values_from_gram


@pytest.fixture
def staged(monkeypatch):
    """Route CPU scans through the staged path, with buckets small enough that batches really form."""
    monkeypatch.setattr(scan_gpu, "STAGED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(scan_gpu, "BUCKET_BYTES", 3 * 64 * 64 * 8)
    monkeypatch.setattr(scan_gpu, "MAX_OPEN", 4)


def _same(a, b):
    assert [m.name for m in a.modules] == [m.name for m in b.modules]
    for x, y in zip(a.modules, b.modules):
        assert (x.skipped, x.shape, x.rows, x.part) == (y.skipped, y.shape, y.rows, y.part), x.name
        if x.snr is not None:
            assert y.snr == pytest.approx(x.snr, rel=1e-9), x.name
            assert y.stats["max_sv"] == pytest.approx(x.stats["max_sv"], rel=1e-12)


@pytest.mark.parametrize("estimator", ["reference", "mp"])
def test_staged_scan_equals_the_plain_scan(llama_dir, staged, estimator, monkeypatch):
    staged_result = spectrum_llm.scan(llama_dir, estimator=estimator)
    monkeypatch.setattr(scan_gpu, "STAGED_DEVICES", ("cuda",))
    _same(spectrum_llm.scan(llama_dir, estimator=estimator), staged_result)


def test_staged_scan_of_experts_and_fused_projections(tmp_path, staged, monkeypatch):
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "model.layers.0.mlp.experts.gate_up_proj": torch.randn(4, 32, 16, generator=g),
            "model.layers.0.self_attn.qkv_proj.weight": torch.randn(48, 16, generator=g),
            "model.layers.0.mlp.experts.down_proj": torch.randn(4, 16, 16, generator=g),
        },
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text('{"num_attention_heads": 2, "num_key_value_heads": 2, "hidden_size": 16}')
    a = spectrum_llm.scan(tmp_path, estimator="reference")
    assert sum(m.expert is not None for m in a.modules) == 8 and sum(m.part is not None for m in a.modules) == 3
    monkeypatch.setattr(scan_gpu, "STAGED_DEVICES", ("cuda",))
    _same(spectrum_llm.scan(tmp_path, estimator="reference"), a)


def test_batched_eigensolve_equals_one_at_a_time():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(24, 80, generator=g) for _ in range(5)]
    batch = singular_values_from_gram(torch.stack([gram(w, torch.device("cpu")) for w in ws]))
    for w, s in zip(ws, batch):
        exact = torch.linalg.svdvals(w.double())
        assert float((s - exact).abs().max()) <= 1e-10 * float(exact[0])
        assert torch.equal(s, singular_values(w))


def test_staged_scan_journals_and_saves(llama_dir, staged, tmp_path):
    out = tmp_path / "scan.json"
    result = spectrum_llm.scan(llama_dir, output=out)
    assert out.is_file() and not (tmp_path / "scan.json.partial").exists()
    assert len({m.param for m in result.modules}) == len(open_checkpoint(llama_dir).tensors)


def test_a_damaged_tensor_is_skipped_and_the_rest_scanned(llama_dir, staged, monkeypatch):
    real = Checkpoint.load

    def load(self, info):
        if info.name == "model.layers.1.mlp.up_proj.weight":
            raise SpectrumError("Could not read tensor: truncated")
        return real(self, info)

    monkeypatch.setattr(Checkpoint, "load", load)
    by_name = {m.name: m for m in spectrum_llm.scan(llama_dir).modules}
    assert "truncated" in by_name["model.layers.1.mlp.up_proj"].skipped
    assert by_name["model.layers.1.mlp.down_proj"].ranked


def test_an_unexpected_reader_error_reaches_the_caller(llama_dir, staged, monkeypatch):
    def load(self, info):
        raise MemoryError("no room")

    monkeypatch.setattr(Checkpoint, "load", load)
    with pytest.raises(MemoryError, match="no room"):
        spectrum_llm.scan(llama_dir)


def test_no_float64_note_on_the_cpu():
    assert float64_note(torch.device("cpu")) is None
