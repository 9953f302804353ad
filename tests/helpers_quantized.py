"""Synthetic low-precision checkpoints built from each format's documented layout, for tests and benchmarks.

Each builder quantizes float weights the way the format's producers do (DeepSeek's fp8 block quantizer,
llm-compressor's per-channel fp8, gpt-oss's MXFP4 packing) and writes safetensors plus a config.json whose
``quantization_config`` names the method. ``*_reference`` returns the dequantized float32 values that
transformers' loaders define, to save as the "same weights in fp32".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FP8_MAX = 448.0  # largest float8_e4m3fn


def fp8_block_quantize(w: torch.Tensor, block=(128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek layout: float8_e4m3fn values and one float32 ``weight_scale_inv`` per block (edges partial)."""
    m, n = w.shape
    bm, bn = block
    r, c = math.ceil(m / bm), math.ceil(n / bn)
    padded = torch.zeros(r * bm, c * bn)
    padded[:m, :n] = w.float()
    blocks = padded.reshape(r, bm, c, bn)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).reshape(r * bm, c * bn)[:m, :n].to(torch.float8_e4m3fn)
    return q, scale.to(torch.float32)


def fp8_channel_quantize(w: torch.Tensor, scale_dtype=torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors float-quantized, strategy channel: fp8 values and a ``weight_scale`` [m, 1]."""
    scale = (w.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / FP8_MAX).to(scale_dtype)
    return (w.float() / scale.float()).to(torch.float8_e4m3fn), scale


def _e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 code (sign bit 3) of each value, x already scaled into [-6, 6]."""
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    mag = (x.abs()[..., None] - grid).abs().argmin(dim=-1)
    return (mag | ((x < 0).long() << 3)).to(torch.uint8)


def mxfp4_quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss layout of an expert tensor w [E, in, out]: blocks [E, out, in/32, 16] uint8, scales [E, out, in/32]."""
    t = w.float().transpose(1, 2)  # [E, out, in], quantized along in
    e, rows, cols = t.shape
    groups = t.reshape(e, rows, cols // 32, 32)
    amax = groups.abs().amax(dim=-1).clamp_min(2.0**-120)
    exp = torch.ceil(torch.log2(amax / 6.0)).clamp(-127, 127)
    codes = _e2m1_codes(groups / torch.exp2(exp)[..., None])
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed.contiguous(), (exp + 127).to(torch.uint8)


def plant(shape, rank=3, strength=4.0, sigma=0.02, seed=0) -> torch.Tensor:
    """Gaussian noise plus a rank-`rank` spike `strength` times the Marchenko-Pastur edge."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    u = torch.linalg.qr(torch.randn(m, rank, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, rank, generator=g))[0]
    return torch.randn(m, n, generator=g) * sigma + strength * sigma * (m**0.5 + n**0.5) * (u @ v.T)


def llama_config(hidden=320, intermediate=704, layers=2, heads=5, kv_heads=1, vocab=256) -> dict:
    """A Llama whose projections end in partial 128-blocks (320 = 2.5 x 128, 704 = 5.5 x 128, k/v 64 rows)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                       tie_word_embeddings=False).to_dict()


def llama_weights(cfg: dict, seed=0) -> dict[str, torch.Tensor]:
    """Planted-signal fp32 weights for every tensor of the Llama ``cfg`` describes."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, q), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    out = {"model.embed_tokens.weight": plant((v, h), seed=seed), "lm_head.weight": plant((v, h), seed=seed + 1),
           "model.norm.weight": torch.ones(h)}
    for layer in range(cfg["num_hidden_layers"]):
        for k, (name, shape) in enumerate(shapes.items()):
            out[f"model.layers.{layer}.{name}.weight"] = plant(shape, rank=2 + (layer + k) % 4,
                                                               seed=seed + 100 * layer + k)
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
    cfg = {**cfg, "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                          "weight_block_size": list(block)}}
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
    cfg = {**cfg, "quantization_config": {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], "weights": fp8,
                                                             "input_activations": {**fp8, "dynamic": True,
                                                                                   "strategy": "token"}}}}}
    return _save(path, stored, cfg), reference


def gpt_oss_config(hidden=320, intermediate=224, experts=4, layers=1, vocab=256) -> dict:
    """gpt-oss scaled down: hidden and expert sizes multiples of 32 (MXFP4 groups) but not of 64 or 128."""
    from transformers import GptOssConfig

    return GptOssConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                        num_local_experts=experts, num_experts_per_tok=2, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
                        layer_types=["full_attention"] * layers).to_dict()


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
    cfg = {**cfg, "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}}
    return _save(path, stored, cfg), reference


def save_reference(path: Path, reference: dict, cfg: dict) -> Path:
    """The dequantized weights as an fp32 checkpoint with the quantization_config removed."""
    cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    return _save(path, {k: v.float() for k, v in reference.items()}, cfg)
