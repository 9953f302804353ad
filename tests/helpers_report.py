"""A small synthetic scan with every case the report must draw, and a PNG checker."""

from __future__ import annotations

import math
import struct
from pathlib import Path

from spectrum_llm.results import ModuleScore, ScanResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes | Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; asserts the bytes are a PNG."""
    if isinstance(data, Path):
        data = data.read_bytes()
    assert data[:8] == PNG_MAGIC, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_sane_png(data: bytes | Path) -> None:
    w, h = png_size(data)
    assert 200 <= w <= 5000 and 200 <= h <= 5000, (w, h)


def synthetic_scan(layers: int = 3, experts: int = 4) -> ScanResult:
    """Dense attention, grouped experts (our layout), a +inf, a skipped matrix, norms and global modules."""
    mods: list[ModuleScore] = [
        ModuleScore(
            name="model.embed_tokens",
            type="embed_tokens",
            layer=None,
            shape=[100, 16],
            snr=5.0,
            kind="embedding",
            numel=1600,
        )
    ]
    for i in range(layers):
        for j, t in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            snr = 1.0 + i + j / 10
            mods.append(
                ModuleScore(
                    name=f"model.layers.{i}.self_attn.{t}",
                    type=f"self_attn.{t}",
                    layer=i,
                    shape=[16, 16],
                    snr=snr,
                    numel=256,
                )
            )
        mods.append(
            ModuleScore(
                name=f"model.layers.{i}.input_layernorm",
                type="input_layernorm",
                layer=i,
                shape=[16],
                snr=None,
                kind="norm",
                numel=16,
                skipped="1-D weight (norm or bias): not ranked",
            )
        )
        for e in range(experts):
            mods.append(
                ModuleScore(
                    name=f"model.layers.{i}.mlp.experts.{e}.down_proj",
                    type="mlp.experts.down_proj",
                    layer=i,
                    shape=[16, 32],
                    snr=float(10 * (i + 1) + e),
                    expert=e,
                    rows=[e, e + 1],
                    numel=512,
                )
            )
    mods[2].snr = math.inf  # layer 0 k_proj: no singular value below the threshold
    mods[7].snr, mods[7].skipped = None, "all-zero matrix: no spectrum to score"  # layer 0, expert 1
    mods[13].snr, mods[13].skipped = None, "all-zero matrix: no spectrum to score"  # layer 1 o_proj
    mods.append(
        ModuleScore(name="lm_head", type="lm_head", layer=None, shape=[100, 16], snr=3.0, kind="lm_head", numel=1600)
    )
    return ScanResult(model="synthetic-moe", estimator="mp", modules=mods)
