"""Targeted training: Spectrum, full fine-tuning or LoRA on the same data and schedule.

``train(TrainConfig(...))`` loads the model in its own dtype, makes only the chosen parameters
trainable, and hands everything to ``transformers.Trainer`` (so DDP, FSDP2 and DeepSpeed come from
``torchrun`` / ``accelerate launch`` as usual). Frozen weights stay in the checkpoint's low precision
with no gradient and no optimizer state; trainable weights are upcast to fp32 (master copies) and the
forward pass runs under autocast. The final model is written in the input's dtypes, so every frozen
tensor is bit-identical to the input, with the tokenizer, the selection and ``train_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataConfig, PadCollator, build_datasets, check_seq_len
from .errors import SpectrumError
from .results import write_json_atomic, write_text_atomic

METHODS = ("spectrum", "full", "lora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SUMMARY_FILE = "train_summary.json"
SELECTION_FILE = "selection.json"


@dataclass
class TrainConfig:
    """Every setting of a training run. Field names are the YAML keys and (with dashes) the CLI flags."""

    model: str = ""
    data: str = ""
    output_dir: str = ""
    method: str = "spectrum"
    task: str = "cpt"
    text_field: str = "text"
    # spectrum: a selection file, or a scan (file or cached) and a percentage
    selection: str | None = None
    top_percent: float | None = None
    scan: str | None = None
    estimator: str = "mp"
    # lora
    lora_rank: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    # data
    seq_len: int = 512
    packing: bool | None = None
    eval_split: float = 0.0
    eval_data: str | None = None
    # schedule
    batch_size: int = 4
    eval_batch_size: int | None = None
    grad_accum: int = 1
    learning_rate: float | None = None
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1
    seed: int = 42
    # runtime
    precision: str = "auto"
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    eval_steps: int | None = None
    save_steps: int = 500
    save_total_limit: int | None = 2
    resume: bool = False
    use_cpu: bool | None = None
    fsdp: bool = False
    fsdp_config: dict[str, Any] | str | None = None
    deepspeed: str | None = None
    report_to: str = "none"
    extra_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
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
    def from_dict(cls, data: dict[str, Any], source: str = "the config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise SpectrumError(f"{source}: unknown setting(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        return cls(**norm)

    def validate(self) -> None:
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise SpectrumError(f"No {name.replace('_', '-')} given. Pass --{name.replace('_', '-')} or set "
                                    f"`{name}:` in the config file.")
        if self.method not in METHODS:
            raise SpectrumError(f"Unknown method {self.method!r}. Use one of: {', '.join(METHODS)}.")
        if self.precision not in PRECISIONS:
            raise SpectrumError(f"Unknown precision {self.precision!r}. Use one of: {', '.join(PRECISIONS)}.")
        if self.method == "full" and (self.selection or self.top_percent is not None):
            raise SpectrumError("--selection/--top-percent apply to --method spectrum (train the selection) and lora "
                                "(adapters on the selection), not full. Drop them or pick one of those.")
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
        return 2e-4 if self.method == "lora" else 2e-5


@dataclass
class TrainSummary:
    """What a run did and what it cost; written as ``train_summary.json`` beside the model."""

    method: str
    task: str
    model: str
    output_dir: str
    trainable_params: int
    total_params: int
    steps: int
    epochs: float
    train_loss: float | None
    losses: list[float]
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
    """Create the output folder, check it is writable and has room; return the checkpoint to resume."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".spectrum-write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise SpectrumError(f"Output folder {out} is not writable ({e.strerror or e}). Choose another "
                            "--output-dir or fix its permissions.") from None
    need = 2 * _model_files_size(cfg.model)  # the final model plus at least one checkpoint
    free = shutil.disk_usage(out).free
    if need and free < need:
        raise SpectrumError(f"Not enough space in {out}: {free / 2**30:.2f} GiB free, the model and one checkpoint "
                            f"need about {need / 2**30:.2f} GiB. Free space or choose another --output-dir.")
    last = get_last_checkpoint(str(out))
    if last and not cfg.resume:
        raise SpectrumError(f"{out} already holds checkpoints of an earlier run ({Path(last).name}). Pass --resume to "
                            "continue it, or choose an empty --output-dir.")
    return last if cfg.resume else None


