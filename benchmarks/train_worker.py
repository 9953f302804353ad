"""One method of the training benchmark in its own process (``train.py --worker SPEC --result RESULT``).

Kept apart from the driver (train.py) because it is the only code that trains and evaluates: started by
``run_child``, so each method's peak memory is its own.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.benchlib import median, step_timer, token_loss


def _eval_blocks(tokenizer, files: dict[str, str], s: dict) -> dict[str, list[dict]]:
    """Fixed held-out token blocks: packed task conversations (answer tokens only) and general text."""
    from spectrum_llm.data import DataConfig, build_datasets

    task, _, _ = build_datasets(
        DataConfig(path=files["task_eval"], task="sft", seq_len=s["seq_len"], packing=True), tokenizer
    )
    task_blocks = [
        {"input_ids": list(r["input_ids"]), "labels": list(r["labels"])}
        for r in task.select(range(min(s["eval_blocks"], len(task))))
    ]
    ids = tokenizer(Path(files["general"]).read_text(encoding="utf-8"))["input_ids"]
    n = len(ids) // s["seq_len"]
    step = max(1, n // s["general_blocks"])
    general = [
        {
            "input_ids": ids[i * s["seq_len"] : (i + 1) * s["seq_len"]],
            "labels": ids[i * s["seq_len"] : (i + 1) * s["seq_len"]],
        }
        for i in range(0, n, step)
    ][: s["general_blocks"]]
    return {"task": task_blocks, "general": general}


def worker(spec_path: Path, result_path: Path) -> None:
    """One method (or the baseline evaluation): train through spectrum_llm.train, evaluate, write a result."""
    import logging

    import torch
    from transformers import AutoTokenizer

    logging.basicConfig(level=logging.INFO, format="[spectrum] %(message)s")  # train()'s lines, in the run's log
    t0 = time.monotonic()
    spec = json.loads(spec_path.read_text())
    s = spec["settings"]
    cache = Path(spec["blocks"])
    if cache.exists():
        blocks = json.loads(cache.read_text())
    else:
        blocks = _eval_blocks(AutoTokenizer.from_pretrained(spec["model"]), spec["files"], s)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(blocks))
        tmp.replace(cache)
    print(f"[bench] eval blocks ready at {time.monotonic() - t0:.1f} s", flush=True)
    cuda = torch.cuda.is_available()
    amp = torch.bfloat16 if spec.get("precision") == "bf16" else None

    if spec["name"] == "baseline":
        from transformers import AutoModelForCausalLM

        model: Any = AutoModelForCausalLM.from_pretrained(spec["model"], dtype="auto")
        if cuda:
            model.cuda()
        res = {
            "task_loss": token_loss(model, blocks["task"], s["batch_size"], amp),
            "general_loss": token_loss(model, blocks["general"], s["batch_size"], amp),
            "task_tokens": sum(sum(t != -100 for t in b["labels"][1:]) for b in blocks["task"]),
            "general_tokens": sum(len(b["labels"]) - 1 for b in blocks["general"]),
        }
        result_path.write_text(json.dumps(res))
        return

    from spectrum_llm.training import TrainConfig, train

    evals: dict[str, float] = {}

    def evaluate_trained(model) -> None:  # before train() saves and returns
        print(f"[bench] training ends at {time.monotonic() - t0:.1f} s", flush=True)
        evals["task_loss_after"] = token_loss(model, blocks["task"], s["batch_size"], amp)
        evals["general_loss_after"] = token_loss(model, blocks["general"], s["batch_size"], amp)

    def training_starts() -> None:
        print(f"[bench] training starts at {time.monotonic() - t0:.1f} s", flush=True)

    probe = step_timer(on_train_begin=training_starts, on_train_end=evaluate_trained)
    out_dir = Path(spec["work"]) / "runs" / spec["name"]
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = TrainConfig(
        **{
            "model": spec["model"],
            "data": spec["files"]["train"],
            "output_dir": str(out_dir),
            "task": "sft",
            "packing": True,
            "seq_len": s["seq_len"],
            "batch_size": s["batch_size"],
            "max_steps": s["steps"],
            "learning_rate": s["learning_rate"],
            "lr_scheduler": "cosine",
            "warmup_steps": 0,
            "seed": s["seed"],
            "logging_steps": 1,
            "save_steps": 10**6,
            "precision": spec["precision"],
            "extra_args": {"save_strategy": "no"},
            **spec["train"],
        }
    )
    summary = train(cfg, callbacks=[probe])
    print(f"[bench] trained and evaluated at {time.monotonic() - t0:.1f} s", flush=True)
    res = {
        "name": spec["name"],
        "trainable_params": summary.trainable_params,
        "total_params": summary.total_params,
        "steps": summary.steps,
        "losses": summary.losses,
        "step_times_s": probe.times,
        "median_step_s": median(probe.times[1:] or probe.times),
        "min_step_s": min(probe.times[1:] or probe.times),
        "train_runtime_s": summary.runtime_s,
        "tokens": summary.tokens,
        "peak_memory_bytes_self": summary.peak_memory_bytes,
        "memory_kind_self": summary.memory_kind,
        **evals,
    }
    if cuda:
        res["cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    for f in out_dir.glob("*.safetensors"):
        f.unlink()  # the trained weights are not needed; keep the summary and selection only
    result_path.write_text(json.dumps(res))


# ------------------------------------------------------------------------------------------ main
