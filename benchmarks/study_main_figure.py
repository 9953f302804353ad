"""The main study's figure per block: learning against forgetting, every run, each arm's mean and its rate curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.benchlib import pyplot, save_figure
from benchmarks.study_primary import METRICS, Metric, run_value


def figure(an: dict[str, Any], learn: Metric, path: Path) -> str | None:
    """Learning against forgetting: every run at its arm's rate (small), each arm's mean (large), and each
    family's rate curve (a line through the mean of each rate's runs). Up is learned more, left forgot less."""
    pts = [c for c in an["curves"] if c.get("learning") is not None and c.get("forgetting") is not None]
    if not pts or an["baseline"] is None:
        return None
    plt = pyplot()
    f0 = run_value(METRICS["general_end"], an["baseline"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    names = sorted({c["group"] for c in pts})
    tab20 = plt.get_cmap("tab20")  # ten hues in dark/light pairs: the dark ones first, then the light
    for i, gname in enumerate(names):  # a colour and a marker each: more arms than one colour cycle holds
        mine = [c for c in pts if c["group"] == gname]
        runs = [c for c in mine if not c["sweep"]]
        x = [c["forgetting"] - f0 for c in runs]
        y = [c["learning"] for c in runs]
        colour = tab20(2 * i % 20 + i // 10 % 2)
        (mean,) = ax.plot(
            [np.mean(x)], [np.mean(y)], "osD^v<>p"[i % 8], ms=9, color=colour, label=f"{gname} ({len(runs)})"
        )
        ax.scatter(x, y, s=12, color=mean.get_color(), alpha=0.5)
        rates = sorted({c["lr"] for c in mine})
        if len(rates) > 1:
            at = [[c for c in mine if c["lr"] == lr] for lr in rates]
            curve_x = [float(np.mean([c["forgetting"] - f0 for c in cs])) for cs in at]
            ax.plot(curve_x, [float(np.mean([c["learning"] for c in cs])) for cs in at], "-", color=mean.get_color())
    ax.set_xlabel("general-text loss change at the end (nats; lower: forgets less)")
    if learn.higher_is_better:
        ax.set_ylabel(f"{learn.label} ({learn.unit})")
    else:  # a loss: upside down, so that up means learned more on every block's figure
        ax.set_ylabel(f"{learn.label} ({learn.unit}; lower, plotted up: learned more)")
        ax.invert_yaxis()
    ax.set_title(f"Block {an['block']}: learning against forgetting (runs, arm means, rate curves)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