def _load_model_config(model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise SpectrumError(f"Cannot load a model from {model!r} ({str(e).splitlines()[0]}). Pass --model a "
                            "checkpoint folder with config.json, or a hub id already in the local cache.") from None


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


def _default_scan_path(cfg: TrainConfig) -> Path:
    from .catalogue import scan_cache_path

    return scan_cache_path(cfg.model, cfg.estimator)


def resolve_selection(cfg: TrainConfig, resumed: bool = False):
    """The Selection a spectrum run trains: a file, the one saved by the run being resumed, or a fresh scan."""
    from .selection import load_selection, select

    saved = Path(cfg.output_dir) / SELECTION_FILE
    if cfg.selection:
        return load_selection(cfg.selection)
    if resumed and saved.is_file() and cfg.top_percent is None:
        return load_selection(saved)
    from .scanner import scan

    scan_path = Path(cfg.scan) if cfg.scan else _default_scan_path(cfg)
    result = scan(cfg.model, output=scan_path, estimator=cfg.estimator, resume=True)
    return select(result, top_percent=cfg.top_percent if cfg.top_percent is not None else 50.0)


def _lora_kwargs(cfg: TrainConfig, model, resumed: bool) -> tuple[dict[str, Any], Any]:
    """LoraConfig arguments: all linear layers, or Spectrum-guided (a PEFT file, or a selection: targets the
    selected modules, rank by score up to --lora-rank); and the selection it came from, if any."""
    from .lora import is_lora_config, load_lora_config, lora_config

    if cfg.selection and is_lora_config(cfg.selection):
        return load_lora_config(cfg.selection), None
    if not cfg.selection and cfg.top_percent is None:
        return dict(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank, lora_dropout=cfg.lora_dropout,
                    target_modules="all-linear", task_type="CAUSAL_LM"), None
    selection = resolve_selection(cfg, resumed)
    ratio = (cfg.lora_alpha or 2 * cfg.lora_rank) / cfg.lora_rank
    plan = lora_config(selection, max_rank=cfg.lora_rank, alpha_ratio=ratio, dropout=cfg.lora_dropout, model=model)
    print(f"[spectrum] {plan}", flush=True)
    return plan.config, selection


def _apply_lora(model, kwargs: dict[str, Any]):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**kwargs))


def _upcast_trainable(model) -> int:
    """fp32 master copies for trainable low-precision parameters; frozen ones keep their dtype."""
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def count_params(model) -> tuple[int, int]:
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


# ------------------------------------------------------------------------------------------ run


