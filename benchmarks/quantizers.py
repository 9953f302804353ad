"""Quantizers in each format's documented layout: DeepSeek's fp8 block quantizer, llm-compressor's
per-channel fp8 and gpt-oss's MXFP4 packing, and a planted-signal matrix to quantize.

``benchmarks/quantization_noise.py`` and ``quantized_memory.py`` measure with them; the tests'
``helpers_quantized`` builds its synthetic checkpoints from them.
"""

from __future__ import annotations

import math

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
