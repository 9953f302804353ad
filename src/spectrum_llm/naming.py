"""From a checkpoint tensor name to the module, its type, layer, expert and kind.

``model.layers.12.self_attn.q_proj.weight`` is module ``model.layers.12.self_attn.q_proj``, type
``self_attn.q_proj``, layer 12. Expert indices are taken out of the type so that all experts of a
layer position form one type (``mlp.experts.7.down_proj`` -> ``mlp.experts.down_proj``). GGUF files
use llama.cpp names, which are mapped to the Hugging Face ones first. ``fused_parts`` says where each
projection of a fused tensor (``qkv_proj``, ``W_pack``, ``c_attn``, ``gate_up_proj``) lies.
``column_type`` folds the expert index out of a scanned module's type the same way, for scans that kept it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

_BLOCK = re.compile(r"^(?P<prefix>.*?\b(?:layers|h|blocks|layer|block|decoder_layers))\.(?P<layer>\d+)\.(?P<rest>.+)$")
_EXPERT = re.compile(r"(?:^|\.)experts\.(?P<expert>\d+)\.")
_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+\.")
_QUANT_SUFFIXES = (
    ".qweight",
    ".qzeros",
    ".scales",
    ".g_idx",
    ".weight_scale",
    ".weight_scale_inv",
    ".SCB",
    ".CB",
    ".absmax",
    ".quant_map",
    ".quant_state",
    ".input_scale",
    ".weight_zero_point",
)


@dataclass(frozen=True)
class TensorName:
    """What a tensor name says about the module it belongs to."""

    param: str
    module: str
    type: str
    layer: int | None
    expert: int | None
    kind: str  # linear | embedding | lm_head | norm | bias | other


def module_of(param: str) -> str:
    """The module a weight belongs to; a bias keeps its suffix so it never shares a name with its weight."""
    return param.removesuffix(".weight")


def parse(param: str, ndim: int = 2) -> TensorName:
    """Name, type, layer, expert and kind of a Hugging Face parameter name."""
    module = module_of(param)
    m = _BLOCK.match(module)
    if m:
        layer: int | None = int(m.group("layer"))
        type_ = m.group("rest")
    else:
        layer = None
        type_ = module.removeprefix("model.").removeprefix("transformer.")
    expert = None
    e = _EXPERT.search(type_)
    if e:
        expert = int(e.group("expert"))
        type_ = type_[: e.start("expert")] + type_[e.end("expert") + 1 :]
    return TensorName(param, module, type_, layer, expert, _kind(param, module, ndim))


class _Typed(Protocol):
    type: str


def column_type(m: _Typed) -> str:
    """The column of a module in a layer x type grid (heatmaps, tables, counts by type): its type with any
    expert index taken out.

    Our scans already group experts (``mlp.experts.down_proj`` with ``expert`` set); the reference
    tool's MoE files keep one type per expert (``mlp.experts.0.down_proj``), which would make hundreds
    of columns.
    """
    return _EXPERT_INDEX.sub(r"\1experts.", m.type)


def _kind(param: str, module: str, ndim: int) -> str:
    low = module.lower()
    leaf = low.rsplit(".", 1)[-1]
    if param.endswith((".bias", "_bias")):  # gpt-oss keeps expert biases as experts.gate_up_proj_bias
        return "bias"
    if ndim <= 1:
        return "norm" if ("norm" in low or leaf.startswith("ln")) else "bias" if "bias" in leaf else "norm"
    if any(k in leaf for k in ("embed", "wte", "wpe", "word_embeddings", "tok_embeddings")):
        return "embedding"
    if leaf in ("lm_head", "output", "embed_out") or low.endswith("lm_head"):
        return "lm_head"
    return "linear"


def is_quantization_aux(param: str) -> bool:
    """Tensors that only make sense together with a quantized weight (GPTQ, AWQ, bitsandbytes, fp8)."""
    return param.endswith(_QUANT_SUFFIXES)


# llama.cpp tensor names -> Hugging Face names (Llama-family layout, which SmolLM2, Qwen2 and Mistral use).
_GGUF_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_GGUF_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
# Gemma 2 and 3 have four norms per block: llama.cpp's ffn_norm is the one before the MLP there.
_GGUF_BLOCK_BY_ARCH = {arch: {"ffn_norm": "pre_feedforward_layernorm"} for arch in ("gemma2", "gemma3", "gemma3n")}
_GGUF_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_to_hf(name: str, arch: str = "") -> str:
    """Map a llama.cpp tensor name to its Hugging Face name; unknown names pass through unchanged.

    ``arch`` is the file's ``general.architecture``, for the few names whose meaning depends on it.
    """
    m = _GGUF_NAME.match(name)
    if m:
        layer, part, suffix = m.groups()
        hf = _GGUF_BLOCK_BY_ARCH.get(arch, {}).get(part) or _GGUF_BLOCK.get(part)
        if hf is None:
            return name
        joiner = "" if hf.startswith("mlp.experts.") and suffix == "weight" else f".{suffix}"
        return f"model.layers.{layer}.{hf}{joiner}"
    base, _, suffix = name.rpartition(".")
    if base in _GGUF_GLOBAL:
        return f"{_GGUF_GLOBAL[base]}.{suffix}"
    return name


def fused_parts(name: str, shape: tuple[int, ...], config: dict) -> list[tuple[str, int, int, int]]:
    """(part, dim, start, stop) of each projection packed into a fused tensor, where the config says how.

    Linear weights are [out, in], so parts are row ranges; GPT-2's Conv1D ``c_attn`` is stored [in, out],
    so its parts are column ranges.
    """
    if len(shape) != 2 or not name.endswith(".weight"):
        return []
    leaf = name[: -len(".weight")].rsplit(".", 1)[-1]
    heads = config.get("num_attention_heads") or config.get("n_head")
    hidden = config.get("hidden_size") or config.get("n_embd")
    parts: list[tuple[str, int, int, int]] = []
    if leaf == "qkv_proj" and heads and hidden:
        kv = config.get("num_key_value_heads") or heads
        hd = config.get("head_dim") or hidden // heads
        q, k = heads * hd, kv * hd
        parts = [("q", 0, 0, q), ("k", 0, q, q + k), ("v", 0, q + k, q + 2 * k)]
    elif leaf == "W_pack" and hidden:
        parts = [(p, 0, i * hidden, (i + 1) * hidden) for i, p in enumerate("qkv")]
    elif leaf == "c_attn" and hidden:
        parts = [(p, 1, i * hidden, (i + 1) * hidden) for i, p in enumerate("qkv")]
    elif leaf == "gate_up_proj" and config.get("intermediate_size"):
        i = config["intermediate_size"]
        parts = [("gate", 0, 0, i), ("up", 0, i, 2 * i)]
    if parts and parts[-1][3] != shape[parts[-1][1]]:
        return []
    return parts
