"""`spectrum score`: the command over ``gradscore.score_modules``, in its own module so that ``cli`` stays small.

``cli`` calls ``register`` with its app and ``options_from``, which makes the flags from ``ScoreConfig``'s
fields, stated once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .gradscore import ScoreConfig

console = Console(stderr=True)


def register(app: typer.Typer, options_from: Callable[..., Any]) -> None:
    """Add `spectrum score` to ``app``."""
    app.command("score", short_help="Score every weight matrix by its gradients on your data.")(
        options_from(ScoreConfig, defaults=True)(score_cmd)
    )


def score_cmd(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="Checkpoint folder, hub id in the local cache, GGUF file or builtin:<name> (smollm2-135m, gemma3-270m).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scores (the scan format, JSON)."),
    **options: Any,
) -> None:
    """Score every weight matrix by the gradients of your own data (task-aware); select from the file as from a
    scan (`spectrum select scores.json --top-percent 25`). Costs BATCHES forward+backward passes."""
    from .gradscore import score_modules

    cfg = ScoreConfig(model=model, output=str(output), **options)
    result = score_modules(cfg)
    took = result.config.get("seconds")
    console.print(
        f"[green]Scored[/] {model} ({result.estimator}, {cfg.batches} batches of {cfg.batch_size}"
        f"{f' in {took:.0f} s' if took is not None else ''}): {result.tally()} -> {output}",
        soft_wrap=True,
    )
