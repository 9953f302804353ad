"""One study run in its own process (``study.py --worker SPEC --result RESULT``, started by ``run_child``).

Kept apart from the driver (study.py) because it is the only code that trains: it reads the run's spec, trains
through ``spectrum_llm.train`` with the task's evaluations at the chosen steps, and writes the result.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.benchlib import median, step_timer
from benchmarks.study_tasks import checkpoint_evals, heartbeat, kind


def worker(spec_path: Path, result_path: Path) -> None:
    """One run in its own process: train through spectrum_llm.train, evaluate the trained model, write a result."""
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="[spectrum] %(message)s")  # train()'s lines, in the run's log
    spec = json.loads(spec_path.read_text())
    task = spec["settings"].get("task", "facts")
    evaluate, summarise = kind(task).evaluate, kind(task).summarise
    evals = json.loads(Path(spec["files"]["eval"]).read_text())
    amp = torch.bfloat16 if spec["settings"]["precision"] == "bf16" else None
    t0 = time.monotonic()
    if spec["name"].startswith("baseline"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="auto")
        if spec.get("quantize"):
            from spectrum_llm.training.lowbit import quantize_linears

            quantize_linears(model, spec["quantize"], skip=lambda n, m: False)
        ev = evaluate(model, evals, amp)
        result_path.write_text(json.dumps({"eval": ev, **summarise(ev), "eval_s": round(time.monotonic() - t0, 1)}))
        return

    from spectrum_llm.training import TrainConfig, train

    s = spec["settings"]
    timing = spec.get("timing_steps")
    trained: dict[str, Any] = {"eval": {}, "eval_s": 0.0}

    def evaluate_trained(model) -> None:  # before train() saves and returns
        if timing:
            return
        t = time.monotonic()
        trained["eval"] = evaluate(model, evals, amp)
        trained["eval_s"] = time.monotonic() - t

    out_dir = Path(spec["work"]) / "runs" / spec["name"]
    shutil.rmtree(out_dir, ignore_errors=True)
    probe = step_timer(on_train_end=evaluate_trained)
    callbacks = [probe]
    checkpoints: dict[str, Any] = {}
    if s.get("eval_at") and not timing:
        callbacks.append(checkpoint_evals(set(s["eval_at"]), evals, amp, checkpoints, task))
        callbacks.append(heartbeat(10))
    extra: dict[str, Any] = {"save_strategy": "no"}
    if spec.get("data_seed") is not None:  # the sampler's seed: the data order, nothing else
        extra["data_seed"] = spec["data_seed"]
    cfg = TrainConfig(
        model=spec["model"],
        data=spec["files"]["train"],
        output_dir=str(out_dir),
        task=kind(task).trainer_task,
        packing=kind(task).trainer_task == "cpt",
        seq_len=s["seq_len"],
        batch_size=s["batch_size"],
        max_steps=timing or s["steps"],
        lr_scheduler="cosine",
        warmup_steps=s["warmup"],
        seed=s["seed"],
        logging_steps=1,
        save_steps=10**6,
        precision=s["precision"],
        extra_args=extra,
        **spec["train"],
    )
    summary = train(cfg, callbacks=callbacks)
    steps = probe.times[1:] or probe.times
    if timing:
        result_path.write_text(
            json.dumps(
                {
                    "median_step_s": median(steps),
                    "step_times_s": [round(t, 4) for t in probe.times],
                    "trainable_params": summary.trainable_params,
                }
            )
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    res = {
        "trainable_params": summary.trainable_params,
        "total_params": summary.total_params,
        "steps": summary.steps,
        "losses": [round(x, 5) for x in summary.losses],
        "median_step_s": median(steps),
        "step_times_s": [round(t, 4) for t in probe.times],
        "train_runtime_s": round(summary.runtime_s, 2),
        "tokens": summary.tokens,
        "eval_s": round(trained["eval_s"], 1),
        "eval": trained["eval"],
        **summarise(trained["eval"]),
    }
    if checkpoints:
        res["checkpoints"] = checkpoints
    shutil.rmtree(out_dir, ignore_errors=True)  # the trained weights are not needed
    result_path.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------ driver
