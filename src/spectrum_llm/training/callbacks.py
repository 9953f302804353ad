"""What a run shows and how it ends: one progress bar with the last loss (instead of the Trainer's bar and its
printed dicts), a logged loss at the last step, no checkpoint of the last step when checkpoints are removed at
the end anyway, a stop with a checkpoint on SIGINT/SIGTERM, and quiet libraries unless --verbose."""

from __future__ import annotations

import contextlib
from typing import Any

from transformers import TrainerCallback

from .. import distributed
from ..progress import progress_bar


class Finish(TrainerCallback):
    """Log the loss at the last step; skip its checkpoint unless checkpoints are kept."""

    def __init__(self, keep_checkpoints: bool):
        self.keep_checkpoints = keep_checkpoints

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= state.max_steps:
            control.should_log = True
            if not self.keep_checkpoints:
                control.should_save = False


class KeepBackwardShort(TrainerCallback):
    """Undo the input gradients transformers forces on with activation checkpointing (``Trainer.train`` calls
    ``enable_input_require_grads`` for every causal LM): non-reentrant checkpointing does not need them, and
    without them a frozen prefix records nothing, so the backward pass stops at the lowest trained layer."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        reentrant = (args.activation_checkpointing_kwargs or {}).get("use_reentrant", False)
        if args.activation_checkpointing and not reentrant and hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()


class ProgressBar(TrainerCallback):
    """The training's progress bar (main process only): steps, and the last logged loss."""

    def __init__(self) -> None:
        self.bar: Any = None

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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class StopOnSignal(TrainerCallback):
    """After a step during which SIGINT/SIGTERM came (``interrupts.SignalState``): save a checkpoint and stop. In a
    multi-process run the processes agree at each step's end (one tiny all-reduce), so all stop at the same step
    even when only some got the signal."""

    def __init__(self, signals: Any):
        self.signals = signals

    def on_train_begin(self, args, state, control, **kw):
        self.signals.in_loop = True

    def on_train_end(self, args, state, control, **kw):
        self.signals.in_loop = False

    def on_step_end(self, args, state, control, **kw):
        if self._asked(args):
            control.should_training_stop = True
            control.should_save = True

    def _asked(self, args: Any) -> bool:
        if args.world_size <= 1:
            return self.signals.signum is not None
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signals.signum or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signals.signum is None:
            self.signals.signum = int(flag.item())
        return bool(flag.item())


def quiet(verbose: bool) -> contextlib.ExitStack:
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
