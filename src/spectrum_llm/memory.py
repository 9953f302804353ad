"""Training memory, for `spectrum check`: weights, gradients and AdamW states by dtype (``MemoryEstimate``), and
the memory of a low-bit frozen base: the frozen linear weights in int8 or NF4, and QLoRA.

Counted as bitsandbytes stores them (``training/lowbit.py`` swaps the modules): NF4 is 4 bits a weight plus one
absmax per 64-weight block, double-quantized to 8 bits with an fp32 scale per 256 blocks (0.516 bytes a weight);
LLM.int8 is a byte a weight plus an fp32 scale per output row. The output head and anything with a trainable
parameter stay in the model's dtype. QLoRA's base is every linear module but the head in NF4, with the rest
(embeddings, norms, head) cast to fp32 by peft's ``prepare_model_for_kbit_training``; its adapters train with
fp32 weights, gradients and AdamW states like everything else here (on a GPU the paged 8-bit AdamW holds the two
states in 2 bytes a parameter instead of 8). Pure arithmetic over the meta model: needs no bitsandbytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
ADAMW_STATES = 2


@dataclass
class MemoryEstimate:
    """Training memory of one method, in bytes, by dtype; activations per token of batch x sequence."""

    method: str
    trainable_params: int
    weights: dict[str, int]
    gradients: dict[str, int]
    optimizer: dict[str, int]
    activations_per_token: int | None = None

    @property
    def static_bytes(self) -> int:
        return sum(self.weights.values()) + sum(self.gradients.values()) + sum(self.optimizer.values())

    def total_bytes(self, tokens: int) -> int | None:
        """Weights, gradients and AdamW states plus activations for ``tokens`` = batch x sequence."""
        if self.activations_per_token is None:
            return None
        return self.static_bytes + self.activations_per_token * tokens


NF4_BLOCK = 64
NF4_BYTES = 0.5 + 1 / NF4_BLOCK + 4 / (NF4_BLOCK * 256)  # 4-bit codes, 8-bit absmax, fp32 second-level scales


def linear_weights(model: Any) -> dict[str, int]:
    """The weight of each linear module bitsandbytes would take (all but the output head): name -> output rows."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        f"{name}.weight": m.out_features
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    }


def lowbit_bytes(precision: str, numel: int, rows: int) -> int:
    """Bytes of one weight held in ``precision`` (nf4 or int8) by bitsandbytes."""
    if precision == "nf4":
        return int(numel * NF4_BYTES + 0.5)
    return numel + 4 * rows


def frozen_base(
    precision: str, params: dict[str, int], trainable: set[str], linears: dict[str, int], dtype_bytes: int
) -> tuple[int, int]:
    """The frozen weights' bytes with every frozen linear weight in ``precision``: (low-bit part, the rest)."""
    low = rest = 0
    for name, n in params.items():
        if name in trainable:
            continue
        if name in linears:
            low += lowbit_bytes(precision, n, linears[name])
        else:
            rest += n * dtype_bytes
    return low, rest


def qlora_base(params: dict[str, int], linears: dict[str, int]) -> tuple[int, int]:
    """QLoRA's base: (NF4 linear weights, the rest in fp32)."""
    low = sum(lowbit_bytes("nf4", n, linears[k]) for k, n in params.items() if k in linears)
    return low, 4 * sum(n for k, n in params.items() if k not in linears)


def lowbit_estimates(
    meta: Any, params: dict[str, int], trained: set[str], dtype: str, act: int | None, lora: MemoryEstimate | None
) -> list[MemoryEstimate]:
    """`spectrum check`'s rows: the selection with its frozen linear modules in int8 and in nf4
    (--frozen-precision), and QLoRA at the LoRA row's rank."""
    linears = linear_weights(meta)
    train = sum(n for k, n in params.items() if k in trained)
    out = []
    for precision in ("int8", "nf4"):
        low, rest = frozen_base(precision, params, trained, linears, BYTES[dtype])
        weights = {precision: low, dtype: rest, "float32": 4 * train}
        grads, states = {"float32": 4 * train}, {"float32": 4 * train * ADAMW_STATES}
        out.append(MemoryEstimate(f"selection, {precision} base", train, weights, grads, states, act))
    if lora is not None:
        low, rest = qlora_base(params, linears)
        adapters = 4 * lora.trainable_params
        out.append(
            MemoryEstimate(
                lora.method.replace("LoRA", "QLoRA").replace("(all-linear)", "(nf4 base)"),
                lora.trainable_params,
                {"nf4": low, "float32": rest + adapters},
                dict(lora.gradients),
                dict(lora.optimizer),
                lora.activations_per_token,
            )
        )
    return out
