"""The GPU scan: tensors read on a thread and staged to the device through pinned memory, Gram matrices formed
there, and equal-sized ones eigensolved together in one batched call.

``STAGED_DEVICES`` names the device types that take this path; the tests route CPU scans through it too.
"""

from __future__ import annotations

import sys
import time

import torch

from .checkpoint import Checkpoint, TensorInfo
from .errors import SpectrumError
from .estimators import Estimator
from .progress import progress_bar
from .results import ModuleScore
from .scan_job import ScanJob
from .scan_plan import fill, plan_tensor, readable, skip
from .spectra import float64_note, gram, resolve_device, singular_values, singular_values_from_gram

#: device types scanned by this staged path (the others by ``scan_cpu``)
STAGED_DEVICES = ("cuda",)
#: tensors read and copied ahead of the one being decomposed
STAGE_DEPTH = 2
#: Gram matrices of one size solved together once their float64 values fill this many bytes
BUCKET_BYTES = 256 * 2**20
#: tensors waiting for a batch before every batch is solved
MAX_OPEN = 32


class Stager:
    """Reads tensors on a thread and copies them to the device through pinned memory, ``depth`` tensors ahead.

    Each item is (info, tensor on the device or None, failure message or None). The copy runs on its own
    CUDA stream; the consumer waits on its event, so reading, the host-to-device copy and the maths overlap.
    """

    def __init__(self, ckpt: Checkpoint, todo: list[TensorInfo], device: torch.device, depth: int | None = None):
        import queue
        import threading

        self.ckpt, self.todo, self.device = ckpt, todo, device
        self.cuda = device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=STAGE_DEPTH if depth is None else depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="spectrum-stager", daemon=True)

    def __enter__(self) -> Stager:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import queue

        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()

    def _put(self, item) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            stream = torch.cuda.Stream(self.device) if self.cuda else None
            for info in self.todo:
                if self.stop.is_set():
                    return
                w, event, failure = None, None, None
                try:
                    if len(info.shape) > 1 and readable(info):
                        w = self.ckpt.load(info)
                except SpectrumError as e:
                    failure = str(e)
                if w is not None and self.cuda:
                    host = w.contiguous().pin_memory()
                    with torch.cuda.stream(stream):
                        w = host.to(self.device, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(stream)
                    del host
                if not self._put((info, w, event, failure)):
                    return
        except BaseException as e:  # surfaces in the consumer, never lost in the thread
            self._put(e)
            return
        self._put(None)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            info, w, event, failure = item
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                w.record_stream(current)
            yield info, w, failure


class Solver:
    """Forms each Gram matrix on the device as its tensor arrives and eigensolves equal-sized ones together.

    Small matrices (k_proj, v_proj, experts) then cost one batched eigensolver call instead of one each.
    A batch is solved once its Gram matrices fill ``bucket_bytes``, or when ``max_open`` tensors wait.
    ``add`` and ``flush`` return the tensors whose modules are all scored.
    """

    def __init__(
        self,
        device: torch.device,
        method: str,
        estimator: Estimator,
        bucket_bytes: int | None = None,
        max_open: int | None = None,
    ):
        self.device, self.method, self.estimator = device, method, estimator
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else bucket_bytes
        self.max_open = MAX_OPEN if max_open is None else max_open
        self.buckets: dict[int, list[tuple[str, ModuleScore, torch.Tensor]]] = {}
        self.left: dict[str, int] = {}

    def add(self, key: str, jobs: list[tuple[ModuleScore, torch.Tensor]]) -> list[str]:
        self.left[key] = len(jobs)
        for mod, mat in jobs:
            if self.method == "svd":
                fill(mod, singular_values(mat, self.device, "svd"), self.estimator)
                self.left[key] -= 1
                continue
            g = gram(mat, self.device)
            n = g.shape[0]
            bucket = self.buckets.setdefault(n, [])
            bucket.append((key, mod, g))
            if len(bucket) * n * n * 8 >= self.bucket_bytes:
                self._solve(n)
        if len(self.left) > self.max_open:
            return self.flush()
        return self._finished()

    def flush(self) -> list[str]:
        for n in list(self.buckets):
            self._solve(n)
        return self._finished()

    def _solve(self, n: int) -> None:
        bucket = self.buckets.pop(n)
        grams = torch.stack([g for _, _, g in bucket]) if len(bucket) > 1 else bucket[0][2].unsqueeze(0)
        svs = singular_values_from_gram(grams).cpu()
        for (key, mod, _), s in zip(bucket, svs):
            fill(mod, s, self.estimator)
            self.left[key] -= 1

    def _finished(self) -> list[str]:
        done = [k for k, v in self.left.items() if v == 0]
        for k in done:
            del self.left[k]
        return done


def run(job: ScanJob) -> None:
    """The GPU scan: tensors staged ahead through pinned memory, Gram and eigensolver on the device, batched."""
    dev = resolve_device(job.device)
    note = float64_note(dev)
    if note and job.show:
        print(f"note: {note}", file=sys.stderr, flush=True)
    solver = Solver(dev, job.method, job.estimator)
    mods: dict[str, list[ModuleScore]] = {}
    start, finished = time.monotonic(), 0
    with progress_bar("scan", "tensors", "rate", job.show) as bar, Stager(job.checkpoint, job.todo, dev) as stager:
        task = bar.add_task("scan", total=job.total, completed=job.total - len(job.todo), rate="")

        def record(keys: list[str]) -> None:
            nonlocal finished
            for key in keys:
                job.record(key, mods.pop(key))
                finished += 1
                bar.update(task, advance=1, rate=f"{finished / max(time.monotonic() - start, 1e-9):.1f}/s")

        for info, w, failure in stager:
            plan = [(m, None) for m in skip(info, failure)] if failure else plan_tensor(info, w, job.checkpoint.config)
            mods[info.name] = [m for m, _ in plan]
            record(solver.add(info.name, [(m, mat) for m, mat in plan if mat is not None]))
            del w, plan
        record(solver.flush())
