"""Every command's output path: one `error:` line and exit 2 when it cannot be written, nothing left behind,
and probes that many processes can run at once."""

from __future__ import annotations

import errno
import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers_models import build_tiny_llama, write_cpt_data
from spectrum_llm.cli import main
from spectrum_llm.errors import SpectrumError
from spectrum_llm.files import check_writable, write_text_atomic

INSTRUCT = "snr_results_meta-llama-Meta-Llama-3.1-8B-Instruct.json"
BASE = "snr_results_meta-llama-Meta-Llama-3.1-8B.json"


def _run(capsys, argv) -> tuple[int, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _argv(command: str, out: Path, ref: Path, llama: Path, data: Path) -> list:
    """The command with ``out`` as its output (a file, or a folder for convert and train)."""
    return {
        "scan": ["scan", llama, "-o", out.with_suffix(".json"), "--no-progress"],
        "select": ["select", ref / INSTRUCT, "-o", out.with_suffix(".yaml")],
        "report": ["report", ref / INSTRUCT, "-o", out.with_suffix(".html")],
        "report-png": [
            "report",
            ref / INSTRUCT,
            "-o",
            out.parent.parent / "never.html",
            "--png",
            out.with_suffix(".png"),
        ],
        "compare": ["compare", ref / BASE, ref / INSTRUCT, "--png", out.with_suffix(".png")],
        "convert": ["convert", "builtin:smollm2-135m", "-o", out],
        "train": ["train", "--model", llama, "--data", data, "-o", out, "--max-steps", "1", "--seq-len", "32"],
    }[command]


COMMANDS = ["scan", "select", "report", "report-png", "compare", "convert", "train"]


def _bad_paths(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a-file").write_text("not a folder\n")
    return {
        "parent-is-a-file": tmp_path / "a-file" / "out",
        "grandparent-is-a-file": tmp_path / "a-file" / "sub" / "out",
        "under-proc": Path("/proc") / "out",
        "new-folder-under-proc": Path("/proc") / "spectrum-llm-test" / "out",
    }


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("where", ["parent-is-a-file", "grandparent-is-a-file", "under-proc", "new-folder-under-proc"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_output_is_one_error_line_exit_2_and_leaves_nothing(
    command, where, reference_dir, llama_dir, tmp_path, capsys
):
    data = write_cpt_data(tmp_path / "data.jsonl")
    out = _bad_paths(tmp_path)[where]
    before = _listing(tmp_path)
    code, err = _run(capsys, _argv(command, out, reference_dir, llama_dir, data))
    assert code == 2, err
    assert err.startswith("error: Cannot write") and err.count("\n") == 1 and "Traceback" not in err, err
    assert _listing(tmp_path) == before
    assert not Path("/proc/spectrum-llm-test").exists()


@pytest.mark.parametrize(
    "err,why", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")]
)
@pytest.mark.parametrize("command", COMMANDS)
def test_folder_without_permission_or_read_only(
    command, err, why, reference_dir, llama_dir, tmp_path, capsys, monkeypatch
):
    """What a read-only mount or a folder without write permission answers (root ignores permission bits, so
    the answer is simulated where the probe asks the file system)."""
    from spectrum_llm import files

    def refuse(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(files, "tempfile", types.SimpleNamespace(mkstemp=refuse, mkdtemp=refuse))
    data = write_cpt_data(tmp_path / "data.jsonl")
    before = _listing(tmp_path)
    code, text = _run(capsys, _argv(command, tmp_path / "locked" / "out", reference_dir, llama_dir, data))
    assert code == 2 and text.startswith("error: Cannot write") and why in text and text.count("\n") == 1, text
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("command", ["scan", "select", "report"])
def test_an_existing_folder_as_the_output_file_is_refused(command, reference_dir, llama_dir, tmp_path, capsys):
    folder = tmp_path / "out.json"
    for suffix in (".json", ".yaml", ".html"):
        folder.with_suffix(suffix).mkdir()
    code, err = _run(capsys, _argv(command, folder, reference_dir, llama_dir, tmp_path / "d.jsonl"))
    assert code == 2 and "it is a folder" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("model"), dtype="float32")


def test_failed_train_leaves_no_output_folder(small_model, tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text('{"content": "no text column"}\n')
    for data in (tmp_path / "missing.jsonl", tmp_path / "rows.jsonl"):
        out = tmp_path / "run"
        code, err = _run(
            capsys,
            [
                "train",
                "--model",
                small_model,
                "--data",
                data,
                "-o",
                out,
                "--seq-len",
                "32",
                "--max-steps",
                "1",
                "--method",
                "full",
            ],
        )
        assert code == 2 and err.startswith("error:"), err
        assert not out.exists()


def test_train_failing_after_it_made_the_folder_removes_it_but_keeps_a_folder_it_found(small_model, tmp_path):
    from transformers import TrainerCallback

    from spectrum_llm.training import TrainConfig, train

    class Boom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            raise RuntimeError("boom")

    data = write_cpt_data(tmp_path / "d.jsonl")
    for existed in (False, True):
        out = tmp_path / f"run-{existed}"
        if existed:
            out.mkdir()
        cfg = TrainConfig(
            model=str(small_model), data=str(data), output_dir=str(out), method="full", seq_len=32, max_steps=1
        )
        with pytest.raises(RuntimeError, match="boom"):
            train(cfg, callbacks=[Boom()])
        assert out.exists() == existed


def test_atomic_write_into_a_file_parent_raises_a_spectrum_error_and_makes_no_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SpectrumError, match="is a file, not a folder"):
        write_text_atomic(tmp_path / "f" / "a" / "b.txt", "x")
    with pytest.raises(SpectrumError, match="/proc"):
        write_text_atomic("/proc/spectrum-llm-test/a/b.txt", "x")
    assert _listing(tmp_path) == {"f"}


@pytest.mark.parametrize("exists", [True, False])
def test_many_processes_may_probe_one_output_folder_at_once(tmp_path, exists):
    """Every rank of a torchrun job checks the same output folder: no probe may trip over another's."""
    out = tmp_path / "run"
    if exists:
        out.mkdir()
    start = threading.Barrier(8)

    def probe(_):
        start.wait()
        for _ in range(50):
            check_writable(out, folder=True)
            check_writable(out / "model.safetensors")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(probe, range(8)))
    assert out.exists() == exists
    assert not exists or list(out.iterdir()) == []


def test_concurrent_conversions_convert_once(tmp_path, monkeypatch):
    """Every rank converts the same GGUF at start-up: one converts, the others wait and reuse its folder."""
    import time

    from spectrum_llm import conversion as convert

    calls = []

    def fake(path, name, fingerprint, out, dtype):
        calls.append(1)
        time.sleep(0.3)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(convert, "write_folder", fake)
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: convert.gguf_to_folder("builtin:smollm2-135m"), range(4)))
    assert len(calls) == 1 and len(set(folders)) == 1
