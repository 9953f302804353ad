"""Synthetic low-precision checkpoints built from each format's documented layout, for the tests.

Each builder quantizes float weights the way the format's producers do (the quantizers live in
``benchmarks/quantizers.py``, which the benchmarks use too) and writes safetensors plus a config.json whose
``quantization_config`` names the method. ``*_reference`` returns the dequantized float32 values that
transformers' loaders define, to save as the "same weights in fp32".
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.quantizers import fp8_block_quantize, fp8_channel_quantize, mxfp4_quantize, plant


def llama_config(hidden=320, intermediate=704, layers=2, heads=5, kv_heads=1, vocab=256) -> dict:
    """A Llama whose projections end in partial 128-blocks (320 = 2.5 x 128, 704 = 5.5 x 128, k/v 64 rows)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        tie_word_embeddings=False,
    ).to_dict()


def llama_weights(cfg: dict, seed=0) -> dict[str, torch.Tensor]:
    """Planted-signal fp32 weights for every tensor of the Llama ``cfg`` describes."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {
        "self_attn.q_proj": (q, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, q),
        "mlp.gate_proj": (i, h),
        "mlp.up_proj": (i, h),
        "mlp.down_proj": (h, i),
    }
    out = {
        "model.embed_tokens.weight": plant((v, h), seed=seed),
        "lm_head.weight": plant((v, h), seed=seed + 1),
        "model.norm.weight": torch.ones(h),
    }
    for layer in range(cfg["num_hidden_layers"]):
        for k, (name, shape) in enumerate(shapes.items()):
            out[f"model.layers.{layer}.{name}.weight"] = plant(
                shape, rank=2 + (layer + k) % 4, seed=seed + 100 * layer + k
            )
        out[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(h)
        out[f"model.layers.{layer}.post_attention_layernorm.weight"] = torch.ones(h)
    return out


def _save(path: Path, tensors: dict[str, torch.Tensor], cfg: dict) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path


def _quantized_layers(name: str) -> bool:
    return ".layers." in name and name.endswith("_proj.weight")


def fp8_block_llama(path: Path, weights: dict, cfg: dict, block=(128, 128)) -> tuple[Path, dict]:
    """A DeepSeek-style checkpoint: projections in float8 with ``weight_scale_inv`` per block; embeddings,
    lm_head and norms in bf16. Returns the folder and the float32 values transformers dequantizes it to."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    stored, reference = {}, {}
    for k, w in weights.items():
        if _quantized_layers(k):
            q, s = fp8_block_quantize(w, block)
            stored[k], stored[k + "_scale_inv"] = q, s
            reference[k] = _dequantize_fp8_weight(q, s, list(block), torch.float32)
        else:
            stored[k] = reference[k] = w.to(torch.bfloat16)
    cfg = {
        **cfg,
        "quantization_config": {
            "quant_method": "fp8",
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "weight_block_size": list(block),
        },
    }
    return _save(path, stored, cfg), reference


def fp8_channel_llama(path: Path, weights: dict, cfg: dict) -> tuple[Path, dict]:
    """A compressed-tensors float-quantized checkpoint (FP8, per-channel weight scales in bf16, dynamic
    per-token activations): what llm-compressor's FP8_DYNAMIC scheme writes."""
    stored, reference = {}, {}
    for k, w in weights.items():
        if _quantized_layers(k):
            q, s = fp8_channel_quantize(w)
            stored[k], stored[k[: -len("weight")] + "weight_scale"] = q, s
            reference[k] = q.to(torch.float32) * s.to(torch.float32)  # transformers' fp8 decompression
        else:
            stored[k] = reference[k] = w.to(torch.bfloat16)
    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": "channel"}
    cfg = {
        **cfg,
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "float-quantized",
            "quantization_status": "compressed",
            "ignore": ["lm_head"],
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": fp8,
                    "input_activations": {**fp8, "dynamic": True, "strategy": "token"},
                }
            },
        },
    }
    return _save(path, stored, cfg), reference


def gpt_oss_config(hidden=320, intermediate=224, experts=4, layers=1, vocab=256) -> dict:
    """gpt-oss scaled down: hidden and expert sizes multiples of 32 (MXFP4 groups) but not of 64 or 128."""
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_local_experts=experts,
        num_experts_per_tok=2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=False,
        layer_types=["full_attention"] * layers,
    ).to_dict()


def gpt_oss_weights(cfg: dict, seed=0) -> dict[str, torch.Tensor]:
    """fp32 weights of a gpt-oss model (transformers' names and layouts) with a planted signal in each expert."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    model = GptOssForCausalLM(GptOssConfig(**cfg))
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    for k in list(sd):
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            e, n_in, n_out = sd[k].shape
            sd[k] = torch.stack([plant((n_in, n_out), rank=1 + x % 4, seed=seed + 7 * x + len(k)) for x in range(e)])
    return sd


def mxfp4_gpt_oss(path: Path, weights: dict, cfg: dict) -> tuple[Path, dict]:
    """gpt-oss as released: experts in MXFP4 (``*_blocks`` + ``*_scales``), everything else bf16."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    stored, reference = {}, {}
    for k, w in weights.items():
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = mxfp4_quantize(w)
            stored[k + "_blocks"], stored[k + "_scales"] = blocks, scales
            reference[k] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
        else:
            stored[k] = reference[k] = w.to(torch.bfloat16)
    cfg = {
        **cfg,
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
        },
    }
    return _save(path, stored, cfg), reference


def save_reference(path: Path, reference: dict, cfg: dict) -> Path:
    """The dequantized weights as an fp32 checkpoint with the quantization_config removed."""
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    return _save(path, {k: v.float() for k, v in reference.items()}, cfg)
