"""Worker for the engine matrix (tests/test_engines.py):
``torchrun --nproc_per_node 2 helpers_engines_dist.py MODEL DATA OUT ENGINE METHOD SELECTION``.

One launch checks one cell: it trains 2 steps keeping the checkpoint, then ``--resume``s to 3 steps in the same
output folder (so the final model also checks that resuming continues the run; under FSDP2 one 3-step run, see
main), and writes ``rank<N>.json`` with
what the test compares: the engine that ran, both summaries, and how many optimizer-state elements this rank
holds (Adam's ``exp_avg``, in the innermost torch optimizer: DeepSpeed's flat fp32 partitions, FSDP2's local
shards, DDP's whole tensors). It exits the way ``spectrum train`` does after a multi-process run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from helpers_training_dist import allow_fsdp_on_cpu

DEEPSPEED = Path(__file__).resolve().parents[1] / "examples"


class OptimizerState(TrainerCallback):
    def __init__(self):
        self.elements = 0

    def on_train_end(self, args, state, control, optimizer=None, **kw):
        import torch

        while getattr(optimizer, "optimizer", None) is not None:  # accelerate's and DeepSpeed's wrappers
            optimizer = optimizer.optimizer
        assert isinstance(optimizer, torch.optim.Optimizer), type(optimizer)
        self.elements = sum(_local(s["exp_avg"]).numel() for s in optimizer.state.values() if "exp_avg" in s)


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def config(model, data, out, engine, method, selection, **kw):
    from spectrum_llm.training import TrainConfig

    return TrainConfig(
        model=model,
        data=data,
        output_dir=out,
        method=method,
        selection=selection,
        seq_len=32,
        batch_size=2,
        learning_rate=1e-2,
        lr_scheduler="constant",
        logging_steps=1,
        lora_rank=4,
        use_cpu=True,
        fsdp=engine == "fsdp2",
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
        if engine == "fsdp2"
        else None,
        deepspeed=str(DEEPSPEED / f"deepspeed_{engine}.json") if engine.startswith("zero") else None,
        **kw,
    )


def gloo_only() -> None:
    """DeepSpeed's CPU all-reduce through gloo, not its shared-memory op.

    That op is C++ compiled on first use (about a minute, per cache folder: the suite's is a fresh temp folder),
    and its kernels busy-wait on shared-memory flags, which on a 2-core CI machine shared with other jobs stalled
    a rank for minutes. Gloo does the same sums; what the tests check (which weights train) does not depend on it.
    """
    import deepspeed.comm.torch

    deepspeed.comm.torch.build_shm_op = lambda: None


def main(model: str, data: str, out: str, engine: str, method: str, selection: str) -> None:
    import torch.distributed as dist

    from spectrum_llm.training import train
    from spectrum_llm.training.engine import finish

    if engine == "fsdp2":
        allow_fsdp_on_cpu()
    if engine.startswith("zero"):
        gloo_only()
    probe = OptimizerState()
    if engine == "fsdp2":  # a second train() in the same FSDP2-on-CPU process hangs in a collective: one run
        first = None
        second = train(
            config(model, data, out, engine, method, selection, max_steps=3, save_steps=100), callbacks=[probe]
        )
    else:
        first = train(
            config(model, data, out, engine, method, selection, max_steps=2, save_steps=2, keep_checkpoints=True)
        )
        second = train(
            config(model, data, out, engine, method, selection, max_steps=3, save_steps=2, resume=True),
            callbacks=[probe],
        )
    Path(out, f"rank{dist.get_rank()}.json").write_text(
        json.dumps(
            {
                "world": dist.get_world_size(),
                "first": vars(first) if first else None,
                "second": vars(second),
                "optimizer_elements": probe.elements,
            },
            default=str,
        )
    )
    finish()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:7])
