"""The `spectrum` command: a thin layer over the Python API.

Each command parses its flags, calls one API function and prints the outcome. A SpectrumError
becomes a one-line message and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import cache
from .errors import SpectrumError
from .estimators import DEFAULT as DEFAULT_ESTIMATOR
from .estimators import REGISTRY as ESTIMATORS
from .select_config import SelectConfig
from .training import TrainConfig

app = typer.Typer(
    name="spectrum",
    help="Spectrum targeted training: scan weight spectra, select modules, train only those.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)


def options_from(config: type, defaults: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give the decorated command one option per CLI field of the dataclass ``config``: the flag names, type and
    help come from the field, so they are stated once (a field's ``type`` metadata, where set, is the type the
    command line gives instead of the field's). Each option defaults to None (not given), which lets a config
    file fill it in, or with ``defaults`` to the field's default, which ``--help`` shows; the command receives
    them as keyword arguments."""
    hints = typing.get_type_hints(config)
    options = []
    for f in dataclasses.fields(config):
        if not f.metadata.get("cli"):
            continue
        kind = f.metadata.get("type") or next(
            t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)
        )
        dashed = f.name.replace("_", "-")
        names = f.metadata["flags"] or ((f"--{dashed}/--no-{dashed}",) if kind is bool else (f"--{dashed}",))
        options.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Optional[kind],
                default=typer.Option(f.default if defaults else None, *names, help=f.metadata["help"]),
            )
        )

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own_hints = typing.get_type_hints(command)
        own = [
            p.replace(annotation=own_hints[p.name])
            for p in inspect.signature(command).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature([*own, *options])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *options)}
        return wrapper

    return decorate


