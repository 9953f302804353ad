"""Data errors a user can act on: the file and line of a bad JSONL row, the row of a bad conversation and a way to
skip such rows, and chat data given to the default task."""

import json

import pytest

from helpers_models import build_tokenizer, write_sft_data
from spectrum_llm.data import DataConfig, build_datasets
from spectrum_llm.errors import SpectrumError


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer()
    if t.pad_token_id is None:
        t.pad_token = t.eos_token
    return t


def test_malformed_jsonl_names_file_and_line_in_one_line(tmp_path, tok, capfd):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "the cat"}\n{"text": "the dog"\n{"text": "the sun"}\n')
    with pytest.raises(SpectrumError) as e:
        build_datasets(DataConfig(str(bad), seq_len=16), tok)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(bad) in msg and "line 2" in msg and "not valid JSON" in msg
    out = capfd.readouterr()
    assert "Failed to load JSON" not in out.out + out.err  # datasets' own log line is hidden


def test_jsonl_row_that_is_not_an_object(tmp_path, tok):
    bad = tmp_path / "list.jsonl"
    bad.write_text('{"text": "the cat"}\n[1, 2]\n')
    with pytest.raises(SpectrumError, match=r"line 2: a JSON list, not an object"):
        build_datasets(DataConfig(str(bad), seq_len=16), tok)


def test_cpt_on_chat_data_suggests_task_sft_and_text_field(tmp_path, tok):
    data = write_sft_data(tmp_path / "chat.jsonl", repeat=1)
    with pytest.raises(SpectrumError) as e:
        build_datasets(DataConfig(str(data), task="cpt", seq_len=16), tok)
    assert "--task sft" in str(e.value) and "--text-field" in str(e.value)


def _with_bad_row(tmp_path):
    data = write_sft_data(tmp_path / "chat.jsonl", repeat=2)
    lines = data.read_text().splitlines()
    lines.insert(4, json.dumps({"messages": [{"role": "user", "content": "what is the capital of france ?"}]}))
    data.write_text("\n".join(lines) + "\n")
    return data, len(lines)


def test_chat_row_without_answer_is_named_and_can_be_skipped(tmp_path, tok):
    data, n = _with_bad_row(tmp_path)
    with pytest.raises(SpectrumError) as e:
        build_datasets(DataConfig(str(data), task="sft", seq_len=64), tok)
    msg = str(e.value)
    assert f"Row 5 of {data}" in msg and "no assistant message" in msg and "--skip-bad-rows" in msg

    train, _, summary = build_datasets(DataConfig(str(data), task="sft", seq_len=64, skip_bad_rows=True), tok)
    assert summary.skipped == 1
    assert summary.rows == n and len(train) == n - 1


def test_prompt_completion_bad_row_skipped(tmp_path, tok):
    data = write_sft_data(tmp_path / "pc.jsonl", repeat=1, style="prompt-completion")
    data.write_text(data.read_text() + json.dumps({"prompt": "where does the sun rise ?", "completion": ""}) + "\n")
    with pytest.raises(SpectrumError, match=r"Row 5 of .*--skip-bad-rows"):
        build_datasets(DataConfig(str(data), task="sft", seq_len=64), tok)
    train, _, summary = build_datasets(DataConfig(str(data), task="sft", seq_len=64, skip_bad_rows=True), tok)
    assert summary.skipped == 1 and len(train) == 4
