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
import os
import shlex
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from . import cache, cli_score, distributed
from .errors import SpectrumError
from .estimators import DEFAULT as DEFAULT_ESTIMATOR
from .estimators import SPECTRAL_REGISTRY as ESTIMATORS
from .select_config import SelectConfig
from .training import TrainConfig
from .training.interrupts import TrainingInterrupted

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
        "in the local Hugging Face cache, or builtin:smollm2-135m / builtin:gemma3-270m.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scan (JSON)."),
    estimator: str = typer.Option(
        DEFAULT_ESTIMATOR,
        help="SNR estimator: " + " or ".join(f"'{e.name}' ({e.description})" for e in ESTIMATORS.values()) + ".",
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
        help="Checkpoint folder, weight file, builtin:smollm2-135m, builtin:gemma3-270m or a hub "
        "id in the local cache; only its config is read (the model is built on the meta "
        "device).",
    ),
    allow_unmatched: bool = typer.Option(
        False, "--allow-unmatched", help="Report patterns that match nothing instead of failing (exit 2)."
    ),
    allow_other_model: bool = typer.Option(
        False,
        "--allow-other-model",
        help="Check a selection whose recorded architecture (layer count, module shapes) differs from the model's.",
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
        allow_other_model=allow_other_model,
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
    from .catalogue import entries, listing

    for line in listing(entries(catalogue)):
        typer.echo(line)


@app.command("show", short_help="Print a scan's modules sorted by score.")
def show_cmd(
    scan_file: str = typer.Argument(
        ...,
        metavar="SCAN",
        help="A scan (ours or a reference snr_results_*.json) or a model id in `spectrum catalogue`.",
    ),
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
    from .tables import scan_table, view_scan

    Console().print(scan_table(view_scan(scan_file), top=top, type=type_, all_kinds=all_kinds))


@app.command("compare", short_help="Show where two scans of one architecture differ.")
def compare_cmd(
    scan_a: str = typer.Argument(..., metavar="SCAN_A", help="First scan or catalogue model id (e.g. the base model)."),
    scan_b: str = typer.Argument(..., metavar="SCAN_B", help="Second scan or catalogue model id (e.g. the instruct)."),
    png: Optional[Path] = typer.Option(None, "--png", "-o", help="Write the heatmap of the difference (PNG)."),
    top: int = typer.Option(20, "--top", "-n", help="Rows in the table of largest changes."),
    relative: bool = typer.Option(True, "--relative/--absolute", help="Changes as B / A - 1 (default) or B - A."),
):
    """Show where two scans of the same architecture differ: a table and a difference heatmap."""
    from .comparison import compare, diff_table
    from .tables import view_scan

    result = compare(view_scan(scan_a), view_scan(scan_b), png=png, relative=relative)
    Console().print(diff_table(result, top, relative))
    if result.png is not None:
        console.print(f"[green]Wrote[/] {result.png}")


@app.command("report", short_help="Write an HTML report of a scan (and a selection).")
def report_cmd(
    scan_file: str = typer.Argument(
        ...,
        metavar="SCAN",
        help="A scan (ours or a reference snr_results_*.json) or a model id in `spectrum catalogue`.",
    ),
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
    from .tables import view_scan

    files = report(view_scan(scan_file), selection=selection, output=output, png=png, module=module, model=model)
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

    The output folder (-o/--output-dir) gets the trained model (safetensors, in the input's dtypes), its
    tokenizer, selection.json and selection.yaml, and train_summary.json (parameters, losses, tokens/s, peak
    memory). A folder holding an earlier run is refused unless --resume or --overwrite. While training, the
    latest resumable checkpoint-N/ is kept for --resume; it is removed after a successful run unless
    --keep-checkpoints. Ctrl-C (SIGINT) or SIGTERM stops after the current step with a checkpoint of it (a
    second one stops at once) and prints the command that resumes; the exit code is 130 or 143. A run that
    fails before training leaves no folder behind.
    """
    from .training import train

    given = {k: v for k, v in flags.items() if v is not None}
    cfg = TrainConfig.from_yaml(config, **given) if config else TrainConfig.from_dict(given, "the flags")
    if cfg.verbose:
        logging.getLogger("spectrum_llm").setLevel(logging.DEBUG)
    train(cfg)  # logs one start line, shows the progress bars and logs one summary line
    if distributed.world_size() > 1:  # see training/engine.py: a clean exit, not an abort at teardown
        from .training.engine import finish

        finish()
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)


@app.command("convert", short_help="Convert a GGUF model into a safetensors folder.")
def convert_cmd(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="A .gguf file, builtin:smollm2-135m or builtin:gemma3-270m."
    ),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help=f"Folder to write (default: the cache, {cache.WHERE}, in models/)."
    ),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32."),
):
    """Convert a GGUF model into a transformers safetensors folder (config, weights, tokenizer) for training."""
    from .conversion import gguf_to_folder

    console.print(f"[green]Wrote[/] {gguf_to_folder(model, output, dtype)}")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"spectrum-llm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version of spectrum-llm and exit."
    ),
) -> None:
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
    with _logging_to_stdout(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # libraries' deprecation notices are not the user's to act on
        try:
            app(args=argv, prog_name="spectrum")
        except SpectrumError as e:
            console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
            sys.exit(2)
        except TrainingInterrupted as e:
            args = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--overwrite", "--resume")]
            console.print(escape(e.describe(shlex.join(["spectrum", *args, "--resume"]))), soft_wrap=True)
            sys.exit(e.exit_code)


cli_score.register(app, options_from)  # `spectrum score`, kept in its own module