@app.command("scan", short_help="Score every weight matrix of a checkpoint.")
def scan_cmd(
    model: str = typer.Argument(
        ...,
        metavar="MODEL",
        help="Checkpoint folder, .safetensors/.bin/.gguf file, hub id "
        "in the local Hugging Face cache, or builtin:smollm2-135m.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scan (JSON)."),
    estimator: str = typer.Option(
        DEFAULT_ESTIMATOR,
        help="SNR estimator: "
        + " or ".join(f"'{e.name}' ({e.description})" for e in ESTIMATORS.values() if e.family == "snr")
        + ".",
    ),
    device: str = typer.Option("cpu", help="Where singular values are computed: cpu, cuda, cuda:1, ..."),
    modules: Optional[str] = typer.Option(None, "--modules", help="Only scan tensors whose name matches this regex."),
    reference_json: Optional[Path] = typer.Option(
        None,
        "--reference-json",
        help="Also write the reference tool's flat layout (snr_results_<slug>.json) into this folder.",
    ),
    resume: bool = typer.Option(
        True,
        help="Reuse a finished scan of the same weights (from OUTPUT or the cache, "
        "wherever the file lies) and resume an interrupted one.",
    ),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Score every weight matrix of a checkpoint by its signal-to-noise ratio (higher: more signal)."""
    from .results import storage_summary
    from .scanning import scan

    result = scan(
        model,
        output=output,
        estimator=estimator,
        device=device,
        modules=modules,
        reference_json=reference_json,
        resume=resume,
        progress=progress,
    )
    skipped = [m for m in result.modules if m.skipped and m.kind == "linear"]
    console.print(
        f"[green]Scanned[/] {result.model} ({result.estimator} estimator"
        f"{', reused from an earlier scan' if result.cached else ''}): {result.tally()} -> {output}",
        soft_wrap=True,
    )
    if storage_summary(result):
        console.print(storage_summary(result), soft_wrap=True)
    for m in skipped:
        console.print(f"[yellow]skipped[/] {m.name}: {m.skipped}", soft_wrap=True)


@app.command("score", short_help="Score every weight matrix by its gradients on your data.")
def score_cmd(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="Checkpoint folder, hub id in the local cache, GGUF file or builtin:smollm2-135m."
    ),
    data: str = typer.Option(..., "--data", help="Training data, read as `spectrum train` reads it."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scores (the scan format, JSON)."),
    task: str = typer.Option("cpt", "--task", help="cpt (text) or sft (chat or prompt/completion)."),
    batches: int = typer.Option(8, "--batches", help="Forward and backward passes to average over."),
    batch_size: int = typer.Option(4, "--batch-size", help="Examples per batch."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length (default 512 or the model's)."),
    metric: str = typer.Option(
        "grad", "--metric", help="grad: mean ||G||^2/||W||^2 (default); fisher: diagonal Fisher mass per parameter."
    ),
    combine: Optional[Path] = typer.Option(
        None, "--combine", help="A scan to combine with: each module gets the mean of its per-type rank percentiles."
    ),
    seed: int = typer.Option(42, "--seed", help="Which examples make the batches."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="The model's dtype while scoring: float32, bfloat16, float16."
    ),
):
    """Score every weight matrix by the gradients of your own data (task-aware); select from the file as from a
    scan (`spectrum select scores.json --top-percent 25`). Costs BATCHES forward+backward passes."""
    from .gradscore import ScoreConfig, score_modules

    cfg = ScoreConfig(
        model=model,
        data=data,
        task=task,
        batches=batches,
        batch_size=batch_size,
        seq_len=seq_len,
        metric=metric,
        seed=seed,
        device=device,
        dtype=dtype,
        output=str(output),
        combine=str(combine) if combine else None,
    )
    result = score_modules(cfg)
    took = result.config.get("seconds")
    console.print(
        f"[green]Scored[/] {model} ({result.estimator}, {batches} batches of {batch_size}"
        f"{f' in {took:.0f} s' if took is not None else ''}): {result.tally()} -> {output}",
        soft_wrap=True,
    )


@app.command("select", short_help="Choose the modules to train from a scan.")
@options_from(SelectConfig, defaults=True)
def select_cmd(
    scan_file: str = typer.Argument(
        ...,
        metavar="SCAN_OR_MODEL",
        help="A scan (ours or a reference "
        "snr_results_*.json), a local checkpoint (scanned once, cached), or a model id "
        "with no local weights, whose published scan comes from the catalogue.",
    ),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        help="Output file: .yaml (Axolotl), .json (spectrum-llm), "
        ".txt (one pattern per line), or - for stdout (YAML unless --format).",
    ),
    **options: Any,
):
    """Choose the modules to train from a scan and write them for a trainer.

    The default keeps the top 50% of each module type (Spectrum-50) and always adds the embeddings and the
    output head, as the reference tool does.
    """
    from .selection import select_outcome

    outcome = select_outcome(scan_file, SelectConfig(**options))
    if not Path(scan_file).name.endswith((".json", ".json.gz")):
        console.print(f"using {outcome.source}")
    outcome.write(output)
    for line, soft_wrap in outcome.lines():
        console.print(line, soft_wrap=soft_wrap)


@app.command("check", short_help="Check a selection against a model before training.")
def check_cmd(
    selection: str = typer.Argument(
        ..., metavar="SELECTION", help="A selection: .yaml (Axolotl), .json (ours) or .txt (one pattern per line)."
    ),
    model: str = typer.Option(
        ...,
        "--model",
        help="Checkpoint folder, weight file, builtin:smollm2-135m or a hub "
        "id in the local cache; only its config is read (the model is built on the meta "
        "device).",
    ),
    allow_unmatched: bool = typer.Option(
        False, "--allow-unmatched", help="Report patterns that match nothing instead of failing (exit 2)."
    ),
    seq_len: int = typer.Option(512, "--seq-len", help="Sequence length at which activations are measured."),
    lora_rank: Optional[int] = typer.Option(
        None,
        "--lora-rank",
        help="Rank of the LoRA comparison (default: the rank whose adapter is closest to the selection's size).",
    ),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="The model's training dtype (default: its config's; bfloat16 for GGUF)."
    ),
    activations: bool = typer.Option(
        True, "--activations/--no-activations", help="Measure activation memory (a forward pass on the meta device)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
):
    """Check a selection against a model before training: what each pattern unfreezes, what is missing, the
    trainable share and the training memory of full fine-tuning, this selection and LoRA."""
    from .files import write_json_atomic
    from .preflight import check

    report = check(
        selection,
        model,
        allow_unmatched=True,
        seq_len=seq_len,
        lora_rank=lora_rank,
        dtype=dtype,
        activations=activations,
    )
    typer.echo(str(report))
    if json_out is not None:
        write_json_atomic(json_out, report.to_json())
    if report.unmatched and not allow_unmatched:
        raise SpectrumError(
            f"{len(report.unmatched)} pattern(s) match nothing in {model} (listed above): the "
            "selection was made for another model or naming. Select again from a scan of this "
            "model, or pass --allow-unmatched."
        )


@app.command("catalogue", short_help="List the scans select can use without scanning.")
def catalogue_cmd(
    catalogue: Optional[Path] = typer.Option(
        None, "--catalogue", help="Also list the scans in this folder (searched first; also $SPECTRUM_CATALOGUE)."
    ),
):
    """List the scans `spectrum select MODEL_ID` can use without scanning: yours first, then the published ones."""
    from .catalogue import entries

    rows = [("model (snr_results_<model>.json)", "modules", "estimator", "source", "Axolotl", "status")]
    for e in entries(catalogue):
        rows.append(
            (
                e.name,
                str(e.modules) if e.modules else "-",
                e.estimator or "-",
                e.describe_source(short=True),
                "reads it" if e.axolotl_readable else "cannot read it",
                "ok" if e.problem is None else f"defective: {e.problem}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])


@app.command("show", short_help="Print a scan's modules sorted by score.")
def show_cmd(
    scan_file: Path = typer.Argument(..., metavar="SCAN", help="A scan: ours or a reference snr_results_*.json."),
    top: Optional[int] = typer.Option(None, "--top", "-n", help="Show only the N highest-scoring modules."),
    type_: Optional[str] = typer.Option(
        None,
        "--type",
        "-t",
        help="Only this module type (e.g. self_attn.v_proj; mlp.experts.down_proj matches every expert).",
    ),
    all_kinds: bool = typer.Option(False, "--all", help="Also list embeddings, lm_head and norms."),
):
    """Print a scan's modules sorted by score, highest first."""
    from .grids import as_scan
    from .tables import scan_table

    Console().print(scan_table(as_scan(scan_file), top=top, type=type_, all_kinds=all_kinds))


@app.command("compare", short_help="Show where two scans of one architecture differ.")
def compare_cmd(
    scan_a: Path = typer.Argument(..., metavar="SCAN_A", help="First scan (e.g. the base model)."),
    scan_b: Path = typer.Argument(..., metavar="SCAN_B", help="Second scan (e.g. the instruct model)."),
    png: Optional[Path] = typer.Option(None, "--png", "-o", help="Write the heatmap of the difference (PNG)."),
    top: int = typer.Option(20, "--top", "-n", help="Rows in the table of largest changes."),
    relative: bool = typer.Option(True, "--relative/--absolute", help="Changes as B / A - 1 (default) or B - A."),
):
    """Show where two scans of the same architecture differ: a table and a difference heatmap."""
    from .comparison import compare, diff_table

    result = compare(scan_a, scan_b, png=png, relative=relative)
    Console().print(diff_table(result, top, relative))
    if result.png is not None:
        console.print(f"[green]Wrote[/] {result.png}")


@app.command("report", short_help="Write an HTML report of a scan (and a selection).")
def report_cmd(
    scan_file: Path = typer.Argument(..., metavar="SCAN", help="A scan: ours or a reference snr_results_*.json."),
    selection: Optional[str] = typer.Option(
        None, "--selection", "-s", help="A selection (.yaml/.json/.txt) to mark on the heatmap and count by type."
    ),
    output: Optional[Path] = typer.Option(
        Path("report.html"), "-o", "--output", help="The HTML report (one self-contained file)."
    ),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write the heatmap alone as PNG."),
    module: Optional[str] = typer.Option(
        None,
        "--module",
        help="Draw this module's singular-value spectrum against the Marchenko-Pastur law (needs --model).",
    ),
    model: Optional[str] = typer.Option(None, "--model", help="The checkpoint the scan was made from."),
):
    """Write an HTML report of a scan (heatmap, spectrum, trainable parameters by type)."""
    from .html_report import report

    files = report(scan_file, selection=selection, output=output, png=png, module=module, model=model)
    for path in (files.html, files.png):
        if path is not None:
            console.print(f"[green]Wrote[/] {path}")


@app.command("train", short_help="Train only the selected modules (or full / LoRA).")
@options_from(TrainConfig)
def train_cmd(
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        "-c",
        help="YAML file of train settings (keys as the flags, dashes or underscores); flags given here win.",
    ),
    **flags: Any,
):
    """Train only the selected modules (or --method full / lora on the same data and schedule).

    OUTPUT_DIR gets the trained model (safetensors, in the input's dtypes), its tokenizer, selection.json and
    selection.yaml, and train_summary.json (parameters, losses, tokens/s, peak memory). While training, the
    latest resumable checkpoint-N/ is kept for --resume; it is removed after a successful run unless
    --keep-checkpoints. A run that fails before training leaves no folder behind.
    """
    from .training import train

    given = {k: v for k, v in flags.items() if v is not None}
    cfg = TrainConfig.from_yaml(config, **given) if config else TrainConfig.from_dict(given, "the flags")
    if cfg.verbose:
        logging.getLogger("spectrum_llm").setLevel(logging.DEBUG)
    train(cfg)  # logs one start line, shows the progress bars and logs one summary line


