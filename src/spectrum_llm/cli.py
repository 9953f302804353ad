"""The `spectrum` command: a thin layer over the Python API.

Each command parses its flags, calls one API function and prints the outcome. A SpectrumError
becomes a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import SpectrumError

app = typer.Typer(
    name="spectrum",
    help="Spectrum targeted training: scan weight spectra, select modules, train only those.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.command()
def scan(
    model: str = typer.Argument(..., help="Checkpoint folder, .safetensors/.bin/.gguf file, hub id in the local "
                                "Hugging Face cache, or builtin:smollm2-135m."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scan (JSON)."),
    estimator: str = typer.Option("mp", help="SNR estimator: 'mp' (scale-invariant Marchenko-Pastur) or "
                                  "'reference' (the published formula, exactly)."),
    device: str = typer.Option("cpu", help="Where singular values are computed: cpu, cuda, cuda:1, ..."),
    modules: Optional[str] = typer.Option(None, "--modules", help="Only scan tensors whose name matches this regex."),
    reference_json: Optional[Path] = typer.Option(None, "--reference-json",
                                                  help="Also write the reference tool's flat layout "
                                                  "(snr_results_<slug>.json) into this folder."),
    resume: bool = typer.Option(True, help="Resume an interrupted scan of the same checkpoint."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Score every weight matrix of a checkpoint by its signal-to-noise ratio."""
    from .scan import scan as run_scan

    result = run_scan(model, output=output, estimator=estimator, device=device, modules=modules,
                      reference_json=reference_json, resume=resume, progress=progress)
    skipped = [m for m in result.modules if m.skipped and m.kind == "linear"]
    console.print(f"[green]Scanned[/] {len(result.ranked())} modules of {result.model} "
                  f"({result.estimator}) -> {output}")
    for m in skipped:
        console.print(f"[yellow]skipped[/] {m.name}: {m.skipped}")


@app.callback()
def _root() -> None:
    """Spectrum targeted training: scan weight spectra, select modules, train only those."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `spectrum` console script."""
    try:
        app(args=argv, prog_name="spectrum")
    except SpectrumError as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        sys.exit(2)
