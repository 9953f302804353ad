"""Targeted training: Spectrum, full fine-tuning or LoRA on the same data and schedule.

``train(TrainConfig(...))`` loads the model in its own dtype, makes only the chosen parameters
trainable, and hands everything to ``transformers.Trainer`` (so DDP, FSDP2 and DeepSpeed come from
``torchrun`` / ``accelerate launch`` as usual). Frozen weights stay in the checkpoint's low precision
with no gradient and no optimizer state; trainable weights are upcast to fp32 (master copies) and the
forward pass runs under autocast. The final model is written in the input's dtypes, so every frozen
tensor is bit-identical to the input, with the tokenizer, the selection and ``train_summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed, estimators
from .data import DataConfig, PadCollator, build_datasets, check_seq_len
from .errors import SpectrumError, require
from .params import count_params
from .progress import progress_bar
from .results import check_writable, write_json_atomic, write_text_atomic
from .selection import DEFAULT_TOP_PERCENT

LOG = logging.getLogger(__name__)
METHODS = ("spectrum", "full", "lora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SUMMARY_FILE = "train_summary.json"
SELECTION_FILE = "selection.json"
DEFAULT_SEQ_LEN = 512
DEFAULT_LR = 2e-5
DEFAULT_LORA_LR = 2e-4


def _shown(value: Any) -> str:
    """A default as help text says it: on/off, 1 (not 1.0), 2e-5 (not 2e-05)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(default: Any = None, text: str = "", *flags: str, cli: bool = True, factory: Any = None) -> Any:
    """A TrainConfig field with its help text, where ``{default}`` reads the default, so each default is
    stated once. ``cli`` fields are `spectrum train` flags: ``--field-name`` (``--x/--no-x`` for booleans)
    unless ``flags`` names them; the others are set in the YAML file or in Python."""
    meta = {"help": text.format(default=_shown(default)), "flags": flags, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. Field names are the YAML keys and (with dashes) the CLI flags; each
    field's help is the flag's ``--help`` text."""

    model: str = _setting(
        "",
        "Checkpoint folder, a hub id in the local cache, or a GGUF file / "
        "builtin:smollm2-135m (converted once, cached).",
    )
    data: str = _setting("", "Training data: .jsonl/.json/.parquet/.txt or a datasets save_to_disk folder.")
    output_dir: str = _setting(
        "", "Where the model, checkpoints, selection and train_summary.json go.", "--output-dir", "-o"
    )
    method: str = _setting(
        "spectrum",
        "spectrum, full or lora (all linear layers; with --selection/--top-percent "
        "only the selected ones, rank by score); default {default}.",
    )
    task: str = _setting(
        "cpt",
        "cpt (text, packed) or sft (chat messages or prompt/completion; loss on answers only); default {default}.",
    )
    text_field: str = _setting("text", "The text column for cpt (default {default}).")
    # spectrum: a selection file, or a scan (file or cached) and a percentage (default DEFAULT_TOP_PERCENT)
    selection: str | None = _setting(
        None,
        "Selection file (.yaml/.json/.txt; for --method lora also a LoraConfig .json from select --format peft).",
        "--selection",
        "-s",
    )
    top_percent: float | None = _setting(
        None,
        "Train this percent of each module type, chosen from a scan (run "
        f"once and cached; default {_shown(DEFAULT_TOP_PERCENT)}, which with the "
        "embeddings is about 60% of SmolLM2-135M's parameters).",
    )
    scan: str | None = _setting(None, "Scan file to select from (written there if absent).")
    estimator: str = _setting(estimators.DEFAULT, "Estimator for a scan run here ({default}).")
    train_embeddings: bool = _setting(
        True, "Train the input embeddings (and a head tied to them) besides the selection (default: {default})."
    )
    train_lm_head: bool | None = _setting(
        None,
        "Train the output head besides the selection (default: on; a "
        "head tied to the embeddings follows --train-embeddings).",
    )
    # lora
    lora_rank: int = _setting(16, "LoRA rank (default {default}).")
    lora_alpha: float | None = _setting(None, "LoRA alpha (default: twice the rank).", cli=False)
    lora_dropout: float = _setting(0.0, "LoRA dropout (default {default}).", cli=False)
    # data
    seq_len: int | None = _setting(
        None, f"Sequence length in tokens (default {DEFAULT_SEQ_LEN}, or the model's maximum when smaller)."
    )
    packing: bool | None = _setting(None, "Pack examples into full blocks (default: on for cpt, off for sft).")
    eval_split: float = _setting(0.0, "Fraction of the data held out for eval.")
    eval_data: str | None = _setting(None, "Separate eval data file.")
    # schedule
    batch_size: int = _setting(4, "Per-device batch size (default {default}).")
    eval_batch_size: int | None = _setting(None, "Per-device eval batch size (default: the batch size).", cli=False)
    grad_accum: int = _setting(1, "Gradient accumulation steps (default {default}).")
    learning_rate: float | None = _setting(
        None,
        f"Peak learning rate (default {_shown(DEFAULT_LR)}; lora {_shown(DEFAULT_LORA_LR)}).",
        "--lr",
        "--learning-rate",
    )
    lr_scheduler: str = _setting("cosine", "Schedule: {default} (default), linear, constant, ...")
    warmup_steps: float = _setting(0.0, "Warmup steps (a value < 1 is a fraction of the run).")
    weight_decay: float = _setting(
        0.0,
        "AdamW weight decay (default {default}, which keeps the frozen rows of "
        "partially trained tensors bit-identical).",
        cli=False,
    )
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm (default {default}).", cli=False)
    epochs: float = _setting(1.0, "Epochs (default {default}).")
    max_steps: int = _setting(-1, "Stop after this many steps (overrides --epochs).")
    seed: int = _setting(42, "Random seed (default {default}).")
    # runtime
    precision: str = _setting("auto", "auto (the model's dtype), bf16, fp16 or fp32; default {default}.")
    gradient_checkpointing: bool = _setting(False, "Recompute activations to save memory.")
    logging_steps: int = _setting(10, "Log every N steps (default {default}).")
    eval_steps: int | None = _setting(None, "Evaluate every N steps (default: every save).", cli=False)
    save_steps: int = _setting(
        500, "Save a resumable checkpoint every N steps (default {default}); only the latest is kept."
    )
    save_total_limit: int | None = _setting(1, "Checkpoints kept while training (default {default}).", cli=False)
    keep_checkpoints: bool = _setting(
        False,
        "Keep the last checkpoint (with optimizer state) after a successful "
        "run; by default it is removed and only the model is left.",
        "--keep-checkpoints",
    )
    resume: bool = _setting(False, "Continue from the last checkpoint in --output-dir.")
    use_cpu: bool | None = _setting(None, "Train on the CPU (default: when no GPU is present).", cli=False)
    fsdp: bool = _setting(False, "Shard with FSDP2 (under torchrun).")
    fsdp_config: dict[str, Any] | str | None = _setting(
        None, "accelerate's FSDP settings (default: version 2, FSDP2).", cli=False
    )
    deepspeed: str | None = _setting(None, "DeepSpeed config JSON (see examples/).")
    report_to: str = _setting("none", "Where the Trainer reports metrics (default {default}).", cli=False)
    progress: bool = _setting(True, "Show the scan's and the training's progress bars (default: {default}).")
    verbose: bool = _setting(
        False, "Also show the data preparation bars, transformers' messages and every logged metric.", "--verbose"
    )
    extra_args: dict[str, Any] = _setting(
        None, "More transformers TrainingArguments, passed as they are.", cli=False, factory=dict
    )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        """Read a YAML file of these fields (dashes or underscores); ``overrides`` (e.g. CLI flags) win."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SpectrumError(f"Config file {p} does not exist. Pass --config with a YAML file of train settings.")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SpectrumError(f"{p} is not valid YAML ({e}).") from None
        if not isinstance(data, dict):
            raise SpectrumError(f"{p} must be a mapping of settings (key: value), not {type(data).__name__}.")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}}, source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise SpectrumError(
                f"{source}: unknown setting(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        return cls(**norm)

    def validate(self) -> None:
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise SpectrumError(
                    f"No {name.replace('_', '-')} given. Pass --{name.replace('_', '-')} or set "
                    f"`{name}:` in the config file."
                )
        if self.method not in METHODS:
            raise SpectrumError(f"Unknown method {self.method!r}. Use one of: {', '.join(METHODS)}.")
        if self.precision not in PRECISIONS:
            raise SpectrumError(f"Unknown precision {self.precision!r}. Use one of: {', '.join(PRECISIONS)}.")
        if self.method == "full" and (self.selection or self.top_percent is not None):
            raise SpectrumError(
                "--selection/--top-percent apply to --method spectrum (train the selection) and lora "
                "(adapters on the selection), not full. Drop them or pick one of those."
            )
        if self.selection and self.top_percent is not None:
            raise SpectrumError("Give either --selection FILE or --top-percent (which selects from a scan), not both.")
        if self.top_percent is not None and not 0 < self.top_percent <= 100:
            raise SpectrumError(f"--top-percent must be in (0, 100], got {self.top_percent}.")
        if self.fsdp and self.deepspeed:
            raise SpectrumError("Choose one engine: --fsdp or --deepspeed, not both.")
        for name in ("batch_size", "grad_accum", "lora_rank", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise SpectrumError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.max_steps < 1 and self.epochs <= 0:
            raise SpectrumError("Nothing to train: set --epochs above 0 or --max-steps to 1 or more.")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LORA_LR if self.method == "lora" else DEFAULT_LR


@dataclass
class TrainSummary:
    """What a run did and what it cost; written as ``train_summary.json`` beside the model."""

    method: str
    task: str
    model: str  # as the user named it (builtin:smollm2-135m, a hub id, a path)
    model_path: str  # what was loaded: the folder, after any GGUF conversion
    output_dir: str
    trainable_params: int
    total_params: int
    steps: int
    epochs: float
    train_loss: float | None
    losses: list[float]  # every logged training loss, the last step's included
    loss_steps: list[int]  # the step of each of them
    eval_loss: float | None
    tokens: int
    tokens_per_second: float
    runtime_s: float
    peak_memory_bytes: int
    memory_kind: str
    world_size: int
    engine: str
    dtype: str
    precision: str
    resumed_from: str | None
    selection: str | None
    selected_modules: int | None
    data: dict[str, Any]
    config: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)  # kept in output_dir (--keep-checkpoints)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable_fraction"] = self.trainable_fraction
        return d


# ------------------------------------------------------------------------------------------ checks


def _model_files_size(model: str) -> int:
    p = Path(model)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())


