"""benchmarks/speed.py --tiny: the methods train side by side in child processes and the table has ratios to full."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two child processes, each loading torch and transformers


def test_tiny_run_writes_the_table_with_ratios(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/speed.py",
            "--tiny",
            "--steps",
            "2",
            "--methods",
            "full,top-layers-cached",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "out" / "speed-tiny.json").read_text())
    rows = {r["name"]: r for r in data["methods"]}
    assert set(rows) == {"full", "top-layers-cached"}
    assert rows["full"]["steps"] == rows["top-layers-cached"]["steps"] == 2
    assert rows["top-layers-cached"]["trainable_params"] < rows["full"]["trainable_params"]
    assert "| full | 100.0% |" in data["table_markdown"] and "1.00x" in data["table_markdown"]
    assert len(data["loadavg_start"]) == 3
