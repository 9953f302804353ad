"""A scan reused from the content-keyed cache names the model as the current caller named it, not as the first
scanner did (issue 24, item 6)."""

import json
import shutil

from helpers_cli import run_cli
from spectrum_llm import scan


def test_cached_scan_states_the_model_as_named_now(tmp_path, llama_dir, capsys):
    first = tmp_path / "alice" / "model"
    second = tmp_path / "bob" / "my-llama"
    shutil.copytree(llama_dir, first)
    shutil.copytree(llama_dir, second)
    scan(str(first))  # files the scan in the cache, under alice's path
    assert run_cli(["scan", str(second), "-o", str(tmp_path / "bob.json"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "reused from an earlier scan" in err
    assert str(second) in " ".join(err.split()) and "alice" not in err
    assert json.loads((tmp_path / "bob.json").read_text())["model"] == str(second)
    again = scan(str(second))
    assert again.cached and again.model == str(second)