def _check_output_dir(cfg: TrainConfig) -> str | None:
    """Check that the output folder can be written and has room, without creating it (a run that fails before
    training leaves nothing behind); return the checkpoint to resume. Safe on every rank at once."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(cfg.output_dir)
    check_writable(out, folder=True)
    need = 2 * _model_files_size(cfg.model)  # the final model plus at least one checkpoint
    free = shutil.disk_usage(next(p for p in (out, *out.parents) if p.is_dir())).free
    if need and free < need:
        raise SpectrumError(
            f"Not enough space in {out}: {free / 2**30:.2f} GiB free, the model and one checkpoint "
            f"need about {need / 2**30:.2f} GiB. Free space or choose another --output-dir."
        )
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last and not cfg.resume:
        raise SpectrumError(
            f"{out} already holds checkpoints of an earlier run ({Path(last).name}). Pass --resume to "
            "continue it, or choose an empty --output-dir."
        )
    return last if cfg.resume else None


def _resolve_seq_len(cfg: TrainConfig, max_positions: int | None, main: bool) -> int:
    """The sequence length asked for, or the default cut to the model's maximum (said in one line)."""
    if cfg.seq_len is not None:
        check_seq_len(cfg.seq_len, max_positions, cfg.model)
        return cfg.seq_len
    if max_positions and max_positions < DEFAULT_SEQ_LEN:
        if main:
            LOG.info("seq-len %d: the model's maximum (the default is %d)", max_positions, DEFAULT_SEQ_LEN)
        return max_positions
    return DEFAULT_SEQ_LEN


