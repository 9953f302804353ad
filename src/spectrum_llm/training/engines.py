"""What DeepSpeed and FSDP2 need around a run that transformers does not do for us.

Three things, each a function called by the recipe (``run.py``) or the CLI:

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
from pathlib import Path
from typing import Any

from .. import distributed
from ..axolotl import has_rows
from ..errors import SpectrumError, require
from ..selection import Selection
from .config import TrainConfig

LOG = logging.getLogger(__name__)


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
