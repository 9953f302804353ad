"""Scans in other processes: two ranks under torchrun, and a scan killed with SIGKILL that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import spectrum_llm
from spectrum_llm.scan_files import load_scan

pytestmark = pytest.mark.slow  # torchrun ranks and a killed-and-resumed scan, each in its own processes


def test_two_process_scan_matches_one_process(llama_dir, tmp_path, free_port):
    out = tmp_path / "dist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port),
        "-m",
        "spectrum_llm",
        "scan",
        str(llama_dir),
        "-o",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = load_scan(out)
    single = spectrum_llm.scan(llama_dir)
    assert [(m.name, m.snr) for m in merged.modules] == [(m.name, m.snr) for m in single.modules]
    assert not list(tmp_path.glob("*.partial"))


def test_scan_killed_with_sigkill_resumes(tmp_path):
    g = torch.Generator().manual_seed(0)
    save_file(
        {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(384, 768, generator=g) for i in range(40)},
        tmp_path / "model.safetensors",
    )
    out = tmp_path / "scan.json"
    journal = tmp_path / "scan.json.partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spectrum_llm", "scan", str(tmp_path), "-o", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(journal.read_text().splitlines()) - 1
    assert not out.exists() and 3 <= done_before < 40

    from spectrum_llm import scan_cpu

    calls = []
    real = scan_cpu.score_tensor
    scan_cpu.score_tensor = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        result = spectrum_llm.scan(tmp_path, output=out)
    finally:
        scan_cpu.score_tensor = real
    assert len(result.modules) == 40 and all(m.ranked for m in result.modules)
    assert len(calls) <= 40 - done_before + 1  # the line in flight at the kill may be lost, nothing more
    assert json.loads(out.read_text())["modules"][0]["name"] == "model.layers.0.mlp.up_proj"
