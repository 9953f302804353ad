"""Low-bit frozen bases: the frozen linear modules held by bitsandbytes in 8-bit (LLM.int8) or 4-bit NF4.

A frozen module only runs forward and passes gradients to its input, which is all a quantized base does, so
Spectrum's frozen 60-75% can be stored the way QLoRA stores its whole base. ``quantize_linears`` swaps each
chosen ``nn.Linear`` for a ``bnb.nn.Linear4bit`` (NF4, double quantization, blocks of 64, compute in the
model's 16-bit dtype, bf16 for fp32 models) or ``bnb.nn.Linear8bitLt`` (int8 with a per-row scale, outlier
threshold 6.0), on the device training will use. Each module shape is tried once with a forward and backward
pass; a shape the kernel rejects keeps its module in the model's dtype, and the run says how many did.

The output head is never quantized (as transformers' bitsandbytes loader leaves it), nor is any module with a
trainable parameter. Only the forward pass sees the quantized values: the model saved at the end takes every
frozen tensor from the input checkpoint's files, bit for bit (``outputs.save_model(frozen_from=...)``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import SpectrumError, require

LOG = logging.getLogger(__name__)

FROZEN_PRECISIONS = ("bf16", "int8", "nf4")
EXTRA = "quant"
NF4_BLOCK = 64
INT8_THRESHOLD = 6.0


@dataclass
class LowBitReport:
    """What ``quantize_linears`` did: how many modules it quantized and which it kept in the model's dtype."""

    precision: str
    quantized: int = 0
    kept: list[str] = field(default_factory=list)  # the kernel rejected their shape
    optimizer: str = ""  # qlora: the optimizer the run uses (paged 8-bit AdamW on a GPU)

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "quantized": self.quantized,
            "kept": self.kept,
            "optimizer": self.optimizer,
        }

    def __str__(self) -> str:
        line = f"{self.quantized} frozen linear module(s) held in {self.precision} by bitsandbytes"
        if self.kept:
            line += (
                f"; {len(self.kept)} kept in 16-bit because the {self.precision} kernel rejects their shape "
                f"({', '.join(self.kept[:3])}{', ...' if len(self.kept) > 3 else ''})"
            )
        return line


def require_bitsandbytes() -> Any:
    """bitsandbytes, or one line naming the extra that installs it."""
    return require("bitsandbytes", extra=EXTRA)[0]


def uses_lowbit(cfg: Any) -> bool:
    return cfg.method == "qlora" or (cfg.method == "spectrum" and cfg.frozen_precision != "bf16")


def check_job(cfg: Any, source: str) -> None:
    """Before anything big loads: bitsandbytes is installed and the checkpoint is not quantized already."""
    if uses_lowbit(cfg):
        require_bitsandbytes()
        check_source(cfg.model, source)


def check_source(model_dir: str, source: str) -> None:
    """Refuse a checkpoint that is already quantized: its low-bit weights cannot be re-quantized faithfully, and the
    saved frozen tensors could not be the input's. A GGUF source is fine: it was converted to a 16-bit folder first,
    and that folder is both what gets quantized and what the saved frozen tensors are copied from."""
    import json

    from ..quantized import method_label

    cfg_file = Path(model_dir) / "config.json"
    if not cfg_file.is_file():
        return
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    label = method_label(config)
    if label:
        raise SpectrumError(
            f"{source} is already quantized ({label}); a low-bit frozen base (--frozen-precision int8/nf4, "
            "--method qlora) is made from a 16-bit checkpoint. Pass the bf16/fp16 original, or train this one "
            "with --frozen-precision bf16."
        )


def train_device(use_cpu: bool | None) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def optimizer_name(use_cpu: bool) -> str:
    """QLoRA's paged 8-bit AdamW where bitsandbytes pages memory (CUDA); torch's AdamW with fp32 states on CPU."""
    return "adamw_torch" if use_cpu else "paged_adamw_8bit"


def _compute_dtype(weight: Any) -> Any:
    import torch

    return weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def _quantized(linear: Any, precision: str, device: str) -> Any:
    """The bitsandbytes module holding ``linear``'s weight in ``precision``, on ``device``."""
    import bitsandbytes as bnb
    import torch

    w, has_bias = linear.weight.data, linear.bias is not None
    q: Any
    if precision == "nf4":
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=_compute_dtype(w),
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            w, requires_grad=False, compress_statistics=True, quant_type="nf4", blocksize=NF4_BLOCK, module=q
        )
        # On a CPU with AVX512-BF16, bitsandbytes repacks the weight for inference at the first evaluation and
        # from then on runs a kernel with no backward: gradients through every frozen layer would be dropped.
        q.support_avx512bf16_for_cpu = False
    else:
        q = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=INT8_THRESHOLD,
            device="meta",
        )
        q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        q.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return q.to(device)


