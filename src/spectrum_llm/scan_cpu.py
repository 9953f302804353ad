"""The CPU scan: tensors scored in order, the next one read on a thread while the current one is decomposed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .checkpoint import TensorInfo
from .errors import SpectrumError
from .progress import progress_bar
from .scan_job import ScanJob
from .scan_plan import readable, score_tensor, skip


def run(job: ScanJob) -> None:
    """Score ``job.todo`` in order, reading tensor i+1 on a thread while tensor i is decomposed."""
    ckpt, todo = job.checkpoint, job.todo

    def fetch(info: TensorInfo):
        if len(info.shape) <= 1 or not readable(info):
            return None
        return ckpt.load(info)

    start = time.monotonic()
    with progress_bar("scan", "tensors", "rate", job.show) as bar, ThreadPoolExecutor(1) as pool:
        task = bar.add_task("scan", total=job.total, completed=job.total - len(todo), rate="")
        pending = pool.submit(fetch, todo[0]) if todo else None
        for i, info in enumerate(todo):
            try:
                assert pending is not None  # submitted for todo[i] before this iteration
                w = pending.result()
                failure = None
            except SpectrumError as e:
                w, failure = None, str(e)
            pending = pool.submit(fetch, todo[i + 1]) if i + 1 < len(todo) else None
            scores = (
                skip(info, failure)
                if failure
                else score_tensor(info, w, job.estimator, ckpt.config, job.device, job.method)
            )
            del w
            job.record(info.name, scores)
            rate = (i + 1) / max(time.monotonic() - start, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.1f}/s")
