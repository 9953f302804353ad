"""--cache-prefix: the frozen prefix runs once, later passes start at the lowest trained layer, and the per-step
losses equal the uncached run's."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from helpers_models import build_tiny_llama, write_cpt_data, write_sft_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.training import TrainConfig, train

TOP = ["^model.layers.2.mlp.down_proj.weight$", "^model.layers.3.self_attn.q_proj.weight$", "^model.norm.weight$"]


class CountPrefixRuns(TrainerCallback):
    """Counts how often layer 0's MLP runs once training has begun (after the cache is built)."""

    def __init__(self):
        self.runs = 0

    def on_train_begin(self, args, state, control, model=None, **kw):
        model.model.layers[0].mlp.register_forward_hook(lambda *a: setattr(self, "runs", self.runs + 1))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    (root / "sel.txt").write_text("\n".join(TOP) + "\n")
    (root / "emb.txt").write_text("^model.embed_tokens.weight$\n" + "\n".join(TOP) + "\n")
    return {
        "root": root,
        "model": build_tiny_llama(root / "m", dtype="float32", layers=4),
        "sft": write_sft_data(root / "sft.jsonl", repeat=2),
        "cpt": write_cpt_data(root / "cpt.jsonl", repeat=2),
    }


def _cfg(work, name, sel="sel.txt", **kw):
    base = dict(
        model=str(work["model"]),
        data=str(work["sft"]),
        task="sft",
        output_dir=str(work["root"] / name),
        seq_len=32,
        batch_size=2,
        epochs=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=1000,
        lr_scheduler="constant",
        selection=str(work["root"] / sel),
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_cached_prefix_gives_the_uncached_losses(work, monkeypatch, caplog):
    monkeypatch.setenv("SPECTRUM_CACHE", str(work["root"] / "cache"))
    counts = CountPrefixRuns(), CountPrefixRuns()
    plain = train(_cfg(work, "plain"), callbacks=[counts[0]])
    with caplog.at_level("INFO", logger="spectrum_llm"):
        cached = train(_cfg(work, "cached", cache_prefix=True), callbacks=[counts[1]])
    assert counts[0].runs == plain.steps and counts[1].runs == 0  # the cached run never enters the prefix
    assert any("prefix cache: the hidden states entering layer 2 of 4" in r.message for r in caplog.records)
    assert list((work["root"] / "cache" / "prefix").glob("*.pt"))
    assert plain.steps == cached.steps > 2 and len(plain.losses) == plain.steps
    assert cached.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)


def test_refuses_when_the_embeddings_train(work, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(work["root"] / "cache"))
    with pytest.raises(SpectrumError, match="needs a frozen prefix"):
        train(_cfg(work, "emb", sel="emb.txt", cache_prefix=True, max_steps=1))


def test_refuses_a_cache_over_the_limit(work, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(work["root"] / "cache"))
    with pytest.raises(SpectrumError, match="over --cache-prefix-max-gib"):
        train(_cfg(work, "big", cache_prefix=True, cache_prefix_max_gib=1e-9, max_steps=1))


def test_refuses_other_methods():
    with pytest.raises(SpectrumError, match="needs --method spectrum"):
        TrainConfig(model="m", data="d", output_dir="o", method="full", cache_prefix=True).validate()