def _load_model_config(model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise SpectrumError(
            f"Cannot load a model from {model!r} ({str(e).splitlines()[0]}). Pass --model a "
            "checkpoint folder with config.json, or a hub id already in the local cache."
        ) from None


def _model_dtype(model_cfg):
    import torch

    dt = getattr(model_cfg, "dtype", None) or getattr(model_cfg, "torch_dtype", None) or torch.float32
    return getattr(torch, dt) if isinstance(dt, str) else dt


def _precision(cfg: TrainConfig, dtype) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# ------------------------------------------------------------------------------------------ methods


def resolve_selection(cfg: TrainConfig, source: str, resumed: bool = False):
    """The Selection a spectrum run trains: a file, the one saved by the run being resumed, or a fresh scan.

    ``source`` is the model as the user named it: a GGUF file is scanned as itself (its scan is cached by content,
    so `spectrum scan` of the same file, anywhere, is reused), not as the folder converted for training.
    """
    from .selection import load_selection, select

    saved = Path(cfg.output_dir) / SELECTION_FILE
    if cfg.selection:
        return load_selection(cfg.selection)
    if resumed and saved.is_file() and cfg.top_percent is None:
        return load_selection(saved)
    from .conversion import is_gguf
    from .scanning import scan

    result = scan(
        source if is_gguf(source) else cfg.model,
        output=cfg.scan,
        estimator=cfg.estimator,
        resume=True,
        progress=cfg.progress,
    )
    sel = select(
        result,
        top_percent=cfg.top_percent if cfg.top_percent is not None else DEFAULT_TOP_PERCENT,
        train_embeddings=cfg.train_embeddings,
        train_lm_head=cfg.train_lm_head,
    )
    if distributed.is_main():
        from .models import tied_head
        from .selection_text import extras_text, rule_text

        LOG.info(
            "selected %d ranked modules%s by %s, from the %s%s scan of %s",
            len(sel.modules),
            extras_text(sel, bool(tied_head(result))),
            rule_text(sel),
            "cached " if result.cached else "",
            result.estimator,
            source,
        )
    return sel


def lora_kwargs(cfg: TrainConfig, source: str, model, resumed: bool) -> tuple[dict[str, Any], Any]:
    """LoraConfig arguments: all linear layers, or Spectrum-guided (a PEFT file, or a selection: targets the
    selected modules, rank by score up to --lora-rank); and the selection it came from, if any."""
    from .lora import is_lora_config, load_lora_config, lora_config

    if cfg.selection and is_lora_config(cfg.selection):
        return load_lora_config(cfg.selection), None
    if not cfg.selection and cfg.top_percent is None:
        return dict(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ), None
    selection = resolve_selection(cfg, source, resumed)
    ratio = (cfg.lora_alpha or 2 * cfg.lora_rank) / cfg.lora_rank
    plan = lora_config(selection, max_rank=cfg.lora_rank, alpha_ratio=ratio, dropout=cfg.lora_dropout, model=model)
    LOG.info("%s", plan)
    return plan.config, selection


def apply_lora(model, kwargs: dict[str, Any]):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**kwargs))


