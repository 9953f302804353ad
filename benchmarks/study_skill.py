"""The study's skill task: two-step arithmetic word problems, whose answers are exact but cannot be memorised.

The fact task asks whether a model stores new facts; this one asks whether it learns a procedure. Every
problem comes from one of six template families (groups minus some, gain then loss, groups plus some,
sharing then eating, people leaving and arriving, a price sum), with operands of one or two digits and
answers from 1 to 138, so a 135M model can learn part of it in a few hundred steps.

Splits, so that test problems are new to the model in two ways:

- wording: each family has four surface wordings; wordings 0 and 1 train, 2 is the validation wording
  and 3 the test wording. No validation or test question is ever phrased as a training question.
- numbers: a family's number draw is used once across all splits, so no held-out problem repeats a
  trained problem's numbers either.

The template families themselves are shared by all splits: the task measures learning the procedure and
transferring it to a new phrasing, not inventing an operation never seen. Rows and scoring are the fact
task's (``Question: ...\\nAnswer:`` -> the number, exact match by teacher forcing; study_task).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.study_arms import STUDY_VERSION, Settings
from benchmarks.study_task import prompt, write_answer_task

SPLIT_WORDINGS = {"train": (0, 1), "val": (2,), "test": (3,)}


@dataclass(frozen=True)
class Family:
    """One kind of two-step problem: how its numbers are drawn, its answer, its nouns and four wordings."""

    draw: Callable[[random.Random], dict[str, int]]
    answer: Callable[[dict[str, int]], int]
    nouns: tuple[tuple[str, str], ...]  # (singular, plural)
    wordings: tuple[str, str, str, str]


def _groups_minus(r: random.Random) -> dict[str, int]:
    a, b = r.randint(2, 9), r.randint(2, 12)
    return {"a": a, "b": b, "c": r.randint(1, min(a * b - 1, 40))}


def _gain_loss(r: random.Random) -> dict[str, int]:
    a, b = r.randint(10, 60), r.randint(2, 30)
    return {"a": a, "b": b, "c": r.randint(2, 40)} if a + b > 40 else {"a": a, "b": b, "c": r.randint(2, a + b - 1)}


def _groups_plus(r: random.Random) -> dict[str, int]:
    return {"a": r.randint(2, 9), "b": r.randint(2, 12), "c": r.randint(1, 30)}


def _share_eat(r: random.Random) -> dict[str, int]:
    b, q = r.randint(2, 9), r.randint(2, 11)
    return {"a": b * q, "b": b, "c": r.randint(1, q - 1)}


def _leave_arrive(r: random.Random) -> dict[str, int]:
    a = r.randint(10, 60)
    return {"a": a, "b": r.randint(1, a - 1), "c": r.randint(1, 30)}


def _price(r: random.Random) -> dict[str, int]:
    return {"a": r.randint(2, 9), "b": r.randint(1, 20), "c": r.randint(2, 9)}


FAMILIES: dict[str, Family] = {
    "groups-minus": Family(
        _groups_minus,
        lambda n: n["a"] * n["b"] - n["c"],
        (("pen", "pens"), ("apple", "apples"), ("book", "books"), ("card", "cards"), ("cup", "cups")),
        (
            "A shelf holds {a} boxes of {b} {ns}. {c} {ns} are taken. How many {ns} are left?",
            "There are {a} bags with {b} {ns} in each. {c} {ns} get lost. How many {ns} remain?",
            "{a} crates each contain {b} {ns}. After {c} {ns} are sold, how many {ns} are there?",
            "Each of {a} baskets has {b} {ns}. If you remove {c} {ns}, how many {ns} do you still have?",
        ),
    ),
    "gain-loss": Family(
        _gain_loss,
        lambda n: n["a"] + n["b"] - n["c"],
        (("marble", "marbles"), ("sticker", "stickers"), ("coin", "coins"), ("shell", "shells")),
        (
            "Tom has {a} {ns}. He finds {b} more and then gives away {c}. How many {ns} does Tom have now?",
            "A jar holds {a} {ns}. Someone adds {b} {ns} and later takes out {c}. How many {ns} are in the jar?",
            "Mia starts with {a} {ns}, gets {b} more, then loses {c}. How many {ns} does she end with?",
            "Sam had {a} {ns}. After buying {b} {ns}, Sam gives {c} to a friend. How many {ns} does Sam keep?",
        ),
    ),
    "groups-plus": Family(
        _groups_plus,
        lambda n: n["a"] * n["b"] + n["c"],
        (("chair", "chairs"), ("plant", "plants"), ("flag", "flags"), ("lamp", "lamps")),
        (
            "There are {a} rows of {b} {ns} and {c} more {ns} on the side. How many {ns} are there in all?",
            "A gardener sets out {a} lines of {b} {ns}, then {c} more {ns}. How many {ns} are set out?",
            "{a} packs hold {b} {ns} each, and {c} loose {ns} lie beside them. How many {ns} are there altogether?",
            "Add {c} single {ns} to {a} groups of {b} {ns}. How many {ns} is that?",
        ),
    ),
    "share-eat": Family(
        _share_eat,
        lambda n: n["a"] // n["b"] - n["c"],
        (("cookie", "cookies"), ("grape", "grapes"), ("candy", "candies"), ("plum", "plums")),
        (
            "{a} {ns} are shared equally among {b} children. Each child eats {c}. How many {ns} does each child "
            "have left?",
            "{b} friends split {a} {ns} evenly, and each of them eats {c}. How many {ns} does each friend have now?",
            "A teacher gives out {a} {ns} equally to {b} pupils. Every pupil eats {c} of them. How many {ns} does "
            "each pupil keep?",
            "If {a} {ns} are divided evenly into {b} bowls and {c} {ns} are eaten from each bowl, how many {ns} are "
            "left in each bowl?",
        ),
    ),
    "leave-arrive": Family(
        _leave_arrive,
        lambda n: n["a"] - n["b"] + n["c"],
        (("person", "people"), ("child", "children"), ("worker", "workers"), ("guest", "guests")),
        (
            "A bus carries {a} {ns}. At a stop, {b} {ns} get off and {c} get on. How many {ns} are on the bus now?",
            "There are {a} {ns} in a hall. {b} leave and then {c} arrive. How many {ns} are in the hall?",
            "A train car holds {a} {ns}. {b} step out and {c} step in. How many {ns} are in the car?",
            "{a} {ns} wait in a line. {b} of them go home and {c} new {ns} join. How many {ns} are in the line now?",
        ),
    ),
    "price": Family(
        _price,
        lambda n: n["a"] * n["c"] + n["b"],
        (("pencil", "pencils"), ("ticket", "tickets"), ("toy", "toys"), ("notebook", "notebooks")),
        (
            "One {n} costs {a} dollars and a bag costs {b} dollars. How many dollars do {c} {ns} and a bag cost?",
            "Ben buys {c} {ns} for {a} dollars each and a bag for {b} dollars. What is the total cost in dollars?",
            "A {n} is {a} dollars. Ana buys {c} {ns} and pays {b} dollars for a bag. How many dollars does she spend?",
            "{c} {ns} at {a} dollars each, plus a bag for {b} dollars: how many dollars is the total?",
        ),
    ),
}


def make_problems(n_train: int, n_eval: int, seed: int) -> dict[str, list[dict]]:
    """Problems of the train, val and test splits (``n_eval`` each), families in turn, all from ``seed``.

    Each problem: ``id`` (its index in the split), family, wording, noun, numbers, question and answer
    (a decimal string). A family's number draw never repeats, within or across splits.
    """
    rng = random.Random(seed)
    names = list(FAMILIES)
    used: set[tuple] = set()
    out: dict[str, list[dict]] = {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        out[split] = []
        for i in range(n):
            name = names[i % len(names)]
            fam = FAMILIES[name]
            for _ in range(10_000):
                nums = fam.draw(rng)
                key = (name, *sorted(nums.items()))
                if key not in used:
                    break
            else:
                raise ValueError(f"family {name} has too few number draws for {n_train} + 2 x {n_eval} problems")
            used.add(key)
            wording = rng.choice(SPLIT_WORDINGS[split])
            noun, nouns = rng.choice(fam.nouns)
            question = fam.wordings[wording].format(n=noun, ns=nouns, **nums)
            out[split].append(
                {
                    "id": i,
                    "family": name,
                    "wording": wording,
                    "noun": noun,
                    "numbers": nums,
                    "question": question,
                    "answer": str(fam.answer(nums)),
                }
            )
    return out


def skill_rows(problems: dict[str, list[dict]], n_seen: int, seed: int) -> dict[str, list[dict]]:
    """Training rows (shuffled by ``seed``) and the scored splits; ``seen`` is the first ``n_seen`` trained problems
    (did the training problems themselves get learnt, whatever the transfer)."""
    parts = {"train": problems["train"], "seen": problems["train"][:n_seen], "val": problems["val"]}
    parts["test"] = problems["test"]
    out = {
        split: [{"id": p["id"], "prompt": prompt(p["question"]), "completion": p["answer"]} for p in probs]
        for split, probs in parts.items()
    }
    random.Random(seed).shuffle(out["train"])
    return out


def prepare(work: Path, pkgs: dict[str, Path], s: Settings, tokenizer_path: Path) -> dict[str, Any]:
    """The skill task's training rows and evaluation items, cached in ``work`` (the fact task's file layout)."""
    key = hashlib.sha256(
        json.dumps(
            [
                "skill",
                s.skill_problems,
                s.skill_eval,
                s.skill_seed,
                s.seed,
                s.general_blocks,
                s.chat_blocks,
                s.block_len,
                STUDY_VERSION,
            ]
        ).encode()
    ).hexdigest()[:12]

    def build() -> tuple[dict[str, Any], dict[str, list[dict]]]:
        problems = make_problems(s.skill_problems, s.skill_eval, s.skill_seed)
        return {"problems": problems}, skill_rows(problems, s.skill_eval, s.seed)

    return write_answer_task(work / f"skill-data-{key}", pkgs, s, tokenizer_path, build)
