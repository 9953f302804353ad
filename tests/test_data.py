"""Training data: reading local formats, cpt packing, sft answer-only labels, and bad input."""

from __future__ import annotations

import json

import pytest

from helpers_models import QA, SENTENCES, build_tokenizer, write_cpt_data, write_sft_data
from spectrum_llm.data import IGNORE, DataConfig, PadCollator, build_datasets, load_rows
from spectrum_llm.errors import SpectrumError


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _answer(tok, ex) -> str:
    return tok.decode([t for t in ex["labels"] if t != IGNORE])


def test_cpt_packs_into_blocks_of_seq_len(tmp_path, tok):
    train, _, summary = build_datasets(DataConfig(str(write_cpt_data(tmp_path / "c.jsonl")), seq_len=16), tok)
    lengths = [len(x) for x in train["input_ids"]]
    assert all(n == 16 for n in lengths[:-1]) and lengths[-1] <= 16
    assert all(ex["labels"] == ex["input_ids"] for ex in train)
    assert summary.target_tokens == summary.train_tokens == sum(lengths)


def test_sft_messages_label_only_the_assistant_turn(tmp_path, tok):
    train, _, summary = build_datasets(
        DataConfig(str(write_sft_data(tmp_path / "s.jsonl")), task="sft", seq_len=64), tok
    )
    assert summary.format == "messages"
    ex = train[0]
    assert _answer(tok, ex) == QA[0][1] + " <|end|>"
    prompt = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE])
    assert QA[0][0] in prompt and "<|assistant|>" in prompt


def test_sft_multi_turn_labels_every_assistant_turn(tmp_path, tok):
    conv = [
        {"role": "user", "content": "what is the capital of france ?"},
        {"role": "assistant", "content": "paris"},
        {"role": "user", "content": "how many legs does a cat have ?"},
        {"role": "assistant", "content": "four legs"},
    ]
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": conv}) + "\n")
    train, _, _ = build_datasets(DataConfig(str(tmp_path / "m.jsonl"), task="sft", seq_len=64), tok)
    assert _answer(tok, train[0]) == "paris <|end|> four legs <|end|>"


def test_sft_prompt_completion_labels_the_completion_and_eos(tmp_path, tok):
    train, _, summary = build_datasets(
        DataConfig(str(write_sft_data(tmp_path / "p.jsonl", style="pc")), task="sft", seq_len=64), tok
    )
    assert summary.format == "prompt-completion"
    assert _answer(tok, train[0]) == QA[0][1] + " </s>"


def test_reads_txt_parquet_and_save_to_disk(tmp_path, tok):
    import datasets

    (tmp_path / "a.txt").write_text("\n".join(SENTENCES) + "\n")
    datasets.Dataset.from_dict({"text": SENTENCES}).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_dict({"text": SENTENCES}).save_to_disk(str(tmp_path / "disk"))
    for p in ("a.txt", "a.parquet", "disk"):
        assert len(load_rows(str(tmp_path / p))) == len(SENTENCES)


def test_eval_split_holds_out_examples(tmp_path, tok):
    train, evalset, summary = build_datasets(
        DataConfig(str(write_cpt_data(tmp_path / "c.jsonl")), seq_len=16, eval_split=0.2), tok
    )
    assert evalset is not None and summary.eval_examples == len(evalset) > 0
    assert summary.train_examples == len(train)


def test_truncation_drops_examples_whose_answer_is_cut_away(tmp_path, tok):
    with pytest.raises(SpectrumError, match="beyond --seq-len"):
        build_datasets(DataConfig(str(write_sft_data(tmp_path / "s.jsonl")), task="sft", seq_len=4), tok)


def test_collator_pads_labels_with_ignore(tok):
    batch = PadCollator(tok.pad_token_id)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [5, 6, 7]},
            {"input_ids": [5], "attention_mask": [1], "labels": [IGNORE]},
        ]
    )
    assert batch["input_ids"][1].tolist() == [5, tok.pad_token_id, tok.pad_token_id]
    assert batch["labels"][1].tolist() == [IGNORE] * 3
    assert batch["attention_mask"][1].tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no-field", "has no 'text' field"),
        ("bad-ext", "unknown extension"),
        ("sft-columns", "needs a 'messages' column"),
        ("no-assistant", "no assistant message"),
        ("too-long", "beyond the model's maximum of 64"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path, tok, case, match):
    path, task, seq_len = tmp_path / "d.jsonl", "cpt", 16
    if case == "empty":
        path.write_text("")
    elif case == "no-field":
        path.write_text(json.dumps({"body": "hello"}) + "\n")
    elif case == "bad-ext":
        path = tmp_path / "d.csv"
        path.write_text("text\nhello\n")
    elif case == "sft-columns":
        path.write_text(json.dumps({"text": "hello"}) + "\n")
        task = "sft"
    elif case == "no-assistant":
        path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
        task = "sft"
    elif case == "too-long":
        write_cpt_data(path)
        seq_len = 65
    with pytest.raises(SpectrumError, match=match):
        build_datasets(DataConfig(str(path), task=task, seq_len=seq_len), tok, max_positions=64)
