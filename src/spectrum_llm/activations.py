"""Activation memory of a training step, measured without memory: the model's own forward run on the meta device.

Every tensor autograd keeps for the backward pass is counted as it is saved; a fused attention kernel's keepings
(q, k, v, the output and the log-sum-exp) stand in for the eager attention's, which no trainer uses.
"""

from __future__ import annotations

import contextlib
import os

from .errors import SpectrumError


class _FusedAttention:
    """What a fused attention kernel keeps for backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def make():
        import torch

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v):
                # laid out (batch, seq, heads, dim) as the kernels write it, so the usual
                # transpose + reshape before o_proj is a view, not a copy
                out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1]).transpose(1, 2)
                lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
                ctx.save_for_backward(q, k, v, out, lse)
                return out

            @staticmethod
            def backward(ctx, grad):  # never run: the meta forward only counts what is kept
                raise RuntimeError("memory measurement only")

        def sdpa(query, key, value, *args, **kwargs):
            return Fn.apply(query, key, value)

        return sdpa


@contextlib.contextmanager
def _fused_attention():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _FusedAttention.make()
    gqa = os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA")
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"  # no repeated key/value heads (meta cannot skip the mask)
    try:
        with meta_autocast():
            yield
    finally:
        F.scaled_dot_product_attention = original
        if gqa is None:
            os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
        else:
            os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = gqa


@contextlib.contextmanager
def meta_autocast():
    """``torch.autocast(device_type="meta")`` (which peft's expert adapters open) as the CPU one: there is no
    autocast state for the meta device, and turning it off there changes nothing."""
    import torch

    original = torch.autocast

    class Autocast(original):
        def __init__(self, device_type, *args, **kwargs):
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = Autocast
    try:
        yield
    finally:
        torch.autocast = original


def activation_bytes(model, seq_len: int) -> int:
    """Bytes autograd keeps for backward in one forward of ``seq_len`` tokens (meta device, batch 1)."""
    import torch

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        kept.setdefault(storage._cdata, storage.nbytes())
        return t

    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    try:
        with _fused_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids)
    except Exception as e:  # any architecture's own forward code runs here, and may raise anything on meta tensors
        raise SpectrumError(
            f"Could not run the model's forward on the meta device to measure activations ({e}). "
            "Pass --no-activations to skip that part."
        ) from e
    return sum(n for k, n in kept.items() if k not in params)


# ------------------------------------------------------------------------------------------- check
