"""Model skeletons on the meta device, and what they and scans say about tied weights."""

from __future__ import annotations

import pytest
import torch

from conftest import save_model, tiny_llama
from helpers_selection import synthetic_scan
from spectrum_llm.errors import SpectrumError
from spectrum_llm.models import from_config, load_meta_model, tied_aliases, tied_head


def test_a_meta_model_has_the_checkpoints_names_and_shapes_and_no_weights(llama_dir):
    real = tiny_llama()
    meta = load_meta_model(llama_dir)
    assert all(p.is_meta for p in meta.parameters())
    assert {n: tuple(p.shape) for n, p in meta.named_parameters()} == {
        n: tuple(p.shape) for n, p in real.named_parameters()
    }


def test_from_config_takes_a_dtype():
    model = from_config(tiny_llama().config, torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).is_meta


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(SpectrumError, match="no config.json"):
        load_meta_model(tmp_path)


def test_tied_aliases_name_the_second_name_of_a_shared_tensor(tmp_path):
    assert tied_aliases(tiny_llama(tie_word_embeddings=True)) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert tied_aliases(tiny_llama()) == {}
    folder = save_model(tiny_llama(tie_word_embeddings=True), tmp_path / "tied")
    assert tied_aliases(load_meta_model(folder)) == {"lm_head.weight": "model.embed_tokens.weight"}


def test_tied_head_from_the_config_else_from_the_missing_head():
    scan = synthetic_scan({"mlp.down_proj": [1.0]})
    assert tied_head(scan) is False
    scan.modules = [m for m in scan.modules if m.kind != "lm_head"]
    assert tied_head(scan) is True
    scan.config = {"tie_word_embeddings": False}
    assert tied_head(scan) is False
    assert tied_head(synthetic_scan({"mlp.down_proj": [1.0]}, extras=False)) is None


def test_tied_head_the_config_wins_over_a_missing_head():
    """Config says untied, the scan lists no lm_head: untied (the config knows; the scan may have left it out)."""
    scan = synthetic_scan({"mlp.down_proj": [1.0]})
    scan.modules = [m for m in scan.modules if m.kind != "lm_head"]
    scan.config = {"tie_word_embeddings": False}
    assert tied_head(scan) is False


def test_tied_head_of_a_scan_narrowed_by_modules_cannot_tell():
    """A scan filtered with --modules and no config: the regex may have left the head out, so None (untied)."""
    scan = synthetic_scan({"mlp.down_proj": [1.0]})
    scan.modules = [m for m in scan.modules if m.kind != "lm_head"]
    scan.modules_regex = "embed|mlp"
    assert tied_head(scan) is None
    scan.config = {"tie_word_embeddings": True}
    assert tied_head(scan) is True  # a config still tells
