"""Training data: local files in, tokenized examples with labels out.

Two tasks. ``cpt`` (continued pretraining) tokenizes a text field and packs the token stream into
fixed-length blocks, every token a target. ``sft`` (supervised fine-tuning) renders chat ``messages``
with the tokenizer's chat template, or joins ``prompt`` and ``completion``, and sets labels to -100
everywhere except the answer tokens, so the loss only teaches the answers.

Every example carries ``input_ids``, ``attention_mask`` and ``labels``; :class:`PadCollator` pads a
batch (labels with -100). Problems with the data are found here, before any training starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpectrumError

IGNORE = -100
TASKS = ("cpt", "sft")
FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text"}


@dataclass
class DataConfig:
    """What to read and how to turn it into examples."""

    path: str
    task: str = "cpt"
    seq_len: int = 512
    text_field: str = "text"
    packing: bool | None = None  # default: on for cpt, off for sft
    eval_split: float = 0.0
    eval_path: str | None = None
    seed: int = 42
    skip_bad_rows: bool = False  # drop rows that cannot be used (no answer, wrong types) instead of stopping


@dataclass
class DataSummary:
    rows: int
    train_examples: int
    eval_examples: int
    train_tokens: int
    target_tokens: int
    dropped: int
    format: str
    skipped: int = 0  # rows left out by skip_bad_rows


def load_rows(path: str):
    """Read a local data file or a ``save_to_disk`` folder into a ``datasets.Dataset``."""
    import datasets

    p = Path(path)
    if not p.exists():
        raise SpectrumError(
            f"Data {p} does not exist. Pass --data with a .jsonl, .json, .parquet or .txt file, "
            "or a folder written by datasets' save_to_disk."
        )
    if p.is_dir():
        if not (
            (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()
        ):
            raise SpectrumError(
                f"{p} is a folder but not one written by datasets' save_to_disk "
                "(no dataset_info.json / dataset_dict.json). Pass a data file or such a folder."
            )
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise SpectrumError(
                    f"{p} holds splits {list(ds)} but no 'train' split. Save the training rows as the 'train' split."
                )
            ds = ds["train"]
    else:
        kind = FILE_KINDS.get(p.suffix.lower())
        if kind is None:
            raise SpectrumError(
                f"Cannot read {p}: unknown extension {p.suffix!r}. Use .jsonl, .json, .parquet "
                "or .txt, or a save_to_disk folder."
            )
        if p.stat().st_size == 0:
            raise SpectrumError(f"Data file {p} is empty. Point --data at a file with training rows.")
        import pyarrow

        try:
            with _quiet("datasets"):
                ds = datasets.load_dataset(kind, data_files=str(p), split="train")
        except (datasets.exceptions.DatasetsError, pyarrow.ArrowException, ValueError, OSError) as e:  # parse errors
            raise (_json_error(p) if kind == "json" else None) or SpectrumError(
                f"Cannot read {p} as {kind}: {_first_line(e)}. Fix the file."
            ) from None
    if len(ds) == 0:
        raise SpectrumError(f"Data {p} has no rows. Point --data at a file with training rows.")
    return ds


@contextlib.contextmanager
def _quiet(name: str):
    """Hide a library's own log lines (datasets logs a parse error before raising it) while reading."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _first_line(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    text = str(cause if cause is not None and str(cause) else e)
    return (text.splitlines() or [type(e).__name__])[0]


