"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (a scheduler) so that ``--resume`` continues it.

The first signal during training lets the current step finish, saves a checkpoint of it and stops; a second one
(or one before the training loop starts) stops at once. Either way ``train`` raises ``TrainingInterrupted``,
which the CLI shows as one line with the command that resumes, and exits 130 (SIGINT) or 143 (SIGTERM).

A checkpoint is complete once the Trainer has written its ``trainer_state.json`` (the last file of a save), so
a save cut short is never resumed from: ``last_complete_checkpoint`` skips it, and a resumed run removes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import distributed

LOG = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, written last by a checkpoint save
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """A run stopped by a signal: where it stopped and the checkpoint ``resume=True`` continues from."""

    def __init__(self, signum: int, out: Path, step: int | None, max_steps: int | None, checkpoint: Path | None):
        self.signum, self.out, self.step, self.max_steps, self.checkpoint = signum, out, step, max_steps, checkpoint
        super().__init__(self.describe("resume=True"))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self, resume: str) -> str:
        """One line: the signal, the step reached, the last complete checkpoint and how to go on (``resume``)."""
        name = signal.Signals(self.signum).name
        where = (
            f"at step {self.step}" + (f" of {self.max_steps}" if self.max_steps else "")
            if self.step is not None
            else "before training started"
        )
        if self.checkpoint is None:
            return f"interrupted ({name}) {where}; no checkpoint saved in {self.out}, so a new run starts over."
        return f"interrupted ({name}) {where}; last complete checkpoint {self.checkpoint}. Resume with: {resume}"


def is_complete(ckpt: Path) -> bool:
    """Whether a checkpoint folder's save finished: its trainer_state.json, written last, is there and whole."""
    try:
        json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def checkpoints(out: Path) -> list[Path]:
    """The checkpoint-N folders in ``out``, by step."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(out: Path) -> Path | None:
    return next((p for p in reversed(checkpoints(out)) if is_complete(p)), None)


def checkpoint_to_resume(out: Path) -> Path | None:
    """The last complete checkpoint; later ones whose save was cut short are said in one line and removed (main
    process), so the resumed run saves its own in their place."""
    last = last_complete_checkpoint(out)
    broken = [p for p in checkpoints(out) if not is_complete(p) and (last is None or _step(p) > _step(last))]
    if broken and distributed.is_main():
        LOG.warning(
            "%s %s incomplete (a save was interrupted); resuming from %s",
            ", ".join(p.name for p in broken),
            "is" if len(broken) == 1 else "are",
            last.name if last is not None else "the start",
        )
        for p in broken:
            shutil.rmtree(p, ignore_errors=True)
    return last


def _step(ckpt: Path) -> int:
    m = _CHECKPOINT.match(ckpt.name)
    return int(m.group(1)) if m else -1


class SignalState:
    """What the signals asked for: the first one (``signum``) a stop after the current step, a second one, or any
    outside the training loop, a stop at once (KeyboardInterrupt). ``callbacks.StopOnSignal`` acts on it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.in_loop = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None or not self.in_loop:
            self.signum = self.signum or signum
            raise KeyboardInterrupt
        self.signum = signum
        if distributed.is_main():
            LOG.info(
                "%s: stopping after this step and saving a checkpoint (send it again to stop at once)",
                signal.Signals(signum).name,
            )


@contextlib.contextmanager
def signals_handled(stopper: SignalState) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``stopper`` while the run lasts (main thread only; elsewhere Python's own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, stopper.handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
