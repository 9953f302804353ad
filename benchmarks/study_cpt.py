"""The study's CPT task: continued pretraining on Python standard-library source, scored by held-out loss.

The domain is on every machine that runs Python, with no download: the ``.py`` files under
``sysconfig.get_paths()["stdlib"]``, minus installed packages, tests and generated tables
(:data:`EXCLUDED_DIRS`), in sorted order. Files split by a hash of their relative path (10% test, 10%
validation, the rest train), so the split of a file never depends on which other files a Python version
ships, and no held-out file shares a line of context with a trained one.

Training text: the head of each training file (up to :data:`FILE_TOKENS` tokens, cut at a line end), files
in hash order, until ``cpt_train_blocks x seq_len`` tokens; one row ``{"text": ...}`` per file, trained
with ``--task cpt`` (the trainer appends the end token and packs rows into ``seq_len`` blocks). Capping each
file keeps the text spread over many modules instead of a few long ones.

Metric: token-weighted next-token loss on blocks of ``block_len`` tokens from held-out files (at most
:data:`BLOCKS_PER_FILE` per file; lower is better): validation picks learning rates, test is reported, with
its change from the untrained model. Forgetting is measured as for the other tasks.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

from benchmarks.study_arms import STUDY_VERSION, Settings
from benchmarks.study_task import block_losses, forgetting_blocks, write_eval

EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "encodings", "pydoc_data"}
)
FILE_TOKENS = 1024
BLOCKS_PER_FILE = 2
HELD_OUT_PER_MILLE = {"test": 100, "val": 100}


def stdlib_files(root: Path | None = None) -> list[str]:
    """The domain's files: relative POSIX paths of the standard library's ``.py`` files, sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and not rel.name.startswith("test_"):
            out.append(rel.as_posix())
    return sorted(out)


def _rank(path: str) -> int:
    return int(hashlib.sha256(f"study-cpt:{path}".encode()).hexdigest()[:12], 16)


def split_files(files: list[str]) -> dict[str, list[str]]:
    """Train, val and test files by a hash of each path; each split in hash order (a fixed shuffle)."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for f in sorted(files, key=_rank):
        bucket = _rank(f) % 1000
        split = "test" if bucket < HELD_OUT_PER_MILLE["test"] else "val"
        if bucket >= HELD_OUT_PER_MILLE["test"] + HELD_OUT_PER_MILLE["val"]:
            split = "train"
        out[split].append(f)
    return out


def _read(root: Path, rel: str) -> str | None:
    try:
        text = (root / rel).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    return text if text.strip() else None


def _head(text: str, tok, n_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids (and character offsets) of the start of ``text``: at least ``n_tokens`` where the text has them.

    Only a prefix is tokenized (long files cost no more than short ones); where the prefix cuts the text its
    last token may be a fragment, so it is dropped.
    """
    chars = 16 * n_tokens
    enc = tok(text[:chars], return_offsets_mapping=True, add_special_tokens=False)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if len(text) > chars:
        ids, offsets = ids[:-1], offsets[:-1]
    return ids, offsets


def train_texts(root: Path, files: list[str], tok, budget: int) -> tuple[list[dict], int]:
    """Training rows: each file's head (at most FILE_TOKENS tokens, cut at a line end) until ``budget`` tokens."""
    rows, total = [], 0
    for rel in files:
        if total >= budget:
            break
        text = _read(root, rel)
        if text is None:
            continue
        ids, offsets = _head(text, tok, FILE_TOKENS)
        if not ids:
            continue
        keep = min(FILE_TOKENS, budget - total, len(ids))
        if keep < len(ids) or offsets[-1][1] < len(text):
            end = text.rfind("\n", 0, offsets[keep - 1][1])
            if end <= 0:
                continue
            text = text[: end + 1]
        rows.append({"file": rel, "text": text})
        total += len(tok(text, add_special_tokens=False)["input_ids"])
    return rows, total