def _json_error(p: Path) -> SpectrumError | None:
    """The first line of a .jsonl/.json file that is not a JSON object, as one line naming the file and line."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return SpectrumError(f"Cannot read {p}: byte {e.start} is not UTF-8. Save the file as UTF-8.")
    except OSError as e:
        return SpectrumError(f"Cannot read {p}: {e.strerror or e}.")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, (list, dict)):
        return None  # one JSON document: datasets' complaint is about its shape, not its syntax
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return SpectrumError(
                f"{p}, line {n}: not valid JSON ({e.msg} at column {e.colno}). "
                "Fix that line: a .jsonl file holds one JSON object per line."
            )
        if not isinstance(row, dict):
            return SpectrumError(
                f"{p}, line {n}: a JSON {type(row).__name__}, not an object. "
                'Write each row as one object per line, e.g. {"text": ...}.'
            )
    return None


def check_seq_len(seq_len: int, max_positions: int | None, model: str = "the model") -> None:
    if seq_len <= 1:
        raise SpectrumError(f"Sequence length {seq_len} is too short; use --seq-len 2 or more.")
    if max_positions and seq_len > max_positions:
        raise SpectrumError(
            f"Sequence length {seq_len} is beyond {model}'s maximum of {max_positions} positions. "
            f"Use --seq-len {max_positions} or less."
        )


class BadRow(SpectrumError):
    """One row that cannot be used; ``skip_bad_rows`` leaves such rows out instead of stopping."""


def _row_error(i: int, what: str, cols: list[str], fix: str, where: str = "the data") -> BadRow:
    """Rows are counted from 1, which is the line number in a .jsonl file without blank lines."""
    return BadRow(
        f"Row {i + 1} of {where} {what} (columns: {', '.join(cols) or 'none'}). {fix} "
        "Or pass --skip-bad-rows to leave such rows out."
    )


def _skipping(fn, skip: bool, keys: tuple[str, ...]):
    """``fn`` on one row; with ``skip``, a bad row gives empty outputs (removed afterwards) instead of stopping."""

    def one(*args):
        try:
            return fn(*args)
        except BadRow:
            if not skip:
                raise
            return tuple([] for _ in keys) if len(keys) > 1 else []

    return one


def _tokenize_cpt(ds, tok, field: str, where: str = "the data", skip: bool = False):
    cols = ds.column_names
    if field not in cols:
        chat = "messages" in cols or {"prompt", "completion"} <= set(cols)
        raise SpectrumError(
            f"{where} has no {field!r} field (columns: {', '.join(cols) or 'none'}). "
            + (
                "It looks like chat data: pass --task sft to train on the answers, or --text-field to name a text "
                "column for --task cpt (the default)."
                if chat
                else f"Use --text-field to name the text column, or add a {field!r} field."
            )
        )
    eos = tok.eos_token_id

    def row(i, text):
        if not isinstance(text, str):
            raise _row_error(
                i,
                f"has a {field!r} that is not text ({type(text).__name__})",
                cols,
                "Give every row a string in that field.",
                where,
            )
        t = tok(text)["input_ids"]
        if eos is not None and (not t or t[-1] != eos):
            t = t + [eos]
        return t

    one = _skipping(row, skip, ("input_ids",))

    def fn(batch, idx):
        return {"input_ids": [one(i, text) for i, text in zip(idx, batch[field])]}

    return ds.map(fn, batched=True, with_indices=True, remove_columns=cols, desc="tokenize")


def _sft_format(cols: list[str]) -> str:
    if "messages" in cols:
        return "messages"
    if "prompt" in cols and "completion" in cols:
        return "prompt-completion"
    raise SpectrumError(
        f"SFT data needs a 'messages' column (chat) or 'prompt' and 'completion' columns; "
        f"this data has {', '.join(cols)}. Rename the columns, or use --task cpt for plain text."
    )


def _render(tok, messages, **kw) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, **kw)
    return tok(text, add_special_tokens=False)["input_ids"]


def _chat_example(tok, messages, i: int, cols: list[str], where: str = "the data") -> tuple[list[int], list[int]]:
    """Tokens of a conversation and labels that keep only the assistant turns.

    Each assistant turn's span is found by rendering the conversation up to it (with the generation
    prompt) and through it; this works for any template whose renderings of a prefix are a prefix.
    """
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    ):
        raise _row_error(
            i,
            "has 'messages' that are not a list of {role, content}",
            cols,
            'Write each conversation as [{"role": ..., "content": ...}, ...].',
            where,
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise _row_error(
            i,
            "has no assistant message, so nothing to learn",
            cols,
            "Give every conversation at least one assistant turn.",
            where,
        )
    ids = _render(tok, messages)
    labels = [IGNORE] * len(ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tok, messages[:k], add_generation_prompt=True))
        through = _render(tok, messages[: k + 1])
        if ids[: len(through)] != through or through[:start] != ids[:start]:
            raise SpectrumError(
                "The tokenizer's chat template does not render a conversation's prefix as a prefix "
                "of the whole, so the answer tokens cannot be located. Use prompt/completion data "
                "or a template without that property."
            )
        labels[start : len(through)] = ids[start : len(through)]
    return ids, labels


def _tokenize_sft(ds, tok, where: str = "the data", skip: bool = False):
    cols = ds.column_names
    fmt = _sft_format(cols)
    if fmt == "messages" and not tok.chat_template:
        raise SpectrumError(
            "The tokenizer has no chat template, so 'messages' cannot be rendered. Use a model "
            "with a chat template, or prompt/completion data."
        )
    eos = tok.eos_token_id

    def row(batch, j, i):
        if fmt == "messages":
            return _chat_example(tok, batch["messages"][j], i, cols, where)
        prompt, completion = batch["prompt"][j], batch["completion"][j]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise _row_error(
                i,
                "has a prompt or completion that is missing or not text",
                cols,
                "Give every row a 'prompt' string and a non-empty 'completion' string.",
                where,
            )
        p = tok(prompt)["input_ids"]
        c = tok(" " + completion, add_special_tokens=False)["input_ids"]
        if eos is not None:
            c = c + [eos]
        return p + c, [IGNORE] * len(p) + c

    one = _skipping(row, skip, ("input_ids", "labels"))

    def fn(batch, idx):
        out_ids, out_labels = [], []
        for j, i in enumerate(idx):
            ids, labels = one(batch, j, i)
            out_ids.append(ids)
            out_labels.append(labels)
        return {"input_ids": out_ids, "labels": out_labels}

    return ds.map(fn, batched=True, with_indices=True, remove_columns=cols, desc="tokenize"), fmt


def _pack(ds, seq_len: int):
    """Concatenate examples and cut the stream into blocks of ``seq_len`` (the last one may be shorter)."""
    has_labels = "labels" in ds.column_names

    def fn(batch):
        ids = [t for x in batch["input_ids"] for t in x]
        labels = [t for x in batch["labels"] for t in x] if has_labels else ids
        starts = range(0, len(ids), seq_len)
        return {
            "input_ids": [ids[s : s + seq_len] for s in starts],
            "labels": [labels[s : s + seq_len] for s in starts],
        }

    return ds.map(fn, batched=True, batch_size=10_000, remove_columns=ds.column_names, desc="pack")


def _truncate(ds, seq_len: int):
    def fn(ex):
        ids = ex["input_ids"][:seq_len]
        labels = (ex["labels"] if "labels" in ex else ex["input_ids"])[:seq_len]
        return {"input_ids": ids, "labels": labels}

    return ds.map(fn, desc="truncate")


def build_datasets(cfg: DataConfig, tokenizer, max_positions: int | None = None):
    """Train and eval datasets of ``input_ids``/``attention_mask``/``labels``, plus a summary.

    Examples whose answer was cut away entirely by truncation are dropped (they teach nothing).
    """
    if cfg.task not in TASKS:
        raise SpectrumError(
            f"Unknown task {cfg.task!r}. Use --task cpt (plain text) or --task sft (chat or prompt/completion)."
        )
    check_seq_len(cfg.seq_len, max_positions)
    if not 0.0 <= cfg.eval_split < 1.0:
        raise SpectrumError(f"--eval-split {cfg.eval_split} must be a fraction in [0, 1).")
    packing = cfg.packing if cfg.packing is not None else cfg.task == "cpt"

    def prepare(path):
        rows = load_rows(path)
        where, skip = str(path), cfg.skip_bad_rows
        if cfg.task == "cpt":
            ds, fmt = _tokenize_cpt(rows, tokenizer, cfg.text_field, where, skip), "text"
        else:
            ds, fmt = _tokenize_sft(rows, tokenizer, where, skip)
        usable = ds.filter(lambda ex: len(ex["input_ids"]) > 0, desc="skip bad rows") if skip else ds
        skipped = len(ds) - len(usable)
        if skip and len(usable) == 0:
            raise SpectrumError(f"Every row of {path} is unusable (--skip-bad-rows left none). Fix the data.")
        if skipped:
            logging.getLogger("spectrum_llm").warning(
                "skipped %d unusable row(s) of %s (--skip-bad-rows)", skipped, path
            )
        ds = usable
        ds = _pack(ds, cfg.seq_len) if packing else _truncate(ds, cfg.seq_len)
        before = len(ds)
        ds = ds.filter(lambda ex: any(t != IGNORE for t in ex["labels"][1:]), desc="drop empty")
        ds = ds.map(lambda ex: {"attention_mask": [1] * len(ex["input_ids"])})
        return rows, ds, fmt, before - len(ds), skipped

    rows, train, fmt, dropped, skipped = prepare(cfg.path)
    if len(train) == 0:
        raise SpectrumError(
            f"No training examples are left from {cfg.path}: every answer lies beyond "
            f"--seq-len {cfg.seq_len}. Raise --seq-len or shorten the prompts."
        )
    evalset = None
    if cfg.eval_path:
        _, evalset, _, _, _ = prepare(cfg.eval_path)
    elif cfg.eval_split > 0:
        if len(train) < 2:
            raise SpectrumError(
                f"--eval-split needs at least 2 examples; {cfg.path} gives {len(train)}. Add data or drop --eval-split."
            )
        parts = train.train_test_split(test_size=cfg.eval_split, seed=cfg.seed)
        train, evalset = parts["train"], parts["test"]
    summary = DataSummary(
        rows=len(rows),
        train_examples=len(train),
        eval_examples=len(evalset) if evalset is not None else 0,
        train_tokens=sum(len(x) for x in train["input_ids"]),
        target_tokens=sum(sum(t != IGNORE for t in x) for x in train["labels"]),
        dropped=dropped,
        format=fmt,
        skipped=skipped,
    )
    return train, evalset, summary


class PadCollator:
    """Pad a batch to its longest example: ``pad_token_id`` for inputs, 0 for the mask, -100 for labels."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, features: list[dict[str, Any]]):
        import torch

        n = max(len(f["input_ids"]) for f in features)

        def pad(key, value):
            return torch.tensor([list(f[key]) + [value] * (n - len(f[key])) for f in features], dtype=torch.long)

        batch = {
            "input_ids": pad("input_ids", self.pad),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE),
        }
        if "prefix_index" in features[0]:  # training.prefix_cache: each example's row in the cache
            batch["prefix_index"] = torch.tensor([f["prefix_index"] for f in features], dtype=torch.long)
        return batch
