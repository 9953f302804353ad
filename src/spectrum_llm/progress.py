"""One progress bar for every long job (scan, train): the same columns, on stderr, so stdout stays clean."""

from __future__ import annotations

from typing import Any


def progress_bar(label: str, unit: str, field: str, enabled: bool = True) -> Any:
    """A rich ``Progress`` reading ``label [bar] done/total unit <field> elapsed left remaining``.

    ``field`` names a per-task text field (the scan's rate, the last training loss) that callers fill with
    ``update(task, **{field: text})``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn(f"[cyan]{{task.fields[{field}]}}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        disable=not enabled,
        console=Console(stderr=True),
    )