def upcast_trainable(model) -> int:
    """fp32 master copies for trainable low-precision parameters; frozen ones keep their dtype."""
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


# ------------------------------------------------------------------------------------------ run


def _training_args(cfg: TrainConfig, precision: str):
    import torch
    from transformers import TrainingArguments

    use_cpu = cfg.use_cpu if cfg.use_cpu is not None else not torch.cuda.is_available()
    has_eval = bool(cfg.eval_data) or cfg.eval_split > 0
    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps if has_eval else None,
        use_cpu=use_cpu,
        ddp_find_unused_parameters=False,
        include_num_input_tokens_seen="non_padding",
        report_to=cfg.report_to,
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    if cfg.fsdp:
        kw["fsdp"] = True
        kw["fsdp_config"] = cfg.fsdp_config or {"version": 2}
    if cfg.deepspeed:
        kw["deepspeed"] = cfg.deepspeed
    kw.update(cfg.extra_args)
    try:
        return TrainingArguments(**kw)
    except (ValueError, TypeError) as e:
        raise SpectrumError(f"Invalid training settings: {e}") from None


def _engine(trainer) -> str:
    """What actually ran: accelerate 1.15 turns multi-process CPU jobs into DDP even when FSDP is asked for."""
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
        return f"deepspeed-zero{stage}"
    if trainer.is_fsdp_enabled:
        return f"fsdp{getattr(trainer.accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    return "ddp" if trainer.args.world_size > 1 else "single"