def held_out_blocks(root: Path, files: list[str], tok, n_blocks: int, block_len: int) -> list[dict]:
    """Up to ``n_blocks`` full blocks of ``block_len`` tokens, at most BLOCKS_PER_FILE from each file's start."""
    blocks: list[dict] = []
    for rel in files:
        text = _read(root, rel)
        if text is None:
            continue
        ids, _ = _head(text, tok, BLOCKS_PER_FILE * block_len)
        for i in range(min(BLOCKS_PER_FILE, len(ids) // block_len)):
            b = ids[i * block_len : (i + 1) * block_len]
            blocks.append({"file": rel, "input_ids": b, "labels": b})
            if len(blocks) == n_blocks:
                return blocks
    return blocks


def prepare(work: Path, pkgs: dict[str, Path], s: Settings, tokenizer_path: Path) -> dict[str, Any]:
    """The CPT task's training text (``{"text": ...}`` rows) and held-out blocks, cached in ``work``."""
    from transformers import AutoTokenizer

    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    key = hashlib.sha256(
        json.dumps(
            [
                "cpt",
                sys.version,
                files,
                s.cpt_train_blocks,
                s.cpt_eval_blocks,
                s.seq_len,
                s.block_len,
                s.general_blocks,
                s.chat_blocks,
                STUDY_VERSION,
            ]
        ).encode()
    ).hexdigest()[:12]
    folder = work / f"cpt-data-{key}"
    out = {"train": folder / "train.jsonl", "eval": folder / "eval.json"}
    if all(f.exists() for f in out.values()):
        return {k: str(v) for k, v in out.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    split = split_files(files)
    rows, tokens = train_texts(root, split["train"], tok, s.cpt_train_blocks * s.seq_len)
    tmp = out["train"].with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out["train"])
    evals = {
        "files": {"train": [r["file"] for r in rows], "val": split["val"], "test": split["test"]},
        **{k: held_out_blocks(root, split[k], tok, s.cpt_eval_blocks, s.block_len) for k in ("val", "test")},
        **forgetting_blocks(pkgs, tok, s),
        "train_rows": len(rows),
        "train_tokens": tokens,
    }
    write_eval(out["eval"], evals)
    return {k: str(v) for k, v in out.items()}


def evaluate(model, evals: dict, autocast_dtype, splits=("val", "test")) -> dict[str, Any]:
    """Summed next-token loss and token count per block: held-out domain blocks, general text and chat."""
    res: dict[str, Any] = {}
    for split in (*splits, "general", "chat"):
        blocks = block_losses(model, evals[split], autocast_dtype=autocast_dtype)
        res[split] = {"nll": [b["nll"] for b in blocks], "tokens": [b["tokens"] for b in blocks]}
    return res


def summarise(ev: dict[str, Any]) -> dict[str, float]:
    """Token-weighted mean losses; ``domain_loss`` is the headline (held-out test files, lower is better)."""
    out = {f"{split}_loss": sum(ev[split]["nll"]) / sum(ev[split]["tokens"]) for split in ev}
    if "test_loss" in out:
        out["domain_loss"] = out["test_loss"]
    return out


def versus_baseline(record: dict, base: dict | None) -> dict[str, float]:
    """The change of held-out domain loss from the untrained model (negative: the domain was learnt)."""
    if base is None or "domain_loss" not in record or "domain_loss" not in base:
        return {}
    return {"domain_loss_change": record["domain_loss"] - base["domain_loss"]}


def report_table(base: dict, rows: list[dict], rates: dict[str, float]) -> str:
    """Markdown: each headline arm's held-out domain loss and forgetting, changes from before training with
    95% intervals over blocks (paired, token-weighted)."""
    from benchmarks.stats import ratio_diff
    from benchmarks.study_report import ci_text, headline_arms

    def change(r: dict, split: str) -> str:
        e, b = r["eval"][split], base["eval"][split]
        return ci_text(ratio_diff(e["nll"], b["nll"], e["tokens"]).to_json()) if e["tokens"] == b["tokens"] else "-"

    lines = [
        "| arm | lr | trainable | val domain loss | test domain loss | change [95% CI] | general loss change | "
        "chat loss change |",
        "|---|---|---|---|---|---|---|---|",
        f"| before training | - | - | {base['val_loss']:.3f} | {base['test_loss']:.3f} | - | "
        f"({base['general_loss']:.3f}) | ({base['chat_loss']:.3f}) |",
    ]
    for name, r in sorted(headline_arms(rows, rates).items(), key=lambda kv: (kv[1]["group"], kv[0])):
        lines.append(
            f"| {name} | {r['lr']:g} | {r['trainable_params'] / 1e6:.1f}M | {r['val_loss']:.3f} | "
            f"{r['test_loss']:.3f} | {change(r, 'test')} | {change(r, 'general')} | {change(r, 'chat')} |"
        )
    return "\n".join(lines)


def write_report(
    name: str,
    s: Settings,
    base: dict | None,
    rows: list[dict],
    rates: dict[str, float],
    info: dict,
    machine: dict,
    timings: list[dict],
) -> Path | None:
    """``benchmarks/results/study-<name>.json``: every stored CPT run, the rates chosen and the loss table."""
    from dataclasses import asdict

    from benchmarks.study_report import RESULTS
    from spectrum_llm.files import write_json_atomic

    rows = [r for r in rows if "domain_loss" in r]
    if base is None or "domain_loss" not in base or not rows:
        print("[study] nothing stored yet to report", flush=True)
        return None
    md = report_table(base, rows, rates)
    path = RESULTS / f"study-{name}.json"
    write_json_atomic(
        path,
        {
            "mode": name,
            "settings": asdict(s),
            "machine": machine,
            "best_rates": rates,
            "plan": info,
            "baseline": base,
            "runs": rows,
            "timing": timings,
            "table_markdown": md,
            "runs_stored": len(rows),
        },
    )
    print("\n" + md + f"\n\n[study] {len(rows)} runs -> {path}", flush=True)
    return path
