"""The core installs without the extras: scanning needs only torch, numpy, safetensors and gguf, and what needs
an extra says which one and the pip command, instead of an ImportError deep inside."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectrum_llm.errors import SpectrumError, require

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("transformers", "accelerate", "peft", "datasets", "matplotlib", "filelock", "trl")


def test_require_returns_the_modules():
    import json

    assert require("json", extra="core") == [json]


def test_a_missing_package_names_its_extra_and_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SpectrumError, match=r"matplotlib is not installed; .*pip install 'spectrum-llm\[report\]'"):
        require("matplotlib", extra="report")


def test_a_broken_install_is_not_called_missing(tmp_path, monkeypatch):
    (tmp_path / "half_installed.py").write_text("import a_dependency_that_is_gone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_gone"):
        require("half_installed", extra="train")


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """An environment whose interpreters cannot import any package of an extra."""
    block = tmp_path_factory.mktemp("block")
    (block / "sitecustomize.py").write_text(f"import sys\nfor m in {EXTRAS!r}:\n    sys.modules[m] = None\n")
    return {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{ROOT / 'src'}", "HF_HUB_OFFLINE": "1"}


def _spectrum(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "spectrum_llm", *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )


def test_the_package_and_its_core_api_import_without_the_extras(core_env):
    code = "import spectrum_llm as s; s.scan, s.select, s.load_scan, s.write_selection, s.freeze; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], env=core_env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_scan_runs_without_the_extras(core_env, llama_dir, tmp_path):
    proc = _spectrum(core_env, "scan", llama_dir, "-o", tmp_path / "scan.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scan.json").is_file()


@pytest.mark.parametrize(
    "argv,extra",
    [
        (["report", "scan.json"], "report"),
        (["train", "--model", "m", "--data", "d.jsonl", "-o", "out"], "train"),
    ],
)
def test_commands_that_need_an_extra_name_it(core_env, tmp_path, argv, extra):
    proc = _spectrum(core_env, *argv)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'spectrum-llm[{extra}]'" in proc.stderr and "Traceback" not in proc.stderr