def _peak_memory() -> tuple[int, str]:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"


def _final_state_dict(trainer, orig_dtypes: dict[str, Any]):
    """The full state dict (gathered across ranks by accelerate) in the input's dtypes; empty off rank 0."""
    sd = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    if not distributed.is_main() or sd is None:
        return {}
    return {k: v.to(orig_dtypes[k]) if k in orig_dtypes and v.dtype != orig_dtypes[k] else v for k, v in sd.items()}


def _without_tied(model, sd: dict[str, Any]) -> dict[str, Any]:
    """Drop the aliases of tied weights (``lm_head.weight`` when it is the embedding), as the input stored them."""
    own = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    aliases = set(model.state_dict()) - own
    return {k: v for k, v in sd.items() if k not in aliases}


def _save_outputs(trainer, cfg: TrainConfig, orig_dtypes, lora: bool) -> None:
    out = Path(cfg.output_dir)
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    if lora:
        trainer.save_model(str(out / "adapter"))
        if acc.num_processes > 1 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            return  # a sharded LoRA run keeps the adapter; merge it with `peft` on one device
        if distributed.is_main():
            merged = model.merge_and_unload()
            sd = {
                k: v.to(orig_dtypes[k]) if k in orig_dtypes and v.dtype != orig_dtypes[k] else v
                for k, v in merged.state_dict().items()
            }
            merged.save_pretrained(out, state_dict=_without_tied(merged, sd))
        return
    sd = _final_state_dict(trainer, orig_dtypes)
    if distributed.is_main():
        model.save_pretrained(out, state_dict=_without_tied(model, sd))


def _quiet(verbose: bool):
    """Silence datasets' progress bars and transformers' chatter for the run, and restore them after."""
    stack = contextlib.ExitStack()
    if verbose:
        return stack
    import datasets
    import transformers

    if datasets.utils.logging.is_progress_bar_enabled():
        datasets.disable_progress_bars()
        stack.callback(datasets.enable_progress_bars)
    if transformers.utils.logging.is_progress_bar_enabled():  # GGUF loading, weight loading, shard writing
        transformers.utils.logging.disable_progress_bar()
        stack.callback(transformers.utils.logging.enable_progress_bar)
    for lib in (datasets.utils.logging, transformers.utils.logging):
        level = lib.get_verbosity()
        lib.set_verbosity_error()
        stack.callback(lib.set_verbosity, level)
    return stack


def _callbacks(cfg: TrainConfig):
    """One progress bar with the last loss (instead of the Trainer's bar and its printed dicts), a logged loss at
    the last step, and no checkpoint of the last step when checkpoints are removed at the end anyway."""
    from transformers import TrainerCallback

    class Finish(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps:
                control.should_log = True
                if not cfg.keep_checkpoints:
                    control.should_save = False

    class Bar(TrainerCallback):
        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            if distributed.is_main():
                self.bar = progress_bar("train", "steps", "loss")
                self.bar.start()
                self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, loss="")

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(self.task, loss=f"loss {logs['loss']:.4g}")

        def on_train_end(self, args, state, control, **kw):
            self.close()

        def close(self):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return Finish(), (Bar() if cfg.progress and not cfg.verbose else None)


