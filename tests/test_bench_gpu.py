"""The GPU benchmark's one command, run with --tiny on the CPU as the GPU machine would run it: without the
packages that machine lacks (datasets, gguf, trl), through PYTHONPATH=src rather than an installed package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("datasets", "gguf", "trl")

pytestmark = pytest.mark.slow  # the tiny run trains three methods in child processes


@pytest.fixture(scope="module")
def no_extras_env(tmp_path_factory):
    """An environment whose interpreters (children included) cannot import datasets, gguf or trl."""
    block = tmp_path_factory.mktemp("block")
    (block / "sitecustomize.py").write_text(f"import sys\nfor m in {BLOCKED!r}:\n    sys.modules[m] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{ROOT / 'src'}", "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "halted" in probe.stderr
    return env


def _bench(env, *args, timeout=1800):
    return subprocess.run(
        [sys.executable, "benchmarks/gpu.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_tiny_run_writes_scan_and_training_results(no_extras_env, tmp_path):
    out = tmp_path / "out"
    proc = _bench(
        no_extras_env,
        "--tiny",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--models",
        "1b",
        "--methods",
        "full,spectrum25,toplayers25,lora",
        "--budget-s",
        "3600",  # what it checks is the results, not the budget (its own test): a loaded machine must not skip
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu.json").read_text())
    scan = data["scan"]
    assert scan["ours"]["status"] == "ok" and scan["reference"]["status"] == "ok"
    assert (
        scan["ours"]["modules"] == scan["reference"]["modules"] == 2 * 7 + 2
    )  # 7 projections per layer, embedding, lm_head
    assert scan["ours"]["accuracy"]["ours_max_rel"] < 1e-6
    assert scan["snr_max_rel_diff"] < 1e-4
    rows = {r["method"]: r for r in data["train"]}
    assert set(rows) == {"full", "spectrum25", "toplayers25", "lora"}
    for r in rows.values():
        assert r["status"] == "ok" and r["fixed"]["step_s"] > 0 and r["largest"]["micro_batch"] >= 2, r
    assert rows["full"]["trainable_fraction"] == 1.0
    assert 0 < rows["spectrum25"]["trainable_fraction"] < 0.5  # the published 1B scan's top 25% plus embeddings
    assert rows["lora"]["lora_rank"] >= 1
    assert rows["toplayers25"]["top_layers"][-1] == 15 and 0 < rows["toplayers25"]["trainable_fraction"] < 0.5
    md = (out / "gpu.md").read_text()
    assert "## Scan" in md and "## Training cost" in md and "| Llama-3.2-1B | spectrum25 |" in md
    assert data["finished"]


def test_unknown_part_fails_early_with_one_line(no_extras_env, tmp_path):
    proc = _bench(no_extras_env, "--tiny", "--out", str(tmp_path), "--parts", "scan,bake", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --parts: unknown bake; choose from scan, train."]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_asked_without_a_gpu_fails_early(no_extras_env, tmp_path):
    proc = _bench(no_extras_env, "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "sees no CUDA GPU" in proc.stderr and "--tiny" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


def test_budget_skips_what_would_not_finish(no_extras_env, tmp_path):
    proc = _bench(no_extras_env, "--tiny", "--out", str(tmp_path), "--parts", "train", "--budget-s", "0", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["train"] == [] and len(data["skipped"]) == 2 * 8  # 2 models x 8 methods (3 on a low-bit base)
    assert "## Skipped" in (tmp_path / "gpu.md").read_text()


def test_low_bit_methods_are_skipped_with_a_note_without_bitsandbytes(no_extras_env, tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        f"import sys\nfor m in {(*BLOCKED, 'bitsandbytes')!r}:\n    sys.modules[m] = None\n"
    )
    env = {**no_extras_env, "PYTHONPATH": f"{block}{os.pathsep}{ROOT / 'src'}"}
    proc = _bench(
        env,
        "--tiny",
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        "--parts",
        "train",
        "--models",
        "1b",
        "--methods",
        "spectrum25-nf4,qlora",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert data["train"] == [] and len(data["skipped"]) == 2
    assert all("bitsandbytes is not installed" in s and "spectrum-llm[quant]" in s for s in data["skipped"])