def _training_args(cfg: TrainConfig, precision: str):
    import torch
    from transformers import TrainingArguments

    use_cpu = cfg.use_cpu if cfg.use_cpu is not None else not torch.cuda.is_available()
    has_eval = bool(cfg.eval_data) or cfg.eval_split > 0
    kw: dict[str, Any] = dict(
        output_dir=cfg.output_dir, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, seed=cfg.seed, bf16=precision == "bf16", fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps if has_eval else None, use_cpu=use_cpu,
        ddp_find_unused_parameters=False, include_num_input_tokens_seen="non_padding", report_to=cfg.report_to,
        remove_unused_columns=False, disable_tqdm=False,
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
    if not trainer.accelerator.is_main_process or sd is None:
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
        if acc.is_main_process:
            merged = model.merge_and_unload()
            sd = {k: v.to(orig_dtypes[k]) if k in orig_dtypes and v.dtype != orig_dtypes[k] else v
                  for k, v in merged.state_dict().items()}
            merged.save_pretrained(out, state_dict=_without_tied(merged, sd))
        return
    sd = _final_state_dict(trainer, orig_dtypes)
    if acc.is_main_process:
        model.save_pretrained(out, state_dict=_without_tied(model, sd))


def train(config: TrainConfig, callbacks: list | None = None) -> TrainSummary:
    """Run one training job and return its summary (also written to ``output_dir/train_summary.json``).

    ``callbacks`` are ``transformers.TrainerCallback`` objects added to the Trainer.
    """
    cfg = config
    cfg.validate()
    from .convert import gguf_to_folder, is_gguf

    if is_gguf(cfg.model):
        cfg = dataclasses.replace(cfg, model=str(gguf_to_folder(cfg.model)))
    resume_from = _check_output_dir(cfg)
    model_cfg = _load_model_config(cfg.model)
    check_seq_len(cfg.seq_len, getattr(model_cfg, "max_position_embeddings", None), cfg.model)
    dtype = _model_dtype(model_cfg)
    precision = _precision(cfg, dtype)
    args = _training_args(cfg, precision)  # sets up the distributed state first

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dcfg = DataConfig(path=cfg.data, task=cfg.task, seq_len=cfg.seq_len, text_field=cfg.text_field,
                      packing=cfg.packing, eval_split=cfg.eval_split, eval_path=cfg.eval_data, seed=cfg.seed)
    with args.main_process_first(desc="prepare data"):
        train_ds, eval_ds, data_summary = build_datasets(dcfg, tokenizer, model_cfg.max_position_embeddings
                                                         if hasattr(model_cfg, "max_position_embeddings") else None)

    selection = None
    if cfg.method == "spectrum":
        selection = resolve_selection(cfg, resumed=resume_from is not None)

    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype="auto")
    orig_dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    if cfg.method == "spectrum":
        from .freezing import freeze

        frozen = freeze(model, selection)
        if frozen.partial and cfg.weight_decay and args.process_index == 0:
            print("[spectrum] warning: the selection trains only some rows of "
                  f"{', '.join(frozen.partial)}; weight decay still shrinks their frozen rows. Set weight_decay: 0 "
                  "(the default) to keep them bit-identical.", flush=True)
    elif cfg.method == "lora":
        lora_kwargs, selection = _lora_kwargs(cfg, model, resume_from is not None)
        model = _apply_lora(model, lora_kwargs)
        if args.process_index == 0:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(cfg.output_dir) / "lora_config.json", json.dumps(lora_kwargs, indent=2) + "\n")
    if precision != "fp32" and getattr(args, "deepspeed_plugin", None) is None:
        _upcast_trainable(model)  # DeepSpeed keeps its own fp32 master copies
    trainable, total = count_params(model)
    if cfg.method == "spectrum":
        trainable = frozen.trainable_params  # partial tensors count only their trainable rows
    if trainable == 0:
        raise SpectrumError("No parameter is trainable: the selection matches nothing in this model. Check that "
                            "the selection was made for this model (or pass --top-percent to select anew).")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    if args.process_index == 0:
        print(f"[spectrum] method={cfg.method} trainable {trainable:,} / {total:,} params "
              f"({100 * trainable / total:.2f}%), precision={precision}, world={args.world_size}", flush=True)
        if selection is not None:
            write_json_atomic(Path(cfg.output_dir) / SELECTION_FILE, selection.to_json())
            selection.save(Path(cfg.output_dir) / "selection.yaml")

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=list(callbacks or []))
    engine = _engine(trainer)
    if args.process_index == 0 and cfg.fsdp and not engine.startswith("fsdp"):
        print(f"[spectrum] warning: FSDP was asked for but accelerate runs this job as {engine} (it enables FSDP "
              "only on GPUs and other accelerators).", flush=True)
    if args.process_index == 0 and engine == "fsdp1":
        print("[spectrum] warning: FSDP1 allocates gradients for whole flattened units, so frozen modules save "
              "little memory there; set fsdp_config version: 2 (FSDP2).", flush=True)
    t0 = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.monotonic() - t0
    tokens = int(trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0))
    eval_loss = None
    if eval_ds is not None:
        eval_loss = float(trainer.evaluate()["eval_loss"])
    _save_outputs(trainer, cfg, orig_dtypes, lora=cfg.method == "lora")
    if args.process_index == 0:
        tokenizer.save_pretrained(cfg.output_dir)
    peak, kind = _peak_memory()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    summary = TrainSummary(
        method=cfg.method, task=cfg.task, model=cfg.model, output_dir=cfg.output_dir, trainable_params=trainable,
        total_params=total, steps=int(trainer.state.global_step), epochs=float(trainer.state.epoch or 0.0),
        train_loss=float(result.training_loss) if result.training_loss is not None and
        math.isfinite(result.training_loss) else None,
        losses=losses, eval_loss=eval_loss, tokens=tokens, tokens_per_second=tokens / runtime if runtime else 0.0,
        runtime_s=runtime, peak_memory_bytes=peak, memory_kind=kind, world_size=args.world_size, engine=engine,
        dtype=str(dtype).removeprefix("torch."), precision=precision, resumed_from=resume_from,
        selection=str(Path(cfg.output_dir) / SELECTION_FILE) if selection is not None else None,
        selected_modules=len(selection.modules) if selection is not None else None,
        data=dataclasses.asdict(data_summary), config=_jsonable(dataclasses.asdict(cfg)),
    )
    if args.process_index == 0:
        write_json_atomic(Path(cfg.output_dir) / SUMMARY_FILE, summary.to_json())
        print(f"[spectrum] done: {summary.steps} steps, loss {summary.train_loss}, "
              f"{summary.tokens_per_second:,.0f} tokens/s, peak {kind} memory {peak / 2**20:,.0f} MiB -> "
              f"{cfg.output_dir}", flush=True)
    return summary


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        json.dumps(d, allow_nan=False)
        return d
    except (TypeError, ValueError):
        return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v))
                for k, v in d.items()}
