"""The Trainer's side of a run: TrainingArguments from the settings, the engine that actually ran (single, DDP,
FSDP, DeepSpeed) and the peak memory it took."""

from __future__ import annotations

import logging
import resource
from typing import Any

from .. import distributed
from ..errors import SpectrumError
from .config import TrainConfig

LOG = logging.getLogger(__name__)


def training_args(cfg: TrainConfig, precision: str) -> Any:
    """transformers TrainingArguments for the run (making them sets up the distributed state)."""
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
    if cfg.method == "qlora":
        from .lowbit import optimizer_name

        kw["optim"] = optimizer_name(use_cpu)
    kw.update(cfg.extra_args)
    try:
        return TrainingArguments(**kw)
    except (ValueError, TypeError) as e:
        raise SpectrumError(f"Invalid training settings: {e}") from None


def keeps_own_master_copies(args: Any) -> bool:
    """DeepSpeed keeps its own fp32 master copies of the trainable weights."""
    return getattr(args, "deepspeed_plugin", None) is not None


def engine_name(trainer: Any) -> str:
    """What actually ran: accelerate 1.15 turns multi-process CPU jobs into DDP even when FSDP is asked for."""
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
        return f"deepspeed-zero{stage}"
    if trainer.is_fsdp_enabled:
        return f"fsdp{getattr(trainer.accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    return "ddp" if trainer.args.world_size > 1 else "single"


def warn_engine(cfg: TrainConfig, engine: str) -> None:
    """Say when the engine is not the one asked for, or one where freezing saves little."""
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


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str]:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "rss"
