"""spectrum score: task-aware module scores from gradients, in the scan format, on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch

from helpers_cli import run_cli
from helpers_models import build_tiny_llama, write_sft_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.gradscore import ScoreConfig, combine_scores, module_scores, score_modules
from spectrum_llm.scan_files import load_scan
from spectrum_llm.scanning import scan
from spectrum_llm.selection import select


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    return {
        "root": root,
        "model": build_tiny_llama(root / "m", dtype="float32"),
        "sft": write_sft_data(root / "sft.jsonl"),
    }


@pytest.fixture(scope="module")
def scores(work):
    out = work["root"] / "scores.json"
    cfg = ScoreConfig(
        model=str(work["model"]),
        data=str(work["sft"]),
        task="sft",
        batches=3,
        batch_size=2,
        seq_len=32,
        output=str(out),
    )
    return score_modules(cfg), out


def test_score_file_loads_as_a_scan_and_selects(scores):
    result, out = scores
    loaded = load_scan(out)
    assert loaded.estimator == "grad" and len(loaded.ranked()) == len(result.ranked()) > 0
    sel = select(loaded, top_percent=50)
    assert sel.estimator == "grad"
    assert all(ts.kept == ts.total // 2 for ts in sel.types.values())


def test_scores_are_the_relative_squared_gradient(scores):
    result, _ = scores
    m = next(m for m in result.ranked() if m.name.endswith("q_proj"))
    assert m.snr == pytest.approx(m.stats["grad_sq"] / 3 / m.stats["weight_sq"])
    assert m.snr > 0


def test_scores_are_deterministic_for_fixed_data_and_seed(work, scores):
    again = score_modules(
        ScoreConfig(model=str(work["model"]), data=str(work["sft"]), task="sft", batches=3, batch_size=2, seq_len=32)
    )
    assert {m.name: m.snr for m in again.modules} == {m.name: m.snr for m in scores[0].modules}


def test_at_most_one_gradient_is_alive_and_none_is_left(work):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(work["model"])
    alive: list[int] = []
    for p in model.parameters():  # registered first, so it runs before the scorer's hook frees the gradient
        p.register_post_accumulate_grad_hook(
            lambda _p: alive.append(sum(q.grad is not None for q in model.parameters()))
        )
    ids = torch.randint(0, 50, (2, 16))
    module_scores(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}])
    assert alive and max(alive) == 1
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # as they were


def test_fisher_is_the_squared_gradient_per_parameter(work):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(work["model"])
    ids = torch.randint(0, 50, (2, 16))
    result = module_scores(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}], "fisher")
    m = next(m for m in result.ranked() if m.name.endswith("down_proj"))
    assert result.estimator == "fisher" and m.snr == pytest.approx(m.stats["grad_sq"] / m.numel)


def test_combined_scores_average_the_rank_percentiles(work, scores):
    snr = scan(str(work["model"]))
    both = combine_scores(scores[0], snr)
    assert both.estimator == "rank-mean"
    for t, ms in both.by_type().items():
        ranked = [m for m in ms if m.ranked]
        if len(ranked) < 2:
            continue
        grad = sorted(ranked, key=lambda m: m.stats["grad"])
        mp = sorted(ranked, key=lambda m: m.stats["mp"])
        for m in ranked:
            want = ((grad.index(m) + 1) + (mp.index(m) + 1)) / 2 / len(ranked)
            assert m.snr == pytest.approx(want)
    assert select(both, top_percent=50).modules


def test_cli_score_then_select(work, tmp_path):
    out, sel = tmp_path / "s.json", tmp_path / "sel.json"
    assert (
        run_cli(
            [
                "score",
                str(work["model"]),
                "--data",
                str(work["sft"]),
                "--task",
                "sft",
                "--batches",
                "2",
                "--seq-len",
                "32",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["estimator"] == "grad"
    assert run_cli(["select", str(out), "--top-percent", "25", "-o", str(sel)]) == 0
    assert json.loads(sel.read_text())["estimator"] == "grad"


def test_no_data_is_one_clear_error(work):
    with pytest.raises(SpectrumError, match="--data"):
        score_modules(ScoreConfig(model=str(work["model"]), data=""))


def test_scan_refuses_a_gradient_estimator(work):
    with pytest.raises(SpectrumError, match="spectrum score"):
        scan(str(work["model"]), estimator="grad")


def test_training_reads_a_score_file_instead_of_scanning_over_it(work, scores):
    from spectrum_llm.training import TrainConfig
    from spectrum_llm.training.methods import resolve_scan

    _, out = scores
    before = out.read_bytes()
    cfg = TrainConfig(model=str(work["model"]), data=str(work["sft"]), output_dir="x", scan=str(out))
    assert resolve_scan(cfg, str(work["model"])).estimator == "grad"
    assert out.read_bytes() == before
