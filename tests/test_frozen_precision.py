"""Spectrum on a low-bit frozen base (--frozen-precision int8/nf4): the frozen linear modules are held by
bitsandbytes, exactly the selection trains, and the saved model holds every frozen tensor of the input bit for bit,
loadable by plain transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_lowbit import SELECTED, build_model, tensors, write_selection
from helpers_models import write_cpt_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.selection import load_selection
from spectrum_llm.training import TrainConfig, lowbit, prepare_model, train

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.slow  # each trains a few steps
ROOT = Path(__file__).resolve().parents[1]


def _config(model: Path, tmp: Path, precision: str, **kw) -> TrainConfig:
    return TrainConfig(
        model=str(model),
        data=str(write_cpt_data(tmp / "d.jsonl")),
        output_dir=str(tmp / "out"),
        selection=str(write_selection(tmp / "sel.txt")),
        frozen_precision=precision,
        max_steps=3,
        seq_len=32,
        batch_size=2,
        learning_rate=1e-2,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module", params=["nf4", "int8"])
def trained(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    model = build_model(tmp / "model")
    summary = train(_config(model, tmp, request.param))
    return model, tmp / "out", summary


def test_exactly_the_selection_changes_and_the_summary_says_the_precision(trained):
    model, out, summary = trained
    before, after = tensors(model), tensors(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(SELECTED)
    assert summary.frozen_precision in ("nf4", "int8") and summary.lowbit["quantized"] == 12  # 14 linears, 2 train
    saved = json.loads((out / "train_summary.json").read_text())
    assert saved["frozen_precision"] == summary.frozen_precision and saved["lowbit"]["kept"] == []


def test_the_saved_model_loads_without_bitsandbytes_with_every_frozen_tensor_bit_identical(trained):
    from transformers import AutoModelForCausalLM

    model, out, _ = trained
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert not any("bitsandbytes" in type(m).__module__ for m in loaded.modules())
    state = loaded.state_dict()
    for name, tensor in tensors(model).items():
        if name not in SELECTED:
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name


def test_frozen_linears_are_held_by_bitsandbytes_and_the_selection_in_fp32(tmp_path):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    model_dir = build_model(tmp_path / "model", intermediate_size=688)  # a shape the issue's CPU kernel rejected
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    cfg = TrainConfig(model=str(model_dir), method="spectrum", frozen_precision="nf4")
    prepared = prepare_model(cfg, model, load_selection(write_selection(tmp_path / "sel.txt")))
    mods = dict(model.named_modules())
    assert isinstance(mods["model.layers.0.mlp.up_proj"], bnb.nn.Linear4bit)  # 64 -> 688
    assert isinstance(mods["model.layers.0.mlp.down_proj"], bnb.nn.Linear4bit)  # 688 -> 64
    assert type(mods["model.layers.0.self_attn.q_proj"]) is torch.nn.Linear  # it trains
    assert type(mods["lm_head"]) is torch.nn.Linear  # the head is never quantized
    assert {n: p.dtype for n, p in model.named_parameters() if p.requires_grad} == dict.fromkeys(
        SELECTED, torch.float32
    )
    assert prepared.lowbit.quantized == 12 and prepared.lowbit.kept == []


def test_gradients_still_reach_the_input_of_an_nf4_layer_after_an_evaluation_pass():
    """bitsandbytes repacks 4-bit weights for inference on AVX512-BF16 CPUs, into a layout with no backward."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16))
    lowbit.quantize_linears(model, "nf4", skip=lambda n, m: False)
    layer = model[0]
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    x = torch.randn(2, 8, 64, dtype=torch.bfloat16)
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    x.requires_grad_(True)
    model(x).float().sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.ones(2, 8, 32, dtype=torch.bfloat16) @ weight)


def test_a_module_the_kernel_rejects_stays_in_16_bit_and_is_counted(tmp_path, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM

    model_dir = build_model(tmp_path / "model", intermediate_size=688)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    works = lowbit._works
    monkeypatch.setattr(lowbit, "_works", lambda m, n_in, *a: n_in != 688 and works(m, n_in, *a))
    cfg = TrainConfig(model=str(model_dir), method="spectrum", frozen_precision="nf4")
    with caplog.at_level("INFO", logger="spectrum_llm.training.lowbit"):
        prepared = prepare_model(cfg, model, load_selection(write_selection(tmp_path / "sel.txt")))
    assert prepared.lowbit.kept == ["model.layers.0.mlp.down_proj"]  # layer 1's down_proj trains
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert "1 kept in 16-bit because the nf4 kernel rejects their shape" in caplog.text


def test_a_model_the_kernel_rejected_in_the_issue_trains_and_saves_bit_identical(tmp_path):
    model = build_model(tmp_path / "model", intermediate_size=688)
    train(_config(model, tmp_path, "nf4"))
    before, after = tensors(model), tensors(tmp_path / "out")
    assert {k for k in before if not torch.equal(before[k], after[k])} == set(SELECTED)


def test_an_already_quantized_checkpoint_is_refused(tmp_path):
    model = build_model(tmp_path / "model")
    cfg = json.loads((model / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpectrumError, match=r"already quantized \(GPTQ 4-bit\).*--frozen-precision bf16"):
        train(_config(model, tmp_path, "nf4"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"method": "lora"}, "applies to --method spectrum"),
        ({"frozen_precision": "int4"}, "Unknown --frozen-precision 'int4'"),
        ({"resume": True}, "--resume is not available with --frozen-precision nf4"),
    ],
)
def test_bad_settings_are_one_clear_error(kw, match):
    cfg = TrainConfig(model="m", data="d", output_dir="o", frozen_precision="nf4")
    for k, v in kw.items():
        setattr(cfg, k, v)
    with pytest.raises(SpectrumError, match=match):
        cfg.validate()


@pytest.mark.parametrize("flags", [["--frozen-precision", "nf4"], ["--method", "qlora"]])
def test_missing_bitsandbytes_is_one_line_naming_the_extra(tmp_path, flags):
    model = build_model(tmp_path / "model")
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['bitsandbytes'] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{ROOT / 'src'}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spectrum_llm",
            "train",
            "--model",
            str(model),
            "--data",
            str(write_cpt_data(tmp_path / "d.jsonl")),
            "-o",
            str(tmp_path / "out"),
            "--max-steps",
            "1",
            "--top-percent",
            "50",
            "--no-progress",
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip install 'spectrum-llm[quant]'" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
