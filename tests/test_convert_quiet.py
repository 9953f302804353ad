"""The GGUF conversion shows no progress bar of its own unless verbose (a first train shows one bar)."""

import logging

import pytest

from spectrum_llm.conversion import gguf_to_folder, quiet_progress


def test_quiet_progress_hides_and_restores_transformers_bars():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    before = gguf_utils.tqdm
    with quiet_progress(verbose=False):
        assert not hf_logging.is_progress_bar_enabled()
        assert gguf_utils.tqdm(range(3)).disable
    assert gguf_utils.tqdm is before and hf_logging.is_progress_bar_enabled()
    with quiet_progress(verbose=True):
        assert hf_logging.is_progress_bar_enabled()


def test_quiet_follows_the_package_log_level():
    log = logging.getLogger("spectrum_llm")
    level = log.level
    from transformers.utils import logging as hf_logging

    try:
        log.setLevel(logging.DEBUG)  # what --verbose sets
        with quiet_progress():
            assert hf_logging.is_progress_bar_enabled()
        log.setLevel(logging.INFO)
        with quiet_progress():
            assert not hf_logging.is_progress_bar_enabled()
    finally:
        log.setLevel(level)


@pytest.mark.slow
def test_converting_the_default_model_prints_no_bar(tmp_path, capfd):
    gguf_to_folder("builtin:smollm2-135m", tmp_path / "smol")
    err = capfd.readouterr().err
    assert "Converting and de-quantizing" not in err and "Writing model shards" not in err
