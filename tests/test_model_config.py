"""model_config.load_model_config: the config from any --model value, with one-line errors naming the file
(the helper select --model uses and training's _load_model_config is to call)."""

import shutil

import pytest

from helpers_cli import run_cli
from spectrum_llm.errors import SpectrumError
from spectrum_llm.model_config import load_model_config


def test_missing_folder_is_named_without_repo_id_wording():
    with pytest.raises(SpectrumError) as e:
        load_model_config("/no/such/dir")
    assert "/no/such/dir: no such file or folder" in str(e.value) and "Repo id" not in str(e.value)


def test_truncated_safetensors_is_named_in_one_line(tmp_path, llama_dir):
    folder = shutil.copytree(llama_dir, tmp_path / "m")
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:3000])
    with pytest.raises(SpectrumError) as e:
        load_model_config(weights, folder_only=True)
    msg = str(e.value)
    assert "\n" not in msg and str(weights) in msg and "truncated" in msg and "valid JSON" not in msg


def test_weight_file_for_training_names_its_folder(llama_dir):
    weights = next(llama_dir.glob("*.safetensors"))
    with pytest.raises(SpectrumError, match="is a weight file; pass --model its folder"):
        load_model_config(weights, folder_only=True)
    config, dtype = load_model_config(weights)  # check and select read the folder's config
    assert config.model_type == "llama" and dtype is None


def test_truncated_config_json(tmp_path, llama_dir):
    folder = shutil.copytree(llama_dir, tmp_path / "m")
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(SpectrumError) as e:
        load_model_config(folder)
    msg = str(e.value)
    assert "\n" not in msg and str(folder / "config.json") in msg and "is not valid JSON" in msg


@pytest.mark.slow
def test_builtin_gguf_config():
    config, dtype = load_model_config("builtin:smollm2-135m")
    assert config.model_type == "llama" and dtype == "bfloat16"


def test_select_model_accepts_builtin_as_check_does(tmp_path, capsys):
    out = tmp_path / "sel.yaml"
    args = [
        "select",
        "HuggingFaceTB/SmolLM-135M",
        "--top-percent",
        "25",
        "-o",
        str(out),
        "--model",
        "builtin:smollm2-135m",
    ]
    assert run_cli(args) == 0
    assert out.is_file()
    assert "has no config.json" not in capsys.readouterr().err
