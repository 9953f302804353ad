"""Worker for the 2-process training tests: ``torchrun --nproc_per_node 2 helpers_training_dist.py ...``.

Runs ``spectrum_llm.train`` under DDP or FSDP2 (gloo, CPU) and writes ``rank<N>.json`` with what the
test checks: a hash of every full weight on this rank, frozen parameters that ever held a gradient,
and frozen parameters that ever got optimizer state or sat in an optimizer group.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from transformers import TrainerCallback


def _full(p):
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


class Probe(TrainerCallback):
    def __init__(self):
        self.frozen_with_grad: set[str] = set()
        self.frozen_in_optimizer: set[str] = set()
        self.trainable: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.dtypes: dict[str, str] = {}
        self.sharded = False
        self.steps_checked = 0

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        self.steps_checked += 1
        frozen = {id(p): n for n, p in model.named_parameters() if not p.requires_grad}
        self.trainable |= {n for n, p in model.named_parameters() if p.requires_grad}
        self.frozen_with_grad |= {n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None}
        for group in optimizer.param_groups:
            self.frozen_in_optimizer |= {frozen[id(p)] for p in group["params"] if id(p) in frozen}
        self.frozen_in_optimizer |= {frozen[id(p)] for p in optimizer.state if id(p) in frozen}

    def on_train_end(self, args, state, control, model=None, **kw):
        from torch.distributed.tensor import DTensor

        for n, p in model.named_parameters():
            self.dtypes[n] = str(p.dtype)
            self.sharded |= isinstance(p, DTensor)
            t = _full(p.detach()).contiguous().cpu()
            self.hashes[n] = hashlib.sha256(
                t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
            ).hexdigest()


def allow_fsdp_on_cpu() -> None:
    """Let accelerate turn FSDP on for a multi-process CPU run, as it does for GPU runs.

    accelerate 1.15 enables its FSDP plugin only for accelerator distributed types; on CPU it silently
    runs DDP instead. The FSDP2 test needs real per-parameter sharding, so this applies the same three
    assignments accelerate makes for GPUs (accelerate/state.py, AcceleratorState.__init__), and gathers
    the full state dict with ``DTensor.full_tensor()`` on every rank, because torch's
    ``get_model_state_dict(full_state_dict=True)`` hands back the DTensors unchanged on CPU.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType
    from torch.distributed.tensor import DTensor

    original = AcceleratorState.__init__

    def init(
        self,
        mixed_precision=None,
        cpu=False,
        dynamo_plugin=None,
        deepspeed_plugin=None,
        fsdp_plugin=None,
        *args,
        **kwargs,
    ):
        original(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init
    get_state_dict = Accelerator.get_state_dict

    def gather(self, model, unwrap=True):
        sd = self.unwrap_model(model).state_dict() if unwrap else model.state_dict()
        if not any(isinstance(v, DTensor) for v in sd.values()):
            return get_state_dict(self, model, unwrap)
        full = {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in sd.items()}
        return full if self.is_main_process else {}

    Accelerator.get_state_dict = gather
    del torch


def main(model: str, data: str, out: str, engine: str, selection: str) -> None:
    import torch.distributed as dist

    from spectrum_llm.training import TrainConfig, train

    cfg = TrainConfig(
        model=model,
        data=data,
        output_dir=out,
        method="spectrum",
        selection=selection,
        seq_len=32,
        batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        use_cpu=True,
        fsdp=engine == "fsdp2",
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}
        if engine == "fsdp2"
        else None,
    )
    if engine == "fsdp2":
        allow_fsdp_on_cpu()
    probe = Probe()
    train(cfg, callbacks=[probe])
    rank = dist.get_rank()
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": dist.get_world_size(),
                "hashes": probe.hashes,
                "steps_checked": probe.steps_checked,
                "frozen_with_grad": sorted(probe.frozen_with_grad),
                "frozen_in_optimizer": sorted(probe.frozen_in_optimizer),
                "trainable": sorted(probe.trainable),
                "dtypes": probe.dtypes,
                "sharded": probe.sharded,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])
