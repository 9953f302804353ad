"""Which process this is: one answer for scan and train, asked the same way everywhere.

torchrun and accelerate both set ``RANK``/``WORLD_SIZE`` before our code runs, so the environment answers
"am I the main process" before (and without) a process group; ``process_group`` starts one only when a job
really needs to talk (the scan's work sharing).
"""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes run this job (1 when run alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on the process that prints, writes shared files and cleans up."""
    return rank() == 0


def process_group() -> tuple[int, int]:
    """(rank, world size), starting a gloo process group when several processes run and none exists yet."""
    if world_size() <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()
