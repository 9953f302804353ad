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
from .selection import DEFAULT_TOP_PERCENT

app = typer.Typer(
    name="spectrum",
    help="Spectrum targeted training: scan weight spectra, select modules, train only those.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)


@app.command(short_help="Score every weight matrix of a checkpoint.")
def scan(
    model: str = typer.Argument(..., metavar="MODEL", help="Checkpoint folder, .safetensors/.bin/.gguf file, hub id in the local "
                                "Hugging Face cache, or builtin:smollm2-135m."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the scan (JSON)."),
    estimator: str = typer.Option("mp", help="SNR estimator: 'mp' (scale-invariant Marchenko-Pastur) or "
                                  "'reference' (the published formula, exactly)."),
    device: str = typer.Option("cpu", help="Where singular values are computed: cpu, cuda, cuda:1, ..."),
    modules: Optional[str] = typer.Option(None, "--modules", help="Only scan tensors whose name matches this regex."),
    reference_json: Optional[Path] = typer.Option(None, "--reference-json",
                                                  help="Also write the reference tool's flat layout "
                                                  "(snr_results_<slug>.json) into this folder."),
    resume: bool = typer.Option(True, help="Reuse a finished scan of the same weights (from OUTPUT or the cache, "
                                "wherever the file lies) and resume an interrupted one."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Score every weight matrix of a checkpoint by its signal-to-noise ratio (higher: more signal)."""
    from .results import storage_summary
    from .scanner import scan as run_scan

    result = run_scan(model, output=output, estimator=estimator, device=device, modules=modules,
                      reference_json=reference_json, resume=resume, progress=progress)
    skipped = [m for m in result.modules if m.skipped and m.kind == "linear"]
    console.print(f"[green]Scanned[/] {result.model} ({result.estimator} estimator"
                  f"{', reused from an earlier scan' if result.cached else ''}): {result.tally()} -> {output}",
                  soft_wrap=True)
    if storage_summary(result):
        console.print(storage_summary(result), soft_wrap=True)
    for m in skipped:
        console.print(f"[yellow]skipped[/] {m.name}: {m.skipped}", soft_wrap=True)


@app.command(short_help="Choose the modules to train from a scan.")
def select(
    scan_file: str = typer.Argument(..., metavar="SCAN_OR_MODEL", help="A scan (ours or a reference "
                                    "snr_results_*.json), a local checkpoint (scanned once, cached), or a model id "
                                    "with no local weights, whose published scan comes from the catalogue."),
    output: str = typer.Option(..., "-o", "--output", help="Output file: .yaml (Axolotl), .json (spectrum-llm), "
                               ".txt (one pattern per line), or - for stdout (YAML unless --format)."),
    top_percent: float = typer.Option(DEFAULT_TOP_PERCENT, "--top-percent", "-p",
                                      help="Percent of each module type kept, in (0, 100]."),
    rule: str = typer.Option("per-type", help="per-type (Spectrum-n), global (scale-invariant scores only) "
                             "or budget."),
    budget: Optional[str] = typer.Option(None, help="Trainable-parameter budget: a fraction (0.25) or a count "
                                         "(500M); implies --rule budget."),
    include: Optional[str] = typer.Option(None, help="Only rank modules whose name matches this regex."),
    exclude: Optional[str] = typer.Option(None, help="Never select modules whose name matches this regex."),
    train_embeddings: bool = typer.Option(True, help="Train the input embeddings (and a head tied to them)."),
    train_lm_head: Optional[bool] = typer.Option(None, "--train-lm-head/--no-train-lm-head",
                                                 help="Train the output head (default: yes; a head tied to the "
                                                 "embeddings is that one tensor, and follows --train-embeddings)."),
    train_norms: bool = typer.Option(False, help="Train every norm weight."),
    parts: bool = typer.Option(False, "--parts", help="Rank the parts of fused projections (q/k/v, gate/up) "
                               "separately."),
    compat: bool = typer.Option(False, "--compat", help="Write what the reference tool writes for this model, "
                                "byte for byte (from its scan file or from ours)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model folder: print the freeze summary for it "
                                         "(built on the meta device) and take parameter counts from it."),
    catalogue: Optional[Path] = typer.Option(None, "--catalogue", help="A folder of snr_results_<model>.json "
                                             "scans searched before the built-in ones (also $SPECTRUM_CATALOGUE)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="yaml (Axolotl), json (spectrum-llm), txt, or "
                                      "peft (a LoraConfig on the selected modules, rank by score); default: from "
                                      "the output's extension."),
    max_rank: int = typer.Option(32, "--max-rank", help="With --format peft: the best module's LoRA rank."),
    min_rank: Optional[int] = typer.Option(None, "--min-rank", help="With --format peft: the last selected "
                                           "module's rank in each type (default: a quarter of --max-rank)."),
):
    """Choose the modules to train from a scan and write them for a trainer.

    The default keeps the top 50% of each module type (Spectrum-50) and always adds the embeddings and the
    output head, as the reference tool does.
    """
    from .catalogue import resolve_scan
    from .exports import write_selection
    from .freezing import freeze, load_meta_model
    from .html_report import rule_text
    from .selection import embedding_note, extras_text, tied_embeddings
    from .selection import select as run_select

    scan_, source = resolve_scan(scan_file, catalogue=catalogue)
    meta = load_meta_model(model) if model is not None else None
    sel = run_select(scan_, top_percent=top_percent, rule=rule, budget=budget, include=include,
                     exclude=exclude, train_embeddings=train_embeddings, train_lm_head=train_lm_head,
                     train_norms=train_norms, parts=parts, compat=compat, model=meta)
    sel.rule["scan"] = source
    tied = bool(sel.rule.get("lm_head_tied")) or tied_embeddings(scan_)
    if not Path(scan_file).name.endswith((".json", ".json.gz")):
        console.print(f"using {sel.rule.get('scan')}")
    summary = freeze(meta, sel) if meta is not None else None
    where = "stdout" if output == "-" else output
    if fmt is not None and fmt.lower().lstrip(".") == "peft":
        from .lora import lora_config

        plan = lora_config(sel, max_rank=max_rank, min_rank=min_rank, model=meta)
        if output == "-":
            sys.stdout.write(plan.to_json())
        else:
            plan.save(output)
        console.print(f"[green]Selected[/] {len(sel.modules)} modules ({sel.rule.get('rule')}) -> PEFT LoraConfig "
                      f"{where}\n{plan}")
        return
    write_selection(sel, output, fmt)
    console.print(f"[green]Selected[/] {len(sel.modules)} ranked modules{extras_text(sel, tied)} "
                  f"by {rule_text(sel)} -> {where}", soft_wrap=True)
    if sel.rule.get("lm_head_tied") and sel.rule.get("train_embeddings") != sel.rule.get("train_lm_head"):
        console.print("note: lm_head is tied to the input embeddings (one tensor, which Axolotl and freeze know by "
                      "its embedding name), so it " + ("trains with them" if sel.rule.get("train_embeddings") else
                                                       "is trained through the embedding pattern this writes"))
    if sel.trainable_params and sel.total_params:
        console.print(f"trains {sel.trainable_params:,} of {sel.total_params:,} parameters "
                      f"({100 * sel.trainable_params / sel.total_params:.1f}%)", soft_wrap=True)
    head = train_lm_head is True if tied else sel.rule.get("train_lm_head", True)
    flags = " ".join(f for f, on in (("--no-train-embeddings", train_embeddings), ("--no-train-lm-head", head)) if on)
    note = None if compat else embedding_note(sel.trainable_params, sel.extra_params, f"pass {flags}")
    if note:
        console.print(f"[yellow]{note}[/]", soft_wrap=True)
    if summary is not None:
        console.print(str(summary), soft_wrap=True)


@app.command(short_help="Check a selection against a model before training.")
def check(
    selection: str = typer.Argument(..., metavar="SELECTION", help="A selection: .yaml (Axolotl), .json (ours) or "
                                    ".txt (one pattern per line)."),
    model: str = typer.Option(..., "--model", help="Checkpoint folder, weight file, builtin:smollm2-135m or a hub "
                              "id in the local cache; only its config is read (the model is built on the meta device)."),
    allow_unmatched: bool = typer.Option(False, "--allow-unmatched", help="Report patterns that match nothing "
                                         "instead of failing (exit 2)."),
    seq_len: int = typer.Option(512, "--seq-len", help="Sequence length at which activations are measured."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="Rank of the LoRA comparison (default: the "
                                            "rank whose adapter is closest to the selection's size)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="The model's training dtype (default: its config's; "
                                        "bfloat16 for GGUF)."),
    activations: bool = typer.Option(True, "--activations/--no-activations", help="Measure activation memory "
                                     "(a forward pass on the meta device)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON."),
):
    """Check a selection against a model before training: what each pattern unfreezes, what is missing, the
    trainable share and the training memory of full fine-tuning, this selection and LoRA."""
    from .checking import check as run_check
    from .results import write_json_atomic

    report = run_check(selection, model, allow_unmatched=True, seq_len=seq_len, lora_rank=lora_rank, dtype=dtype,
                       activations=activations)
    typer.echo(str(report))
    if json_out is not None:
        write_json_atomic(json_out, report.to_json())
    if report.unmatched and not allow_unmatched:
        raise SpectrumError(f"{len(report.unmatched)} pattern(s) match nothing in {model} (listed above): the "
                            "selection was made for another model or naming. Select again from a scan of this "
                            "model, or pass --allow-unmatched.")


@app.command("catalogue", short_help="List the scans select can use without scanning.")
def catalogue_cmd(
    catalogue: Optional[Path] = typer.Option(None, "--catalogue", help="Also list the scans in this folder "
                                             "(searched first; also $SPECTRUM_CATALOGUE)."),
):
    """List the scans `spectrum select MODEL_ID` can use without scanning: yours first, then the published ones."""
    from .catalogue import entries

    rows = [("model (snr_results_<model>.json)", "modules", "estimator", "source", "Axolotl", "status")]
    for e in entries(catalogue):
        rows.append((e.name, str(e.modules) if e.modules else "-", e.estimator or "-", e.describe_source(short=True),
                     "reads it" if e.axolotl_readable else "cannot read it",
                     "ok" if e.problem is None else f"defective: {e.problem}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])


@app.command(short_help="Print a scan's modules sorted by score.")
def show(
    scan_file: Path = typer.Argument(..., metavar="SCAN", help="A scan: ours or a reference snr_results_*.json."),
    top: Optional[int] = typer.Option(None, "--top", "-n", help="Show only the N highest-scoring modules."),
    type_: Optional[str] = typer.Option(None, "--type", "-t", help="Only this module type (e.g. self_attn.v_proj; "
                                        "mlp.experts.down_proj matches every expert)."),
    all_kinds: bool = typer.Option(False, "--all", help="Also list embeddings, lm_head and norms."),
):
    """Print a scan's modules sorted by score, highest first."""
    from .grids import as_scan
    from .tables import scan_table

    Console().print(scan_table(as_scan(scan_file), top=top, type=type_, all_kinds=all_kinds))


@app.command(short_help="Show where two scans of one architecture differ.")
def compare(
    scan_a: Path = typer.Argument(..., metavar="SCAN_A", help="First scan (e.g. the base model)."),
    scan_b: Path = typer.Argument(..., metavar="SCAN_B", help="Second scan (e.g. the instruct model)."),
    png: Optional[Path] = typer.Option(None, "--png", "-o", help="Write the heatmap of the difference (PNG)."),
    top: int = typer.Option(20, "--top", "-n", help="Rows in the table of largest changes."),
    relative: bool = typer.Option(True, "--relative/--absolute", help="Changes as B / A - 1 (default) or B - A."),
):
    """Show where two scans of the same architecture differ: a table and a difference heatmap."""
    from .comparison import compare as run_compare
    from .comparison import diff_table

    result = run_compare(scan_a, scan_b, png=png, relative=relative)
    Console().print(diff_table(result, top, relative))
    if result.png is not None:
        console.print(f"[green]Wrote[/] {result.png}")


@app.command(short_help="Write an HTML report of a scan (and a selection).")
def report(
    scan_file: Path = typer.Argument(..., metavar="SCAN", help="A scan: ours or a reference snr_results_*.json."),
    selection: Optional[str] = typer.Option(None, "--selection", "-s", help="A selection (.yaml/.json/.txt) to "
                                            "mark on the heatmap and count by type."),
    output: Optional[Path] = typer.Option(Path("report.html"), "-o", "--output",
                                          help="The HTML report (one self-contained file)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write the heatmap alone as PNG."),
    module: Optional[str] = typer.Option(None, "--module", help="Draw this module's singular-value spectrum "
                                         "against the Marchenko-Pastur law (needs --model)."),
    model: Optional[str] = typer.Option(None, "--model", help="The checkpoint the scan was made from."),
):
    """Write an HTML report of a scan (heatmap, spectrum, trainable parameters by type)."""
    from .html_report import report as run_report

    files = run_report(scan_file, selection=selection, output=output, png=png, module=module, model=model)
    for path in (files.html, files.png):
        if path is not None:
            console.print(f"[green]Wrote[/] {path}")


@app.command(short_help="Train only the selected modules (or full / LoRA).")
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of train settings (keys as the "
                                          "flags, dashes or underscores); flags given here win."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint folder, a hub id in the local cache, or a "
                                        "GGUF file / builtin:smollm2-135m (converted once, cached)."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data: .jsonl/.json/.parquet/.txt or a "
                                       "datasets save_to_disk folder."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Where the model, checkpoints, "
                                             "selection and train_summary.json go."),
    method: Optional[str] = typer.Option(None, "--method", help="spectrum (default), full or lora (all linear "
                                         "layers; with --selection/--top-percent only the selected ones, rank by "
                                         "score)."),
    task: Optional[str] = typer.Option(None, "--task", help="cpt (text, packed; default) or sft (chat messages or "
                                       "prompt/completion; loss on answers only)."),
    text_field: Optional[str] = typer.Option(None, "--text-field", help="The text column for cpt (default text)."),
    selection: Optional[str] = typer.Option(None, "--selection", "-s", help="Selection file (.yaml/.json/.txt; for "
                                            "--method lora also a LoraConfig .json from select --format peft)."),
    top_percent: Optional[float] = typer.Option(None, "--top-percent", help="Train this percent of each module "
                                                "type, chosen from a scan (run once and cached; default "
                                                f"{DEFAULT_TOP_PERCENT:g}, which with the embeddings is about 60% "
                                                "of SmolLM2-135M's parameters)."),
    scan: Optional[str] = typer.Option(None, "--scan", help="Scan file to select from (written there if absent)."),
    estimator: Optional[str] = typer.Option(None, "--estimator", help="Estimator for a scan run here (mp)."),
    train_embeddings: Optional[bool] = typer.Option(None, "--train-embeddings/--no-train-embeddings",
                                                    help="Train the input embeddings (and a head tied to them) "
                                                    "besides the selection (default: on)."),
    train_lm_head: Optional[bool] = typer.Option(None, "--train-lm-head/--no-train-lm-head",
                                                 help="Train the output head besides the selection (default: "
                                                 "on; a head tied to the embeddings follows --train-embeddings)."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA rank (default 16)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length in tokens (default 512, or the "
                                          "model's maximum when smaller)."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack examples into full blocks "
                                           "(default: on for cpt, off for sft)."),
    eval_split: Optional[float] = typer.Option(None, "--eval-split", help="Fraction of the data held out for eval."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Separate eval data file."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Per-device batch size (default 4)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps (default 1)."),
    learning_rate: Optional[float] = typer.Option(None, "--lr", "--learning-rate", help="Peak learning rate "
                                                  "(default 2e-5; lora 2e-4)."),
    lr_scheduler: Optional[str] = typer.Option(None, "--lr-scheduler", help="Schedule: cosine (default), linear, "
                                               "constant, ..."),
    warmup_steps: Optional[float] = typer.Option(None, "--warmup-steps", help="Warmup steps (a value < 1 is a "
                                                 "fraction of the run)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Epochs (default 1)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps (overrides "
                                            "--epochs)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 42)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (the model's dtype; default), bf16, "
                                            "fp16 or fp32."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-"
                                                          "checkpointing", help="Recompute activations to save "
                                                          "memory."),
    save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Save a resumable checkpoint every N steps "
                                             "(default 500); only the latest is kept."),
    keep_checkpoints: Optional[bool] = typer.Option(None, "--keep-checkpoints", help="Keep the last checkpoint "
                                                    "(with optimizer state) after a successful run; by default it "
                                                    "is removed and only the model is left."),
    logging_steps: Optional[int] = typer.Option(None, "--logging-steps", help="Log every N steps (default 10)."),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue from the last checkpoint "
                                          "in --output-dir."),
    deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="DeepSpeed config JSON (see examples/)."),
    fsdp: Optional[bool] = typer.Option(None, "--fsdp/--no-fsdp", help="Shard with FSDP2 (under torchrun)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Show the scan's and the "
                                            "training's progress bars (default: on)."),
    verbose: Optional[bool] = typer.Option(None, "--verbose", help="Also show the data preparation bars, "
                                           "transformers' messages and every logged metric."),
):
    """Train only the selected modules (or --method full / lora on the same data and schedule).

    OUTPUT_DIR gets the trained model (safetensors, in the input's dtypes), its tokenizer, selection.json and
    selection.yaml, and train_summary.json (parameters, losses, tokens/s, peak memory). While training, the
    latest resumable checkpoint-N/ is kept for --resume; it is removed after a successful run unless
    --keep-checkpoints. A run that fails before training leaves no folder behind.
    """
    from .training import TrainConfig, train as run_train

    flags = {k: v for k, v in locals().items() if k not in ("config", "TrainConfig", "run_train") and v is not None}
    cfg = TrainConfig.from_yaml(config, **flags) if config else TrainConfig.from_dict(flags, "the flags")
    run_train(cfg)  # prints one start line, the progress bars and one summary line


@app.command(short_help="Convert a GGUF model into a safetensors folder.")
def convert(
    model: str = typer.Argument(..., metavar="MODEL", help="A .gguf file or builtin:smollm2-135m."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to write (default: the cache, "
                                          "$SPECTRUM_CACHE, else $XDG_CACHE_HOME/spectrum-llm, else "
                                          "~/.cache/spectrum-llm, in models/)."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32."),
):
    """Convert a GGUF model into a transformers safetensors folder (config, weights, tokenizer) for training."""
    from .convert import gguf_to_folder

    console.print(f"[green]Wrote[/] {gguf_to_folder(model, output, dtype)}")


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
