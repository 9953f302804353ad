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
    from .scanner import scan as run_scan

    result = run_scan(model, output=output, estimator=estimator, device=device, modules=modules,
                      reference_json=reference_json, resume=resume, progress=progress)
    skipped = [m for m in result.modules if m.skipped and m.kind == "linear"]
    console.print(f"[green]Scanned[/] {len(result.ranked())} modules of {result.model} "
                  f"({result.estimator}) -> {output}")
    for m in skipped:
        console.print(f"[yellow]skipped[/] {m.name}: {m.skipped}")


@app.command()
def select(
    scan_file: Path = typer.Argument(..., metavar="SCAN", help="A scan: ours or a reference snr_results_*.json."),
    output: str = typer.Option(..., "-o", "--output", help="Output file: .yaml (Axolotl), .json (spectrum-llm), "
                               ".txt (one pattern per line), or - for YAML on stdout."),
    top_percent: float = typer.Option(50.0, "--top-percent", "-p", help="Percent of modules kept, in (0, 100]."),
    rule: str = typer.Option("per-type", help="per-type (Spectrum-n), global (scale-invariant scores only) "
                             "or budget."),
    budget: Optional[str] = typer.Option(None, help="Trainable-parameter budget: a fraction (0.25) or a count "
                                         "(500M); implies --rule budget."),
    include: Optional[str] = typer.Option(None, help="Only rank modules whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, help="Never select modules whose name matches this regex."),
    train_embeddings: bool = typer.Option(True, help="Train the input embeddings."),
    train_lm_head: bool = typer.Option(True, help="Train the output head."),
    train_norms: bool = typer.Option(False, help="Train every norm weight."),
    parts: bool = typer.Option(False, help="Rank the parts of fused projections (q/k/v, gate/up) separately."),
    compat: bool = typer.Option(False, help="Reproduce the reference tool's YAML exactly."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder: print the freeze summary for it "
                                         "(built on the meta device) and take parameter counts from it."),
):
    """Choose the modules to train from a scan and write them for a trainer."""
    from .exports import write_selection
    from .freeze import freeze, load_meta_model
    from .selection import select as run_select

    meta = load_meta_model(model) if model is not None else None
    sel = run_select(scan_file, top_percent=top_percent, rule=rule, budget=budget, include=include,
                     exclude=exclude, train_embeddings=train_embeddings, train_lm_head=train_lm_head,
                     train_norms=train_norms, parts=parts, compat=compat, model=meta)
    summary = freeze(meta, sel) if meta is not None else None
    write_selection(sel, output)
    where = "stdout" if output == "-" else output
    console.print(f"[green]Selected[/] {len(sel.modules)} modules + {len(sel.extras)} extra patterns "
                  f"({sel.rule.get('rule')}) -> {where}")
    if sel.trainable_params and sel.total_params:
        console.print(f"trainable {sel.trainable_params:,} of {sel.total_params:,} parameters "
                      f"({100 * sel.trainable_params / sel.total_params:.2f}%)")
    if summary is not None:
        console.print(str(summary))


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
