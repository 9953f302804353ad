"""What a finished run leaves and what a new one may do with it: config.json states the saved dtype (every
method's output loads as the input did), train_summary.json records the resolved settings, a folder holding a
run is refused unless --overwrite (which removes only what a run writes), a selection made for another
architecture is refused by train, check and freeze unless allowed, and a model that is not there is one line."""

from __future__ import annotations

import json

import pytest
import torch

from helpers_cli import run_cli
from helpers_models import build_tiny_llama, write_cpt_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.freezing import freeze
from spectrum_llm.preflight import check
from spectrum_llm.scanning import scan
from spectrum_llm.selection import load_selection, select
from spectrum_llm.training import TrainConfig, train

pytestmark = pytest.mark.slow  # trains three tiny runs


def _cfg(work, out, **kw) -> TrainConfig:
    base = dict(
        model=str(work["model"]),
        data=str(work["data"]),
        output_dir=str(out),
        seq_len=32,
        batch_size=4,
        max_steps=2,
        save_steps=100,
        progress=False,
        scan=str(work["root"] / "scan.json"),
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    work = {
        "root": root,
        "model": build_tiny_llama(root / "model", dtype="bfloat16"),
        "wide": build_tiny_llama(root / "wide", hidden_size=64),
        "data": write_cpt_data(root / "cpt.jsonl"),
    }
    sel = select(scan(work["model"], output=root / "scan.json"), top_percent=50)
    work["sel"] = root / "sel.json"
    work["sel"].write_text(json.dumps(sel.to_json()))
    return work


@pytest.fixture(scope="module")
def runs(work):
    outs = {}
    for method, kw in (("spectrum", {"selection": str(work["sel"])}), ("full", {}), ("lora", {})):
        outs[method] = work["root"] / method
        train(_cfg(work, outs[method], method=method, **kw))
    return outs


@pytest.mark.parametrize("method", ["spectrum", "full", "lora"])
def test_every_method_output_loads_in_the_input_dtype(runs, work, method):
    from transformers import AutoModelForCausalLM

    assert json.loads((runs[method] / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(runs[method], dtype="auto")
    assert model.dtype == AutoModelForCausalLM.from_pretrained(work["model"], dtype="auto").dtype == torch.bfloat16


def test_the_summary_records_the_resolved_settings(runs):
    config = json.loads((runs["spectrum"] / "train_summary.json").read_text())["config"]
    assert config["learning_rate"] == 2e-5 and config["packing"] is True and config["train_lm_head"] is True
    lora = json.loads((runs["lora"] / "train_summary.json").read_text())["config"]
    assert lora["learning_rate"] == 2e-4 and lora["train_lm_head"] is False


def test_a_folder_holding_a_run_is_refused_without_overwrite(runs, work):
    with pytest.raises(SpectrumError, match="already holds a run .*Pass --overwrite"):
        train(_cfg(work, runs["full"], method="full"))


def test_overwrite_removes_the_earlier_runs_files_and_keeps_the_users(runs, work):
    out = runs["lora"]
    (out / "notes.txt").write_text("mine")
    train(_cfg(work, out, selection=str(work["sel"]), overwrite=True))
    assert not (out / "adapter").exists() and not (out / "lora_config.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "train_summary.json").read_text())["method"] == "spectrum"


def test_resume_and_overwrite_together_are_refused(work):
    with pytest.raises(SpectrumError, match="either --resume .* or --overwrite"):
        train(_cfg(work, work["root"] / "both", resume=True, overwrite=True))


def test_a_selection_records_its_architecture(work):
    arch = load_selection(work["sel"]).architecture
    assert arch["layers"] == 2 and arch["shapes"]["self_attn.q_proj"] == [32, 32]


def test_train_refuses_a_selection_of_another_architecture(work):
    with pytest.raises(
        SpectrumError,
        match=r"made for .*model, not for .*wide \(mlp.down_proj is 32x64, in this model 64x128\).*--allow-other-model",
    ):
        train(_cfg(work, work["root"] / "other", model=str(work["wide"]), selection=str(work["sel"])))
    assert not (work["root"] / "other").exists()


def test_freeze_refuses_another_architecture_unless_allowed(work):
    from transformers import AutoModelForCausalLM

    wide = AutoModelForCausalLM.from_pretrained(work["wide"])
    with pytest.raises(SpectrumError, match="--allow-other-model"):
        freeze(wide, work["sel"])
    assert freeze(wide, work["sel"], allow_other_model=True).trainable_params > 0


def test_the_same_architecture_under_another_name_is_accepted(work, tmp_path):
    twin = build_tiny_llama(tmp_path / "twin", seed=1)  # other weights, same shapes (as base vs instruct)
    assert check(work["sel"], twin, activations=False).unmatched == []


def test_check_refuses_another_architecture_unless_allowed(work):
    assert run_cli(["check", str(work["sel"]), "--model", str(work["wide"]), "--no-activations"]) == 2
    assert (
        run_cli(["check", str(work["sel"]), "--model", str(work["wide"]), "--no-activations", "--allow-other-model"])
        == 0
    )


def test_a_selection_without_an_architecture_still_loads_and_freezes(work, tmp_path):
    old = json.loads(work["sel"].read_text())
    del old["architecture"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    from transformers import AutoModelForCausalLM

    assert freeze(AutoModelForCausalLM.from_pretrained(work["wide"]), tmp_path / "old.json").trainable_params > 0


def test_a_missing_model_is_one_line(work, capsys):
    assert (
        run_cli(["train", "--model", "/no/such/dir", "--data", str(work["data"]), "-o", str(work["root"] / "none")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: /no/such/dir: no such file or folder") and len(err.splitlines()) == 1


def test_train_help_names_the_output_flag(capsys):
    run_cli(["train", "--help"])
    text = capsys.readouterr().out
    assert "OUTPUT_DIR" not in text and "-o/--output-dir" in text and "--overwrite" in text