def _works(module: Any, in_features: int, dtype: Any, device: str) -> bool:
    """Whether the kernel takes this module: one forward and backward pass on a small batch, finite."""
    import torch

    try:
        x = torch.randn(2, 3, in_features, dtype=dtype, device=device, requires_grad=True)
        y = module(x)
        y.float().sum().backward()
        return bool(torch.isfinite(y).all()) and x.grad is not None
    except (AssertionError, RuntimeError, ValueError, NotImplementedError) as e:
        LOG.debug("the kernel rejects a %d-input module: %s", in_features, e)
        return False


def quantize_linears(
    model: Any, precision: str, *, skip: Callable[[str, Any], bool], device: str = "cpu"
) -> LowBitReport:
    """Swap every ``nn.Linear`` of ``model`` that ``skip(name, module)`` passes over, and is not the output head,
    for a bitsandbytes module in ``precision`` (nf4 or int8) on ``device``. See the module docstring."""
    import torch

    if precision not in ("nf4", "int8"):
        raise SpectrumError(f"Unknown low-bit precision {precision!r}. Use nf4 or int8.")
    require_bitsandbytes()
    report = LowBitReport(precision)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    verdict: dict[tuple[int, int, bool], bool] = {}
    for name, linear in list(model.named_modules()):
        if type(linear) is not torch.nn.Linear or linear is head or skip(name, linear):
            continue
        q = _quantized(linear, precision, device)
        shape = (linear.in_features, linear.out_features, linear.bias is not None)
        if shape not in verdict:
            verdict[shape] = _works(q, linear.in_features, _compute_dtype(linear.weight), device)
        if not verdict[shape]:
            report.kept.append(name)
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
        report.quantized += 1
    if distributed.is_main():
        LOG.info("%s", report)
    return report


def frozen_linears(model: Any, precision: str, device: str) -> LowBitReport:
    """Spectrum on a low-bit base: quantize the linear modules none of whose parameters train."""
    return quantize_linears(
        model, precision, skip=lambda n, m: any(p.requires_grad for p in m.parameters()), device=device
    )


def qlora_base(model: Any, device: str) -> LowBitReport:
    """QLoRA's base: every linear module but the head in NF4, then peft's ``prepare_model_for_kbit_training``
    marks the model 4-bit (so LoRA wraps the 4-bit layers), freezes it and casts the rest to fp32."""
    report = quantize_linears(model, "nf4", skip=lambda n, m: False, device=device)
    model.is_loaded_in_4bit = True
    report.optimizer = optimizer_name(device == "cpu")
    if device == "cpu" and distributed.is_main():
        LOG.info("qlora on the CPU: torch AdamW with fp32 states (bitsandbytes' paged 8-bit AdamW needs a CUDA GPU)")
    return report


def check_trained_in_files(model_dir: str, trained: list[str]) -> None:
    """Every trained tensor must be named as in the input's files, so the saved model can take the frozen ones from
    there; say so before training, not after."""
    names = set(input_tensor_names(model_dir))
    missing = [n for n in trained if n not in names]
    if missing:
        raise SpectrumError(
            f"{len(missing)} trained tensor(s) are not stored under the same name in {model_dir} "
            f"({', '.join(missing[:3])}): a low-bit frozen base needs a checkpoint whose tensor names match the "
            "model's. Use --frozen-precision bf16 for this model."
        )


def input_tensor_names(model_dir: str) -> list[str]:
    from safetensors import safe_open

    out: list[str] = []
    for f in input_files(model_dir):
        with safe_open(str(f), framework="pt") as h:
            out.extend(h.keys())
    return out


def input_files(model_dir: str) -> list[Path]:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise SpectrumError(
            f"{model_dir} has no .safetensors files; a low-bit frozen base copies the frozen tensors from them "
            "when saving. Convert the checkpoint to safetensors, or use --frozen-precision bf16."
        )
    return files


def merge_from_original(adapter_dir: Path, model_dir: str, out: Path, orig_dtypes: dict[str, Any]) -> None:
    """QLoRA --merge: the adapter merged into the ORIGINAL 16-bit weights (not their NF4 approximation), saved in
    the input's dtypes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir), torch_device="cpu").merge_and_unload()
    from ..models import tied_aliases

    aliases = tied_aliases(merged)
    sd = {
        k: v.to(orig_dtypes.get(k, v.dtype))
        for k, v in merged.state_dict().items()
        if k not in aliases and isinstance(v, torch.Tensor)
    }
    merged.save_pretrained(out, state_dict=sd)
