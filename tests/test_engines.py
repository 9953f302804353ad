"""The engines users scale to, run for real on two CPU processes: DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, each with
a row-range selection, a top-layers selection (embeddings frozen) and LoRA on the same layers.

A cell is one ``torchrun`` launch of helpers_engines_dist.py (2 steps, then ``--resume`` to 3), checked here:
exactly the selected tensors (and rows) changed; the weights equal a single-process run with the same global
batch (4) within TOLERANCE; the optimizer holds state only for what trains; the saved model loads in this (a
fresh) process; the resumed run continued from checkpoint-2. Combinations an engine cannot train exactly
(row ranges under ZeRO-3 and FSDP2) are refused before training. The single-process references are shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_engines_dist import DEEPSPEED, config
from helpers_models import build_tiny_llama, write_cpt_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.selection import Selection
from spectrum_llm.training import SUMMARY_FILE, TrainConfig, train
from spectrum_llm.training.engine import check_selection

ROWS = ["^model.layers.0.self_attn.q_proj.weight$[0:8]", "^model.layers.1.mlp.down_proj.weight$"]
TOP = [
    f"^model.layers.1.{m}.weight$"
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]
SELECTIONS = {"rows": ROWS, "top": TOP, "lora": TOP}
CHANGED = {
    "rows": {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"},
    "top": {p.strip("^$") for p in TOP},
    "lora": {p.strip("^$") for p in TOP},
}
ENGINES = {"ddp": "ddp", "fsdp2": "fsdp2", "zero2": "deepspeed-zero2", "zero3": "deepspeed-zero3"}
REFUSED = {("zero3", "rows"), ("fsdp2", "rows")}
# 2 processes x 2 rows vs 1 process x 4 rows, 3 Adam steps at lr 1e-2 in fp32: only the order of the sums differs
TOLERANCE = 1e-5

pytestmark = pytest.mark.slow


def _torchrun(args: list[str], port: int, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
    }
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), *args]
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not only torchrun
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(args[:1])} ran over {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    sel = {}
    for kind, pats in SELECTIONS.items():
        sel[kind] = root / f"{kind}.txt"
        sel[kind].write_text("\n".join(pats) + "\n")
    return {
        "root": root,
        "model": build_tiny_llama(root / "fp32", dtype="float32"),
        "data": write_cpt_data(root / "cpt.jsonl"),
        "sel": sel,
    }


def _weights(kind: str) -> str:
    """What a run saves that trained: the model, or for LoRA the adapter (sharded LoRA runs save only that)."""
    return "adapter/adapter_model.safetensors" if kind == "lora" else "model.safetensors"


def _method(kind: str) -> str:
    return "lora" if kind == "lora" else "spectrum"


@pytest.fixture(scope="module")
def reference(work):
    """One process, batch 4, 3 steps: the run each cell must match."""
    runs = {}

    def get(kind: str) -> dict[str, torch.Tensor]:
        if kind not in runs:
            out = work["root"] / f"single-{kind}"
            cfg = config(
                str(work["model"]),
                str(work["data"]),
                str(out),
                "single",
                _method(kind),
                str(work["sel"][kind]),
                max_steps=3,
            )
            train(TrainConfig(**{**vars(cfg), "batch_size": 4}))
            runs[kind] = load_file(str(out / _weights(kind)))
        return runs[kind]

    return get


def _whole_numel(kind: str) -> int:
    """Elements of the tensors that train, whole (row ranges included) or, for LoRA, of the adapters."""
    sizes = {
        "q_proj": 32 * 32,
        "k_proj": 16 * 32,
        "v_proj": 16 * 32,
        "o_proj": 32 * 32,
        "gate_proj": 64 * 32,
        "up_proj": 64 * 32,
        "down_proj": 32 * 64,
    }
    if kind == "rows":
        return sizes["q_proj"] + sizes["down_proj"]
    if kind == "top":
        return sum(sizes.values())
    shapes = {
        "q_proj": (32, 32),
        "k_proj": (32, 16),
        "v_proj": (32, 16),
        "o_proj": (32, 32),
        "gate_proj": (32, 64),
        "up_proj": (32, 64),
        "down_proj": (64, 32),
    }  # (in, out)
    return sum(4 * (i + o) for i, o in shapes.values())  # rank 4: A is 4 x in, B is out x 4


CELLS = [(e, k) for e in ENGINES for k in SELECTIONS if (e, k) not in REFUSED]


@pytest.mark.parametrize("engine,kind", CELLS, ids=[f"{e}-{k}" for e, k in CELLS])
def test_engine_cell(work, reference, engine, kind, free_port):
    out = work["root"] / f"{engine}-{kind}"
    proc = _torchrun(
        [
            str(Path(__file__).with_name("helpers_engines_dist.py")),
            str(work["model"]),
            str(work["data"]),
            str(out),
            engine,
            _method(kind),
            str(work["sel"][kind]),
        ],
        free_port,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2 and r0["second"]["engine"] == ENGINES[engine]

    # --resume continued the 2-step run from its checkpoint
    assert r0["second"]["steps"] == 3
    if engine != "fsdp2":  # see helpers_engines_dist.main
        assert r0["first"]["steps"] == 2 and r0["second"]["resumed_from"].endswith("checkpoint-2")

    # the optimizer holds state only for what trains (whole tensors for row ranges), sharded where the engine shards
    held = [r0["optimizer_elements"], r1["optimizer_elements"]]
    expected = _whole_numel(kind)
    if engine == "ddp":
        assert held == [expected, expected]
    else:
        assert sum(held) == expected and max(held) < expected

    # exactly the selected tensors (and rows) changed, and the result matches one process with the same batch
    after = load_file(str(out / _weights(kind)))
    if kind == "lora":
        targets = {k.split(".lora_")[0].removeprefix("base_model.model.") + ".weight" for k in after}
        assert targets == CHANGED[kind]
        assert all(after[k].abs().sum() > 0 for k in after if ".lora_B." in k)  # B starts at zero: it trained
    else:
        before = load_file(str(work["model"] / "model.safetensors"))
        assert {k for k in before if not torch.equal(before[k], after[k])} == CHANGED[kind]
    if kind == "rows":
        q = "model.layers.0.self_attn.q_proj.weight"
        assert torch.equal(before[q][8:], after[q][8:]) and not torch.equal(before[q][:8], after[q][:8])
    ref = reference(kind)
    worst = max((after[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= TOLERANCE, f"{engine}/{kind} differs from one process by {worst:.3g}"

    # what was saved loads in a fresh process (this one) and gives a finite loss
    from transformers import AutoModelForCausalLM

    if kind == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work["model"]), out / "adapter")
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.arange(1, 17).unsqueeze(0)
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    assert json.loads((out / SUMMARY_FILE).read_text())["engine"] == ENGINES[engine]


@pytest.mark.parametrize("engine", ["zero3", "fsdp2"])
def test_row_ranges_are_refused_where_the_engine_shards_weights(engine):
    cfg = TrainConfig(
        model="m",
        data="d",
        output_dir="o",
        fsdp=engine == "fsdp2",
        deepspeed=str(DEEPSPEED / f"deepspeed_{engine}.json") if engine == "zero3" else None,
    )
    with pytest.raises(SpectrumError, match="Row ranges .* cannot train under .*ZeRO-2"):
        check_selection(cfg, Selection(modules=[], patterns=ROWS))


def test_row_ranges_train_under_zero2():
    cfg = TrainConfig(model="m", data="d", output_dir="o", deepspeed=str(DEEPSPEED / "deepspeed_zero2.json"))
    check_selection(cfg, Selection(modules=[], patterns=ROWS))  # no error


def test_cli_refuses_row_ranges_under_zero3_before_training_in_one_line(work, free_port):
    out = work["root"] / "refused"
    proc = _torchrun(
        [
            "-m",
            "spectrum_llm",
            "train",
            "--model",
            str(work["model"]),
            "--data",
            str(work["data"]),
            "--output-dir",
            str(out),
            "--selection",
            str(work["sel"]["rows"]),
            "--max-steps",
            "1",
            "--deepspeed",
            str(DEEPSPEED / "deepspeed_zero3.json"),
        ],
        free_port,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("cannot train under DeepSpeed ZeRO-3" in e for e in errors), proc.stderr[-3000:]
    assert "[rank0]: Traceback" not in proc.stderr and not out.exists()


def test_missing_deepspeed_is_one_line_naming_the_extra(work, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    cfg = TrainConfig(
        model=str(work["model"]),
        data=str(work["data"]),
        output_dir=str(tmp_path / "o"),
        deepspeed=str(DEEPSPEED / "deepspeed_zero2.json"),
    )
    with pytest.raises(SpectrumError, match=r"pip install 'spectrum-llm\[deepspeed\]'"):
        train(cfg)
    assert not (tmp_path / "o").exists()
