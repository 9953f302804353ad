"""The README's commands run as written, offline, on the default model (issue 24, item 5).

The scan, select, check, catalogue, report, show and compare lines are run in a folder holding only what the
README's own scan line writes; the train example's config is checked for every method, with its shipped data.
"""

import json
import re
import shlex
from pathlib import Path

import pytest

from helpers_cli import run_cli
from spectrum_llm.training import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RUN_HERE = ("scan", "select", "check", "catalogue", "report", "show", "compare")


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if len(words) > 1 and words[0] == "spectrum" and words[1] in RUN_HERE:
                out.append(words[1:])
    return out


def test_the_readme_lists_each_command():
    kinds = {c[0] for c in readme_commands()}
    assert kinds == set(RUN_HERE)
    assert not [c for c in readme_commands() if "MODEL" in c or "SCAN" in c], "placeholders cannot run as written"


@pytest.mark.slow  # the scan of the default model takes about 30 s on 2 CPU cores
def test_readme_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    commands = readme_commands()
    assert commands[0][:2] == ["scan", "builtin:smollm2-135m"]  # the scan the others read
    for argv in commands:
        if argv[0] == "scan" and argv != commands[0]:
            continue  # the scan variants (the reference estimator, torchrun) repeat the scan
        code = run_cli(argv)
        captured = capsys.readouterr()
        assert code == 0, f"spectrum {shlex.join(argv)}\n{captured.out}\n{captured.err}"
    for name in (
        "scan.json",
        "sel.yaml",
        "sel10.yaml",
        "compat.yaml",
        "llama.yaml",
        "lora.json",
        "report.html",
        "heatmap.png",
        "spectrum.html",
        "diff.png",
    ):
        assert (tmp_path / name).is_file(), name


@pytest.mark.parametrize("method", ["spectrum", "full", "lora"])
def test_train_example_config_is_valid_for_every_method(method, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = TrainConfig.from_yaml(ROOT / "examples" / "train_spectrum.yaml", method=method)
    cfg.validate()
    assert cfg.model == "builtin:smollm2-135m"
    assert Path(cfg.data).is_file()


def test_train_example_data_is_chat_with_answers():
    rows = [json.loads(x) for x in (ROOT / "examples" / "data" / "chat.jsonl").read_text().splitlines()]
    assert len(rows) >= 8
    assert all(any(m["role"] == "assistant" and m["content"] for m in r["messages"]) for r in rows)