@app.command("convert", short_help="Convert a GGUF model into a safetensors folder.")
def convert_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="A .gguf file or builtin:smollm2-135m."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help=f"Folder to write (default: the cache, {cache.WHERE}, in models/)."
    ),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32."),
):
    """Convert a GGUF model into a transformers safetensors folder (config, weights, tokenizer) for training."""
    from .conversion import gguf_to_folder

    console.print(f"[green]Wrote[/] {gguf_to_folder(model, output, dtype)}")


@app.callback()
def _root() -> None:
    """Spectrum targeted training: scan weight spectra, select modules, train only those."""


class _Lines(logging.Handler):
    """The package's log records as the command prints them: ``[spectrum] message`` on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            mark = "warning: " if record.levelno >= logging.WARNING else ""
            print(f"[spectrum] {mark}{record.getMessage()}", flush=True)
        except Exception:  # the logging module's contract: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def _logging_to_stdout():
    """Show the package's INFO lines (DEBUG under --verbose) while the command runs; restore the logger after."""
    log = logging.getLogger("spectrum_llm")
    handler, level = _Lines(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `spectrum` console script."""
    with _logging_to_stdout():
        try:
            app(args=argv, prog_name="spectrum")
        except SpectrumError as e:
            console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
            sys.exit(2)
