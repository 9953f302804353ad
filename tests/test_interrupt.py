"""SIGINT/SIGTERM sent to a real `spectrum train` mid-save and mid-step: the run stops with one line naming the
step, the last complete checkpoint and the command that resumes (exit 130/143), and resuming ends with the same
weights, bit for bit, as a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers_models import build_tiny_llama, write_cpt_data

pytestmark = pytest.mark.slow  # each test runs `spectrum train` two or three times

WORKER = Path(__file__).with_name("helpers_interrupt.py")
SAVE_STEPS, STEPS, AT = 3, 12, 6


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    work = {"root": root, "model": build_tiny_llama(root / "model"), "data": write_cpt_data(root / "cpt.jsonl")}
    work["base"] = root / "base"
    proc = _spawn(work, work["base"])
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return work


def _args(work, out: Path) -> list[str]:
    return [
        "train",
        "--model",
        str(work["model"]),
        "--data",
        str(work["data"]),
        "-o",
        str(out),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        str(STEPS),
        "--save-steps",
        str(SAVE_STEPS),
        "--lr",
        "1e-2",
        "--lr-scheduler",
        "linear",
        "--logging-steps",
        "1",
        "--top-percent",
        "50",
        "--scan",
        str(work["root"] / "scan.json"),
        "--no-progress",
    ]


def _spawn(work, out: Path, *extra: str, slow: str = "", mark: Path | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path]),
        "SPECTRUM_TEST_SLOW": slow,
        "SPECTRUM_TEST_AT": str(AT),
        "SPECTRUM_TEST_MARK": str(mark or os.devnull),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), *_args(work, out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _interrupt(work, out: Path, slow: str, *signals: int) -> tuple[int, str]:
    mark = work["root"] / f"{out.name}.mark"
    proc = _spawn(work, out, slow=slow, mark=mark)
    deadline = time.monotonic() + 240
    while not mark.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for s in signals:
        proc.send_signal(s)
        time.sleep(0.5)
    return proc.wait(timeout=120), proc.stdout.read()


def _resume(work, out: Path) -> str:
    proc = _spawn(work, out, "--resume")
    text = proc.stdout.read()
    assert proc.wait(timeout=300) == 0, text
    return text


def _same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    assert all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]


def test_sigint_mid_save_stops_after_the_step_and_resumes_to_the_same_weights(work):
    out = work["root"] / "mid-save"
    rc, text = _interrupt(work, out, "save", signal.SIGINT)
    assert rc == 130, text
    line = text.strip().splitlines()[-1]
    assert f"interrupted (SIGINT) at step {AT + 1} of {STEPS}" in line
    assert f"checkpoint-{AT + 1}" in line and line.endswith("--resume") and "spectrum train --model" in line
    _resume(work, out)
    _same_weights(out, work["base"])


def test_sigterm_mid_step_exits_143_and_resumes_to_the_same_weights(work):
    out = work["root"] / "mid-step"
    rc, text = _interrupt(work, out, "step", signal.SIGTERM)
    assert rc == 143, text
    assert f"interrupted (SIGTERM) at step {AT + 1}" in text.strip().splitlines()[-1]
    _resume(work, out)
    _same_weights(out, work["base"])


def test_a_second_sigint_mid_save_leaves_an_incomplete_checkpoint_that_resume_skips(work):
    out = work["root"] / "cut-save"
    rc, text = _interrupt(work, out, "save", signal.SIGINT, signal.SIGINT)
    assert rc == 130, text
    assert f"last complete checkpoint {out / f'checkpoint-{AT - SAVE_STEPS}'}" in text.strip().splitlines()[-1]
    assert not (out / f"checkpoint-{AT}" / "trainer_state.json").exists()  # the save was cut short
    resumed = _resume(work, out)
    assert (
        f"checkpoint-{AT} is incomplete (a save was interrupted); resuming from checkpoint-{AT - SAVE_STEPS}" in resumed
    )
    _same_weights(out, work["base"])
