"""--schedule dynamic on a tiny Llama: the active set switches every K steps within the static budget, the
optimizer holds state only for the active parameters, and a resumed run ends with the same weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers_models import build_tiny_llama, write_cpt_data
from spectrum_llm.errors import SpectrumError
from spectrum_llm.training import TrainConfig, train

pytestmark = pytest.mark.slow  # every test but the refusals trains


def _cfg(work, out, **kw) -> TrainConfig:
    base = dict(
        model=str(work["model"]),
        data=str(work["cpt"]),
        output_dir=str(out),
        seq_len=32,
        batch_size=4,
        max_steps=8,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        lr_scheduler="constant",
        top_percent=50,
        scan=str(work["root"] / "scan.json"),
        schedule="dynamic",
        switch_every=2,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


class Record(TrainerCallback):
    """After each optimizer step: the trainable tensors, their size and the optimizer state's size."""

    def __init__(self) -> None:
        self.steps: list[tuple[frozenset[str], int, int]] = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        active = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        inner = getattr(optimizer, "optimizer", optimizer)
        held = sum(s["exp_avg"].numel() for s in inner.state.values() if "exp_avg" in s)
        self.steps.append((active, numel, held))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("dynamic")
    return {
        "root": root,
        "model": build_tiny_llama(root / "m", dtype="bfloat16", layers=4),
        "cpt": write_cpt_data(root / "cpt.jsonl"),
    }


@pytest.fixture(scope="module")
def dynamic_run(work):
    rec = Record()
    summary = train(_cfg(work, work["root"] / "dyn"), callbacks=[rec])
    return summary, rec


def test_the_active_set_changes_only_every_k_steps(dynamic_run):
    _, rec = dynamic_run
    sets = [s for s, _, _ in rec.steps]
    assert len(sets) == 8
    assert all(sets[i] == sets[i + 1] for i in range(0, 8, 2))  # steps 1-2, 3-4, ... share a draw
    assert len(set(sets)) > 1


def test_every_draw_stays_within_the_static_budget(dynamic_run):
    summary, rec = dynamic_run
    assert {numel for _, numel, _ in rec.steps} == {summary.trainable_params}


def test_optimizer_state_is_only_for_the_active_parameters(dynamic_run):
    _, rec = dynamic_run
    assert all(held == numel for _, numel, held in rec.steps)


def test_resume_continues_identically(work):
    whole = work["root"] / "whole"
    train(_cfg(work, whole, max_steps=6))
    part = work["root"] / "part"
    train(_cfg(work, part, max_steps=3, save_steps=3, keep_checkpoints=True))
    resumed = train(_cfg(work, part, max_steps=6, resume=True))
    assert resumed.resumed_from and resumed.resumed_from.endswith("checkpoint-3")
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(switch_every=0), "--switch-every must be at least 1"),
        (dict(method="lora", top_percent=None), "--method lora has no selection"),
        (dict(method="full", top_percent=None), "--method full has no selection"),
        (dict(selection="sel.yaml", top_percent=None), "instead of --selection"),
        (dict(schedule="sometimes"), "Unknown --schedule"),
        (dict(schedule_weights="loss"), "Unknown --schedule-weights"),
    ],
)
def test_bad_settings_are_one_clear_error(kw, match, tmp_path):
    cfg = TrainConfig(model="m", data="d", output_dir=str(tmp_path / "o"), schedule="dynamic", top_percent=50)
    for k, v in kw.items():
        setattr(cfg, k, v)
    with pytest.raises(SpectrumError, match=match):
        cfg.validate()


def test_more_than_one_process_is_refused_before_training():
    from spectrum_llm.training.dynamic import attach

    trainer = SimpleNamespace(args=SimpleNamespace(world_size=2))
    with pytest.raises(SpectrumError, match="runs in one process"):
        attach(trainer, None, None)  # type: ignore[arg-type]


def test_more_than_one_process_is_refused_with_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = TrainConfig(model="m", data="d", output_dir=str(tmp_path / "o"), schedule="dynamic", top_percent=50)
    with pytest.raises(SpectrumError, match="runs in one process; this run has 2"):
        cfg.validate()
