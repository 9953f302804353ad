import math

import numpy as np

from spectrum_llm.figures import colour_norm


def test_colour_scale_ignores_non_finite_and_goes_log_for_wide_ranges():
    norm, scale = colour_norm(np.array([0.05, 1.0, 30.0, np.inf, np.nan, 2000.0]))
    assert scale == "log scale" and 0.05 <= norm.vmin and norm.vmax <= 2000.0
    norm, scale = colour_norm(np.array([0.0, 0.5, 1.0]))
    assert scale == "linear scale" and math.isfinite(norm.vmax)
    norm, scale = colour_norm(np.array([0.0, 0.0, 0.1, 1.0, 5.0, 40.0]))
    assert scale.startswith("log scale, linear below") and norm.vmin == 0.0 and np.isfinite(norm(np.array([0.0]))).all()
    norm, _ = colour_norm(np.array([np.inf, np.nan]))
    assert (norm.vmin, norm.vmax) == (0.0, 1.0)
