"""What the CLI says: help that reads at 80 columns, and one count of a selection from select to report."""

from __future__ import annotations

import re

import pytest

from helpers_selection import synthetic_scan
from spectrum_llm.cli import app, main

COMMANDS = ["scan", "score", "select", "show", "compare", "report", "train", "convert"]


def _run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_reads_at_80_columns(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run(capsys, *([command] if command else []), "--help")
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines()), max(out.splitlines(), key=len)
    assert "…" not in out and not re.search(r"\w\.\.\.(\s|$)", out)  # nothing cut short (ARGS... is usage)
    assert "<bool>" not in out
    if command:
        import typer

        cmd = typer.main.get_command(app).commands[command]
        for param in cmd.params:
            for flag in (*param.opts, *param.secondary_opts):
                if flag.startswith("--"):
                    assert flag in out, flag  # every flag spelled out in full


def test_train_help_states_the_default_selection_and_what_is_saved(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = _run(capsys, "train", "--help")
    text = " ".join(out.split())
    assert "default 50" in text and "about 60% of SmolLM2-135M's parameters" in text
    assert "--keep-checkpoints" in text and "train_summary.json" in text and "checkpoint-N" in text


def test_select_and_report_give_one_count(tmp_path, capsys):
    scan = synthetic_scan({"self_attn.q_proj": [1.0, 2.0, 3.0, 4.0], "mlp.down_proj": [4.0, 3.0, 2.0, 1.0]})
    path = scan.save(tmp_path / "scan.json")
    code, _, err = _run(capsys, "select", path, "--top-percent", "50", "-o", tmp_path / "sel.json")
    assert code == 0, err
    count = re.search(r"trains ([\d,]+) of ([\d,]+) parameters", err)
    assert "Selected 4 ranked modules + lm_head, model.embed_tokens by the per-type rule (Spectrum-50)" in err
    code, _, err = _run(capsys, "report", path, "--selection", tmp_path / "sel.json", "-o", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert f"Trains {count.group(1)} of {count.group(2)} parameters" in html
    assert "4 ranked modules (the red boxes) and 2 more modules (lm_head, model.embed_tokens)" in html
    assert "Chosen by the per-type rule (Spectrum-50): the top 50% of each module type" in html
    assert "A higher score means more signal" in html
    assert "red box: a selected module" in html


def test_select_states_what_the_embeddings_cost(tmp_path, capsys):
    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]}, numel=10)
    path = scan.save(tmp_path / "scan.json")
    _, _, err = _run(capsys, "select", path, "-o", tmp_path / "s.yaml")
    assert "embeddings/lm_head: trained (200 parameters, 95% of what trains); --embeddings freeze" in err
    _, _, err = _run(capsys, "select", path, "--no-train-embeddings", "--no-train-lm-head", "-o", tmp_path / "t.yaml")
    assert "trains 10 of 220 parameters" in err and "embeddings: frozen" in err
    _, _, err = _run(capsys, "select", path, "--embeddings", "freeze", "-o", tmp_path / "u.yaml")
    assert "trains 10 of 220 parameters" in err


def test_select_on_a_tied_model_counts_the_shared_tensor_once(tmp_path, capsys):
    scan = synthetic_scan({"mlp.down_proj": [1.0, 2.0]}, numel=10)
    scan.modules = [m for m in scan.modules if m.kind != "lm_head"]  # a tied head is not stored
    path = scan.save(tmp_path / "scan.json")
    _, _, err = _run(capsys, "select", path, "-o", tmp_path / "s.yaml")
    assert "+ model.embed_tokens (tied to lm_head)" in err
    assert "embeddings: trained (100 parameters, 91% of what trains); --embeddings freeze" in err
    _, _, err = _run(capsys, "select", path, "--no-train-embeddings", "-o", tmp_path / "t.yaml")
    assert "lm_head" not in (tmp_path / "t.yaml").read_text()


def test_train_flags_are_the_train_config_fields():
    import dataclasses

    import typer

    from spectrum_llm.training import TrainConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["cli"]:
            assert params[f.name].help == f.metadata["help"] and params[f.name].default is None, f.name
        else:
            assert f.name not in params, f.name
    assert "(default 4)" in params["batch_size"].help and TrainConfig().batch_size == 4


@pytest.mark.parametrize("verbose", [False, True])
def test_train_prints_the_log_lines_plainly_and_verbose_adds_debug(monkeypatch, capsys, verbose):
    import logging

    import spectrum_llm.training as training

    def fake_train(cfg):
        log = logging.getLogger("spectrum_llm.training")
        log.debug("details")
        log.info("started")
        log.warning("careful")

    monkeypatch.setattr(training, "train", fake_train)
    package = logging.getLogger("spectrum_llm")
    before = (package.level, list(package.handlers))
    code, out, _ = _run(capsys, "train", "--model", "m", "--data", "d", "-o", "o", *(["--verbose"] if verbose else []))
    assert code == 0
    assert out.splitlines() == [
        *(["[spectrum] details"] if verbose else []),
        "[spectrum] started",
        "[spectrum] warning: careful",
    ]
    assert (package.level, package.handlers) == before
