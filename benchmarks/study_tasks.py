"""The study's task kinds, and what differs between them: data, trainer task, evaluation, numbers, report.

``facts`` (fictional facts, study_task), ``skill`` (arithmetic word problems, study_skill) and ``cpt``
(Python standard-library source, study_cpt) share the arms, the trainer, the forgetting measurement and the
run store; the driver (study.py) looks up the rest here by ``Settings.task``. The exact-match tasks store
``{split}_exact_match`` and per-item hits; CPT stores held-out domain loss (``domain_loss``, its change from
the untrained model ``domain_loss_change``) instead.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import study_cpt, study_skill, study_task
from benchmarks.study_arms import TASKS, Settings


@dataclass(frozen=True)
class TaskKind:
    prepare: Callable[[Path, dict[str, Path], Settings, Path], dict[str, Any]]
    evaluate: Callable[..., dict[str, Any]]
    summarise: Callable[[dict[str, Any]], dict[str, float]]
    trainer_task: str  # the trainer's --task: sft (loss on answers) or cpt (plain text, packed)
    exact_match: bool
    versus_baseline: Callable[[dict, dict | None], dict[str, float]] = lambda record, base: {}


KINDS = {
    "facts": TaskKind(study_task.prepare, study_task.evaluate, study_task.summarise, "sft", True),
    "skill": TaskKind(study_skill.prepare, study_task.evaluate, study_task.summarise, "sft", True),
    "cpt": TaskKind(
        study_cpt.prepare, study_cpt.evaluate, study_cpt.summarise, "cpt", False, study_cpt.versus_baseline
    ),
}
assert tuple(KINDS) == TASKS


def kind(task: str | None) -> TaskKind:
    """The task kind by name; None (a spec or record from before tasks) is the fact task."""
    if (task or "facts") not in KINDS:
        raise ValueError(f"unknown study task {task!r} (one of {', '.join(KINDS)})")
    return KINDS[task or "facts"]


def label(mode: str, task: str) -> str:
    """Where a task's runs and report go: the fact task keeps the first study's names (``full``, ``quick``)."""
    return mode if task == "facts" else f"{mode}-{task}"


def headline(record: dict) -> str:
    """The task's numbers for a run's progress line."""
    if "val_exact_match" in record:
        return f"val {record['val_exact_match']:.3f}  test {record['test_exact_match']:.3f}"
    change = record.get("domain_loss_change")
    return f"domain val {record['val_loss']:.3f}  test {record['test_loss']:.3f}" + (
        f" ({change:+.3f})" if change is not None else ""
    )


def heartbeat(every: int) -> Any:
    """A callback that writes the step, its training loss and the elapsed time to the run's log (stderr)."""
    from transformers import TrainerCallback

    t0 = time.monotonic()

    class Heartbeat(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and state.global_step % every == 0:
                print(
                    f"[run] step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"({time.monotonic() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    return Heartbeat()


def checkpoint_evals(steps: set[int], evals: dict, amp, out: dict[str, Any], task: str = "facts") -> Any:
    """A callback that evaluates the model at the given optimizer steps (headline numbers, and test hits)."""
    from transformers import TrainerCallback

    k = kind(task)

    class CheckpointEvals(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step in steps and model is not None:
                t = time.monotonic()
                ev = k.evaluate(model, evals, amp)
                out[str(state.global_step)] = {
                    **k.summarise(ev),
                    **({"test_hits": ev["test"]["hits"]} if k.exact_match else {"test_nll": ev["test"]["nll"]}),
                    "eval_s": round(time.monotonic() - t, 1),
                }
                print(f"[pilot] step {state.global_step}: " + json.dumps(k.summarise(ev)), file=sys.stderr, flush=True)

    return CheckpointEvals()


def write_task_report(
    mode: str,
    s: Settings,
    base: dict | None,
    rows: list[dict],
    rates: dict[str, float],
    info: dict,
    t_start: float,
    machine: dict,
    timings: list[dict],
) -> Path | None:
    """The report of one task's stored runs: the exact-match report (study_report), or CPT's loss table."""
    from benchmarks import study_report

    name = label(mode, s.task)
    if kind(s.task).exact_match:
        return study_report.write_report(name, s, base, rows, rates, info, t_start, machine, timings)
    return study_cpt.write_report(name, s, base, rows, rates, info, machine, timings)
