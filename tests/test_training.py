"""spectrum train on a tiny Llama: loss goes down, exactly the selection changes, outputs load, runs resume.

Each training run is a module-scoped fixture shared by the tests that check it, so the file stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_models import build_tiny_llama, write_cpt_data, write_sft_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.training import SUMMARY_FILE, TrainConfig, train

pytestmark = pytest.mark.slow  # every test here trains (the torchrun ones in two processes)

# the embeddings stay frozen here, so gradient checkpointing must still reach layer 0
SELECTION = [
    "^model.layers.0.self_attn.q_proj.(weight|bias)$",
    "^model.layers.1.mlp.down_proj.(weight|bias)$",
    "^model.norm.weight$",
]
SELECTED = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}


def _cfg(model, data, out, **kw) -> TrainConfig:
    base = dict(
        model=str(model),
        data=str(data),
        output_dir=str(out),
        seq_len=32,
        batch_size=4,
        max_steps=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        lr_scheduler="constant",
    )
    return TrainConfig(**{**base, **kw})


def _changed(a: Path, b: Path) -> set[str]:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert x[k].dtype == y[k].dtype, k
    return {
        k
        for k in x
        if not torch.equal(
            x[k].view(torch.uint8) if x[k].dtype == torch.bfloat16 else x[k],
            y[k].view(torch.uint8) if y[k].dtype == torch.bfloat16 else y[k],
        )
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "sel.txt").write_text("\n".join(SELECTION) + "\n")
    return {
        "root": root,
        "bf16": build_tiny_llama(root / "bf16", dtype="bfloat16"),
        "fp32": build_tiny_llama(root / "fp32", dtype="float32"),
        "cpt": write_cpt_data(root / "cpt.jsonl"),
        "sft": write_sft_data(root / "sft.jsonl"),
        "sel": root / "sel.txt",
    }


@pytest.fixture(scope="module")
def cpt_run(work):
    out = work["root"] / "cpt-spectrum"
    summary = train(
        _cfg(work["bf16"], work["cpt"], out, selection=str(work["sel"]), gradient_checkpointing=True, eval_split=0.1)
    )
    return summary, out


@pytest.fixture(scope="module")
def sft_run(work):
    out = work["root"] / "sft-spectrum"
    summary = train(
        _cfg(work["fp32"], work["sft"], out, task="sft", top_percent=50, scan=str(work["root"] / "scan-fp32.json"))
    )
    return summary, out


def test_cpt_lowers_the_training_loss(cpt_run):
    summary, _ = cpt_run
    assert summary.steps == 8 and len(summary.losses) == 8
    assert sum(summary.losses[-2:]) / 2 < summary.losses[0]
    assert summary.eval_loss is not None


def test_cpt_changes_exactly_the_selected_tensors(work, cpt_run):
    _, out = cpt_run
    assert _changed(work["bf16"], out) == SELECTED


def test_output_loads_with_transformers_in_the_input_dtype(cpt_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = cpt_run
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_run_writes_summary_and_selection(cpt_run):
    summary, out = cpt_run
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["method"] == "spectrum" and data["trainable_params"] == summary.trainable_params
    assert 0 < summary.trainable_params < summary.total_params
    assert summary.tokens > 0 and summary.tokens_per_second > 0 and summary.peak_memory_bytes > 0
    assert summary.precision == "bf16" and summary.dtype == "bfloat16"
    assert json.loads((out / "selection.json").read_text())["patterns"] == SELECTION
    assert "unfrozen_parameters" in (out / "selection.yaml").read_text()


def test_sft_lowers_the_loss_and_changes_only_the_selection(work, sft_run):
    summary, out = sft_run
    assert sum(summary.losses[-2:]) / 2 < summary.losses[0]
    selected = json.loads((out / "selection.json").read_text())
    assert summary.selected_modules == len(selected["modules"]) > 0
    changed = _changed(work["fp32"], out)
    expected = {m + ".weight" for m in selected["modules"]} | {"lm_head.weight", "model.embed_tokens.weight"}
    assert changed == expected
    assert (work["root"] / "scan-fp32.json").is_file()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_full_and_lora_run_on_the_same_data(work, method):
    out = work["root"] / f"cpt-{method}"
    summary = train(_cfg(work["bf16"], work["cpt"], out, method=method, max_steps=6))
    assert sum(summary.losses[-2:]) / 2 < summary.losses[0]
    changed = _changed(work["bf16"], out)
    if method == "full":
        assert summary.trainable_params == summary.total_params and len(changed) == 21
    else:
        assert summary.trainable_params < summary.total_params
        assert changed and all("proj" in k for k in changed)
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_lora_on_a_selection_adapts_only_the_selected_modules(work):
    out = work["root"] / "cpt-lora-selection"
    summary = train(
        _cfg(work["bf16"], work["cpt"], out, method="lora", selection=str(work["sel"]), max_steps=4, lora_rank=8)
    )
    cfg = json.loads((out / "lora_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    assert set(cfg["rank_pattern"].values()) == {8}  # a .txt selection has no scores: every target gets --lora-rank
    assert _changed(work["bf16"], out) == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    assert summary.trainable_params == 8 * (32 + 32) + 8 * (64 + 32)


def test_resume_continues_from_the_last_checkpoint(work):
    out = work["root"] / "resume"
    first = train(
        _cfg(
            work["bf16"], work["cpt"], out, selection=str(work["sel"]), max_steps=2, save_steps=2, keep_checkpoints=True
        )
    )
    assert first.steps == 2 and (out / "checkpoint-2").is_dir()
    with pytest.raises(SpectrumError, match="--resume"):
        train(_cfg(work["bf16"], work["cpt"], out, selection=str(work["sel"]), max_steps=4, save_steps=2))
    second = train(
        _cfg(work["bf16"], work["cpt"], out, selection=str(work["sel"]), max_steps=4, save_steps=2, resume=True)
    )
    assert second.resumed_from and second.resumed_from.endswith("checkpoint-2")
    assert second.steps == 4 and len(second.losses) == 4  # log history carries over from the checkpoint


def test_cli_reads_a_config_file_and_flags_win(work, tmp_path):
    import yaml

    from spectrum_llm.cli import main

    out = tmp_path / "cli"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(work["bf16"]),
                "data": str(work["cpt"]),
                "output-dir": str(out),
                "method": "full",
                "max_steps": 50,
                "seq_len": 32,
                "batch_size": 4,
            }
        )
    )
    try:
        main(
            ["train", "--config", str(cfg), "--max-steps", "1", "--selection", str(work["sel"]), "--method", "spectrum"]
        )
    except SystemExit as e:  # typer exits 0 after a command
        assert not e.code
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["steps"] == 1 and data["method"] == "spectrum"


@pytest.mark.parametrize(
    "case,match",
    [
        ("missing-data", "does not exist"),
        ("seq-len", "beyond .* maximum of 128"),
        ("output-not-writable", "is a file, not a folder"),
        ("no-space", "Not enough space"),
        ("other-model-selection", "match no parameter"),
        ("selection-with-full", "apply to --method spectrum"),
        ("unknown-setting", "unknown setting"),
    ],
)
def test_bad_input_fails_before_training(work, tmp_path, monkeypatch, case, match):
    kw = {"selection": str(work["sel"])}
    data, out = work["cpt"], tmp_path / "out"
    if case == "missing-data":
        data = tmp_path / "nope.jsonl"
    elif case == "seq-len":
        kw["seq_len"] = 129
    elif case == "output-not-writable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    elif case == "no-space":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    elif case == "other-model-selection":
        (tmp_path / "other.txt").write_text("^transformer.h.0.attn.c_attn.(weight|bias)$\n")
        kw["selection"] = str(tmp_path / "other.txt")
    elif case == "selection-with-full":
        kw["method"] = "full"
    with pytest.raises(SpectrumError, match=match):
        if case == "unknown-setting":
            TrainConfig.from_dict({"model": "m", "learning_rat": 1})
        train(_cfg(work["bf16"], data, out, **kw))
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_two_process_cpu_run_keeps_ranks_identical_and_frozen_untouched(work, tmp_path, engine, free_port):
    out = tmp_path / engine
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
    }
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port),
            str(Path(__file__).with_name("helpers_training_dist.py")),
            str(work["bf16"]),
            str(work["cpt"]),
            str(out),
            engine,
            str(work["sel"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2 and r0["steps_checked"] == 3
    assert r0["hashes"] == r1["hashes"] and len(r0["hashes"]) == 21
    assert set(r0["trainable"]) == SELECTED
    assert r0["sharded"] == (engine == "fsdp2")
    assert json.loads((out / SUMMARY_FILE).read_text())["engine"] == engine
    for r in (r0, r1):
        assert r["frozen_with_grad"] == [] and r["frozen_in_optimizer"] == []
        assert r["dtypes"]["model.layers.0.self_attn.q_proj.weight"] == "torch.float32"  # fp32 master copy
        assert r["dtypes"]["model.layers.0.self_attn.k_proj.weight"] == "torch.bfloat16"  # frozen stays bf16
    assert _changed(work["bf16"], out) == SELECTED


def test_row_range_selection_keeps_the_other_rows_bit_identical(work, tmp_path):
    (tmp_path / "rows.txt").write_text("^model.layers.0.self_attn.q_proj.weight$[0:8]\n")
    out = tmp_path / "rows"
    summary = train(_cfg(work["bf16"], work["cpt"], out, selection=str(tmp_path / "rows.txt"), max_steps=3))
    assert summary.trainable_params == 8 * 32
    assert _changed(work["bf16"], out) == {"model.layers.0.self_attn.q_proj.weight"}
    before = load_file(str(work["bf16"] / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    after = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(before[8:].view(torch.int16), after[8:].view(torch.int16))
    assert not torch.equal(before[:8].view(torch.int16), after[:8].view(torch.int16))


def test_tied_embeddings_are_saved_once_like_the_input(tmp_path):
    model = build_tiny_llama(tmp_path / "tied", dtype="float32", tie_word_embeddings=True)
    data = write_cpt_data(tmp_path / "d.jsonl")
    train(_cfg(model, data, tmp_path / "out", method="full", max_steps=1))
    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert "lm_head.weight" not in before and after.keys() == before.keys()


# ------------------------------------------------------------------------------- what a run says and keeps


def test_short_run_logs_the_last_steps_loss_and_keeps_no_checkpoint(work, tmp_path):
    out = tmp_path / "short"
    summary = train(
        _cfg(work["bf16"], work["cpt"], out, selection=str(work["sel"]), max_steps=2, logging_steps=10, save_steps=1)
    )
    assert summary.loss_steps == [2] and len(summary.losses) == 1
    data = json.loads((out / SUMMARY_FILE).read_text())
    assert data["losses"] == summary.losses and data["model"] == str(work["bf16"])
    assert data["model_path"] == str(Path(work["bf16"]).resolve())
    assert not list(out.glob("checkpoint-*")) and data["checkpoints"] == []


def test_keep_checkpoints_keeps_the_last_resumable_one(work, tmp_path):
    out = tmp_path / "kept"
    summary = train(
        _cfg(
            work["bf16"], work["cpt"], out, selection=str(work["sel"]), max_steps=3, save_steps=1, keep_checkpoints=True
        )
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"] == summary.checkpoints
    assert (out / "checkpoint-3" / "optimizer.pt").is_file()


def test_default_seq_len_is_the_models_maximum_when_shorter(work, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="spectrum_llm"):
        summary = train(_cfg(work["bf16"], work["cpt"], tmp_path / "o", method="full", seq_len=None, max_steps=1))
    assert summary.config["seq_len"] == 128
    assert "seq-len 128: the model's maximum (the default is 512)" in caplog.messages


def test_cli_train_is_quiet_one_bar_one_start_and_one_summary_line(work, tmp_path, capsys):
    from spectrum_llm.cli import main

    try:
        main(
            [
                "train",
                "--model",
                str(work["bf16"]),
                "--data",
                str(work["cpt"]),
                "-o",
                str(tmp_path / "q"),
                "--seq-len",
                "32",
                "--max-steps",
                "3",
                "--logging-steps",
                "1",
                "--top-percent",
                "50",
            ]
        )
    except SystemExit as e:
        assert not e.code
    cap = capsys.readouterr()
    text = cap.out + cap.err
    for noise in ("{'loss'", "'grad_norm'", "Map", "Generating", "tokenize", "Loading weights", "Filter", "it/s]"):
        assert noise not in text, noise
    lines = [ln for ln in cap.out.splitlines() if ln.startswith("[spectrum]")]
    assert [ln.split()[1] for ln in lines] == ["selected", "spectrum:", "done:"], lines
    assert re.search(r"done: 3 steps, loss \d\.\d{1,3}(e-?\d+)?, ", lines[-1]), lines[-1]
    assert cap.err.count("train ") == 1  # one progress bar, drawn once when the output is not a terminal
    assert re.search(r"scan .* 21/21 tensors", cap.err)  # the scan before training shows its progress too


def test_embeddings_that_dominate_the_trainable_parameters_are_named(work, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="spectrum_llm"):
        train(_cfg(work["bf16"], work["cpt"], tmp_path / "e", top_percent=10, max_steps=1))
    assert (
        "are embeddings/lm_head, which every selection trains; pass --no-train-embeddings --no-train-lm-head"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spectrum_llm"):
        summary = train(
            _cfg(
                work["bf16"],
                work["cpt"],
                tmp_path / "n",
                top_percent=50,
                max_steps=1,
                train_embeddings=False,
                train_lm_head=False,
            )
        )
    assert "embeddings/lm_head" not in caplog.text
    selected = json.loads((tmp_path / "n" / "selection.json").read_text())
    assert selected["extras"] == [] and summary.trainable_params == selected["trainable_params"]


def test_select_and_train_count_a_tied_model_the_same_way(tmp_path):
    import spectrum_llm

    model = build_tiny_llama(tmp_path / "tied", dtype="float32", tie_word_embeddings=True)
    sel = spectrum_llm.select(spectrum_llm.scan(model), top_percent=50)
    assert sel.extras == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert (
        spectrum_llm.select(spectrum_llm.scan(model), top_percent=50, model=str(model)).total_params == sel.total_params
    )
    summary = train(_cfg(model, write_cpt_data(tmp_path / "d.jsonl"), tmp_path / "out", top_percent=50, max_steps=1))
    assert (summary.trainable_params, summary.total_params) == (sel.trainable_params, sel.total_params)
    untied_head_only = spectrum_llm.select(spectrum_llm.scan(model), top_percent=50, train_embeddings=False)
    assert untied_head_only.extras == []  # the tied head is the embedding: --no-train-embeddings drops both
