import json

import pytest

from spectrum_llm.cli import main


def test_cli_scan_writes_the_scan(llama_dir, tmp_path, capsys):
    out = tmp_path / "scan.json"
    with pytest.raises(SystemExit) as e:
        main(["scan", str(llama_dir), "-o", str(out), "--estimator", "reference", "--no-progress"])
    assert e.value.code == 0
    data = json.loads(out.read_text())
    assert data["estimator"] == "reference" and len([m for m in data["modules"] if m["snr"] is not None]) == 16


def test_cli_bad_input_is_one_clear_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["scan", str(tmp_path / "missing"), "-o", str(tmp_path / "s.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err
    assert not (tmp_path / "s.json").exists()
