import numpy as np

from helpers_report import synthetic_scan
from spectrum_llm.grids import score_grid


def test_grid_takes_the_median_over_experts_and_masks_inf_and_skipped():
    grid = score_grid(synthetic_scan())
    assert grid.layers == [0, 1, 2]
    assert grid.types == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.experts.down_proj",
    ]
    experts = grid.types.index("mlp.experts.down_proj")
    assert grid.values[0, experts] == 12.0  # experts 0, 2, 3 scored 10, 12, 13; expert 1 skipped
    assert list(grid.count[:, experts]) == [3, 4, 4]
    assert np.isinf(grid.values[0, 1]) and np.isnan(grid.values[1, 3])
    assert grid.masked().sum() == 2
    assert [m.name for m in grid.outside] == ["model.embed_tokens", "lm_head"]
