"""The Trainer's side of a run: TrainingArguments from the settings, what DeepSpeed and FSDP2 need around a run
that transformers does not do for us, the engine that actually ran (single, DDP, FSDP, DeepSpeed) and the peak
memory it took.

Around the run, three things, each called by the recipe (``run.py``) or the CLI:

* ``check_engine`` before anything loads: the DeepSpeed config is a readable JSON file and the ``deepspeed``
  extra is installed (one ``error:`` line otherwise, not a PackageNotFoundError traceback per rank), and the
  selection is one the engine can train exactly. Row ranges (``...weight$[0:64]``) are a gradient hook on the
  whole parameter; ZeRO-3 and FSDP2 replace each parameter by a shard before the backward pass, so that hook
  would see a partition (ZeRO-3) or never fire (FSDP2) and the "frozen" rows would train. Those combinations
  are refused with the alternatives, never run with a silently wrong gradient.
* ``start_engine`` after TrainingArguments set up the process group: DeepSpeed keeps its own communication
  state, which it fills only when it starts the process group itself. On CPU accelerate starts it (gloo), so
  ``deepspeed.zero.Init`` (ZeRO-3 builds the model partitioned) saw a world of 1 and failed its batch check
  (``train_batch_size ... 4 != 2 * 1 * 1``). Handing it the existing group fixes that on CPU; on GPUs it is
  already there and this does nothing.
* ``finish`` after a successful run: every rank waits for the others, then the process group is destroyed.
  Left to interpreter exit, DeepSpeed's CPU jobs aborted about one run in eight after all work was done
  (``terminate called without an active exception``, SIGABRT): gloo's threads were still alive while the
  interpreter tore down. A failed run never reaches this, so it still fails.
"""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path
from typing import Any

from .. import distributed
from ..axolotl import has_rows
from ..errors import SpectrumError, require
from ..selection import Selection
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


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any] | None:
    """The DeepSpeed config the run uses (None without --deepspeed), checked to be a JSON object."""
    if not cfg.deepspeed:
        return None
    path = Path(cfg.deepspeed)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise SpectrumError(
            f"Cannot read the DeepSpeed config {path} ({e.strerror}). Pass --deepspeed a JSON file such as "
            "examples/deepspeed_zero2.json."
        ) from None
    except json.JSONDecodeError as e:
        raise SpectrumError(f"The DeepSpeed config {path} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise SpectrumError(f"The DeepSpeed config {path} must be a JSON object, like examples/deepspeed_zero2.json.")
    return data


def zero_stage(cfg: TrainConfig) -> int | None:
    """The ZeRO stage of the run's DeepSpeed config (0 when it names none; None without DeepSpeed)."""
    data = deepspeed_config(cfg)
    if data is None:
        return None
    return int((data.get("zero_optimization") or {}).get("stage", 0))


def check_engine(cfg: TrainConfig) -> None:
    """Before anything loads: the DeepSpeed extra and config are usable."""
    if cfg.deepspeed:
        zero_stage(cfg)
        require("deepspeed", extra="deepspeed")


def check_selection(cfg: TrainConfig, selection: Selection | None) -> None:
    """Refuse a selection the engine cannot train exactly (row ranges under sharded parameters)."""
    if selection is None or cfg.method != "spectrum":
        return
    rows = [p for p in selection.patterns if has_rows(p)]
    if not rows:
        return
    stage = zero_stage(cfg)
    if stage is not None and stage >= 3:
        engine = "DeepSpeed ZeRO-3"
    elif cfg.fsdp:
        engine = "FSDP2"
    else:
        return
    raise SpectrumError(
        f"Row ranges ({rows[0]}{' and more' if len(rows) > 1 else ''}) cannot train under {engine}: it shards "
        "each weight, so the row mask would not see the whole gradient. Use DeepSpeed ZeRO-2 "
        "(examples/deepspeed_zero2.json), DDP (plain torchrun) or one process, or select whole tensors."
    )


def start_engine(args: Any) -> None:
    """Give DeepSpeed the process group accelerate started (gloo on CPU), so ZeRO-3 sees every process."""
    if getattr(args, "deepspeed", None) is None or distributed.world_size() <= 1:
        return
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)


def finish() -> None:
    """After a successful multi-process run: wait for every rank, then destroy the process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
