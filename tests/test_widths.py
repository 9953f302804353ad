"""catalogue and check fit an 80-column terminal (COLUMNS=80), with every fact still there."""

from helpers_cli import run_cli


def test_catalogue_fits_80_columns(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert run_cli(["catalogue"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for needle in (
        "meta-llama-Meta-Llama-3.1-8B-Instruct",
        "QuixiAI/spectrum",
        "axolotl",
        "defective:",
        "the file is empty",
    ):
        assert needle in out


def test_check_fits_80_columns(tmp_path, llama_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    sel = tmp_path / "sel.txt"
    sel.write_text("model.layers.0.self_attn.q_proj\nmodel.layers.1.mlp.down_proj\nmodel.embed_tokens\nlm_head\n")
    assert run_cli(["check", str(sel), "--model", str(llama_dir)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    for needle in ("full fine-tuning", "this selection", "LoRA r=", "act/tok", "AdamW", "total", "nf4 base"):
        assert needle in out
