"""One process's share of a scan, handed whole to a runner (``scan_cpu.run`` or ``scan_gpu.run``).

The job names the checkpoint, the tensors still to score, the estimator and where each tensor's scores go
(``results`` and the journal); ``share`` splits a scan's tensors across the ranks of ``torchrun``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import Checkpoint, TensorInfo
from .estimators import Estimator
from .journal import Journal
from .results import ModuleScore
from .scan_plan import numel


@dataclass
class ScanJob:
    """The tensors one process scores and where their scores go.

    ``todo`` are the tensors still to score, out of ``total`` in this process's share (the rest were read back
    from the journal); ``show`` draws the progress bar.
    """

    checkpoint: Checkpoint
    todo: list[TensorInfo]
    estimator: Estimator
    device: str
    method: str
    results: dict[str, list[ModuleScore]]
    journal: Journal | None
    show: bool
    total: int

    def record(self, param: str, scores: list[ModuleScore]) -> None:
        """Keep one finished tensor's scores and append them to the journal."""
        self.results[param] = scores
        if self.journal is not None:
            self.journal.append(param, scores)


def _cost(t: TensorInfo) -> int:
    """Work to score a tensor: the Gram product costs about numel * min(rows, cols)."""
    return numel(t.shape) * (min(t.shape[-2:]) if len(t.shape) > 1 else 1)


def share(tensors: list[TensorInfo], rank: int, world: int) -> list[TensorInfo]:
    """This rank's tensors: costliest first, each to the rank with the least work so far."""
    load = [0] * world
    mine = []
    for t in sorted(tensors, key=_cost, reverse=True):
        r = load.index(min(load))
        load[r] += _cost(t)
        if r == rank:
            mine.append(t)
    return mine