def _remove_checkpoints(out: Path) -> None:
    for ckpt in out.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt, ignore_errors=True)


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def train(config: TrainConfig, callbacks: list | None = None) -> TrainSummary:
    """Run one training job and return its summary (also written to ``output_dir/train_summary.json``).

    ``callbacks`` are ``transformers.TrainerCallback`` objects added to the Trainer. An output folder this
    run created is removed again when the run fails before it saved a checkpoint or the model.
    """
    require("transformers", "accelerate", "datasets", *(["peft"] if config.method == "lora" else []), extra="train")
    config.validate()
    out = Path(config.output_dir)
    existed = out.exists()
    try:
        with _quiet(config.verbose):
            return _train(config, callbacks)
    except BaseException:
        if (
            not existed
            and distributed.is_main()
            and out.is_dir()
            and not any(out.glob("checkpoint-*"))
            and not any(out.glob("*.safetensors"))
        ):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(config: TrainConfig, callbacks: list | None) -> TrainSummary:
    cfg = config
    from .conversion import cached_folder, gguf_to_folder, is_gguf

    main = distributed.is_main()
    if is_gguf(cfg.model):
        if main and cached_folder(cfg.model) is None:
            LOG.info("converting %s into a transformers folder (once; it is cached)", cfg.model)
        cfg = dataclasses.replace(cfg, model=str(gguf_to_folder(cfg.model)))
    resume_from = _check_output_dir(cfg)
    model_cfg = _load_model_config(cfg.model)
    max_positions = getattr(model_cfg, "max_position_embeddings", None)
    seq_len = _resolve_seq_len(cfg, max_positions, main)
    cfg = dataclasses.replace(cfg, seq_len=seq_len)
    dtype = _model_dtype(model_cfg)
    precision = _precision(cfg, dtype)
    args = _training_args(cfg, precision)  # sets up the distributed state first
    if main:
        LOG.debug("settings: %s", json.dumps(_jsonable(dataclasses.asdict(cfg))))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
    from transformers.trainer_callback import ProgressCallback

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dcfg = DataConfig(
        path=cfg.data,
        task=cfg.task,
        seq_len=seq_len,
        text_field=cfg.text_field,
        packing=cfg.packing,
        eval_split=cfg.eval_split,
        eval_path=cfg.eval_data,
        seed=cfg.seed,
    )
    with args.main_process_first(desc="prepare data"):
        train_ds, eval_ds, data_summary = build_datasets(dcfg, tokenizer, max_positions)

    selection = None
    if cfg.method == "spectrum":
        selection = resolve_selection(cfg, config.model, resumed=resume_from is not None)

    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype="auto")
    orig_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    if cfg.method == "spectrum":
        from .freezing import freeze

        assert selection is not None  # resolved above for the spectrum method
        frozen = freeze(model, selection)
        if frozen.partial and cfg.weight_decay and distributed.is_main():
            LOG.warning(
                "the selection trains only some rows of %s; weight decay still shrinks their frozen rows. "
                "Set weight_decay: 0 (the default) to keep them bit-identical.",
                ", ".join(frozen.partial),
            )
    elif cfg.method == "lora":
        lora_args, selection = lora_kwargs(cfg, config.model, model, resume_from is not None)
        model = apply_lora(model, lora_args)
        if distributed.is_main():
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(cfg.output_dir) / "lora_config.json", json.dumps(lora_args, indent=2) + "\n")
    always = _always_trained(model) if cfg.method == "spectrum" else 0
    if precision != "fp32" and getattr(args, "deepspeed_plugin", None) is None:
        upcast_trainable(model)  # DeepSpeed keeps its own fp32 master copies
    trainable, total = count_params(model)
    if cfg.method == "spectrum":
        trainable = frozen.trainable_params  # partial tensors count only their trainable rows
    if trainable == 0:
        raise SpectrumError(
            "No parameter is trainable: the selection matches nothing in this model. Check that "
            "the selection was made for this model (or pass --top-percent to select anew)."
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    if distributed.is_main():
        LOG.info(
            "%s: training %s of %s parameters (%.1f%%), %s, %d process%s",
            cfg.method,
            f"{trainable:,}",
            f"{total:,}",
            100 * trainable / total,
            precision,
            args.world_size,
            "es" if args.world_size > 1 else "",
        )
        if selection is not None:
            from .exports import write_selection
            from .selection_text import embedding_note

            flags = (
                "select again with --no-train-embeddings --no-train-lm-head"
                if cfg.selection
                else "pass --no-train-embeddings" + ("" if _tied(model) else " --no-train-lm-head")
            )
            note = embedding_note(trainable, always, flags)
            if note:
                LOG.info("%s", note)
            write_json_atomic(Path(cfg.output_dir) / SELECTION_FILE, selection.to_json())
            write_selection(selection, Path(cfg.output_dir) / "selection.yaml")

    finish, bar = _callbacks(cfg)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[finish, *([bar] if bar else []), *(callbacks or [])],
    )
    if not cfg.verbose:
        trainer.remove_callback(ProgressCallback)
    engine = _engine(trainer)
    if distributed.is_main() and cfg.fsdp and not engine.startswith("fsdp"):
        LOG.warning(
            "FSDP was asked for but accelerate runs this job as %s (it enables FSDP only on GPUs and other "
            "accelerators).",
            engine,
        )
    if distributed.is_main() and engine == "fsdp1":
        LOG.warning(
            "FSDP1 allocates gradients for whole flattened units, so frozen modules save little memory "
            "there; set fsdp_config version: 2 (FSDP2)."
        )
    t0 = time.monotonic()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if bar is not None:
            bar.close()
    runtime = time.monotonic() - t0
    tokens = int(trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0))
    eval_loss = None
    if eval_ds is not None:
        eval_loss = float(trainer.evaluate()["eval_loss"])
    _save_outputs(trainer, cfg, orig_dtypes, lora=cfg.method == "lora")
    trainer.accelerator.wait_for_everyone()
    if distributed.is_main():
        tokenizer.save_pretrained(cfg.output_dir)
        if not cfg.keep_checkpoints:
            _remove_checkpoints(Path(cfg.output_dir))
    peak, kind = _peak_memory()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    summary = TrainSummary(
        method=cfg.method,
        task=cfg.task,
        model=config.model,
        model_path=_where(cfg.model),
        output_dir=cfg.output_dir,
        trainable_params=trainable,
        total_params=total,
        steps=int(trainer.state.global_step),
        epochs=float(trainer.state.epoch or 0.0),
        train_loss=float(result.training_loss)
        if result.training_loss is not None and math.isfinite(result.training_loss)
        else None,
        losses=[float(h["loss"]) for h in logged],
        loss_steps=[int(h.get("step", 0)) for h in logged],
        eval_loss=eval_loss,
        tokens=tokens,
        tokens_per_second=tokens / runtime if runtime else 0.0,
        runtime_s=runtime,
        peak_memory_bytes=peak,
        memory_kind=kind,
        world_size=args.world_size,
        engine=engine,
        dtype=str(dtype).removeprefix("torch."),
        precision=precision,
        resumed_from=resume_from,
        selection=str(Path(cfg.output_dir) / SELECTION_FILE) if selection is not None else None,
        selected_modules=len(selection.modules) if selection is not None else None,
        data=dataclasses.asdict(data_summary),
        config=_jsonable(dataclasses.asdict(dataclasses.replace(config, seq_len=cfg.seq_len))),
        checkpoints=sorted(p.name for p in Path(cfg.output_dir).glob("checkpoint-*")) if cfg.keep_checkpoints else [],
    )
    if distributed.is_main():
        write_json_atomic(Path(cfg.output_dir) / SUMMARY_FILE, summary.to_json())
        loss = f"loss {summary.losses[-1]:.4g}" if summary.losses else "no loss logged"
        LOG.info(
            "done: %d steps, %s%s, %s tokens/s, peak %s memory %s, %.0f s -> %s",
            summary.steps,
            loss,
            f", eval loss {eval_loss:.4g}" if eval_loss is not None else "",
            _fmt_rate(summary.tokens_per_second),
            kind,
            _fmt_bytes(peak),
            summary.runtime_s,
            cfg.output_dir,
        )
    return summary


def _where(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


def _tied(model) -> bool:
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return emb is not None and head is not None and emb.weight is head.weight


def _always_trained(model) -> int:
    """Trainable parameters of the embeddings and the head (a tied pair once): what every selection adds."""
    from .naming import parse

    return count_params(model, lambda n, p: parse(n, p.dim()).kind in ("embedding", "lm_head"))[0]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        json.dumps(d, allow_nan=False)
        return d
    except (TypeError, ValueError):
        return {
            k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in d.items()
        }
