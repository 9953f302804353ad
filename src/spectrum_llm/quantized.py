"""Low-precision checkpoints: which tensors are quantized weights, and their values, one slice at a time.

The largest models often ship only in low precision. Three layouts are read, as transformers' loaders
define them (``integrations/finegrained_fp8.py``, ``integrations/compressed_tensors.py``,
``integrations/mxfp4.py``):

- **fp8, block-scaled** (``quant_method: fp8``; DeepSeek-V3/R1, Qwen3 FP8): a float8 weight [m, n] and
  ``weight_scale_inv`` [ceil(m/bm), ceil(n/bn)], (bm, bn) = ``weight_block_size``. Despite its name the
  scale multiplies: w[i, j] = q[i, j] * s[i // bm, j // bn]; edge blocks are partial.
- **fp8 with ``weight_scale``** (compressed-tensors ``float-quantized``, ``fbgemm_fp8``): one scale per
  tensor ([] or [1]), per output channel ([m, 1]), per group ([m, n/g]) or per block, multiplied the same way.
- **mxfp4** (``quant_method: mxfp4``; gpt-oss experts): ``X_blocks`` uint8 [E, R, G, 16] holds two 4-bit
  e2m1 values per byte, low nibble first, and ``X_scales`` uint8 [E, R, G] one E8M0 exponent per 32 values:
  w = fp4 * 2^(scale - 127), [E, R, 32G], then transposed to [E, 32G, R], the layout of the bf16 model.

All three are a grid of scales over blocks of the weight (fp8 per tensor: one m x n block; per channel:
1 x n; mxfp4: 1 x 32), so one windowed reader serves each. Values are computed in float32 exactly as
transformers computes them. Scale tensors are attached to their weight and never listed as tensors of
their own. Other methods (GPTQ, AWQ, bitsandbytes, ...) are recognised and their weights skipped with a
message that names the method and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import torch

_E4M3, _E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
_FLOAT8 = {"F8_E4M3": _E4M3, "FLOAT8_E4M3FN": _E4M3, "F8_E5M2": _E5M2, "FLOAT8_E5M2": _E5M2}
_AUX = re.compile(
    r"\.(weight_scale_inv|weight_scale|weight_zero_point|weight_g_idx|weight_global_scale|weight_scale_2|"
    r"weight_shape|input_scale|input_global_scale|input_zero_point|activation_scale|output_scale|"
    r"k_scale|v_scale|q_scale|qzeros|scales|g_idx|SCB|weight_format|absmax|quant_map|nested_absmax|"
    r"nested_quant_map|quant_state(\..+)?)$"
)
_CHUNK = 2**20  # values dequantized at a time (4 MiB of float32), written straight into the output
_METHODS = {
    "gptq": "GPTQ",
    "awq": "AWQ",
    "bitsandbytes": "bitsandbytes",
    "hqq": "HQQ",
    "aqlm": "AQLM",
    "quanto": "quanto",
    "eetq": "EETQ",
    "higgs": "HIGGS",
    "vptq": "VPTQ",
    "bitnet": "BitNet",
    "torchao": "torchao",
    "fp_quant": "FP-Quant",
    "quark": "Quark",
    "spqr": "SpQR",
    "auto-round": "AutoRound",
    "modelopt": "ModelOpt",
    "nvfp4": "NVFP4",
    "gguf": "GGUF",
}


def is_aux(name: str) -> bool:
    """A tensor that only parametrises a quantized weight: scales, zero points, packing metadata."""
    return _AUX.search(name) is not None


# ------------------------------------------------------------------------------------------- values


def e2m1_values() -> torch.Tensor:
    """The 16 values of a 4-bit e2m1 float by code: sign bit 3, exponent bits 2-1 (bias 1), mantissa bit 0."""
    vals = []
    for code in range(16):
        exp, man = (code >> 1) & 3, code & 1
        mag = man * 0.5 if exp == 0 else 2.0 ** (exp - 1) * (1 + man / 2)
        vals.append(-mag if code & 8 else mag)
    return torch.tensor(vals, dtype=torch.float32)


_FP4 = e2m1_values()
_FP4_PAIRS = torch.stack((_FP4.repeat(16), _FP4.repeat_interleave(16)), dim=-1)  # byte -> (low, high) nibble values


def scale_values(s: torch.Tensor) -> torch.Tensor:
    """Scales as float32. uint8 scales are E8M0 exponents, 2^(byte - 127), as transformers reads them."""
    if s.dtype == torch.uint8:
        return torch.ldexp(torch.ones(s.shape), s.to(torch.int32) - 127)
    return s.to(torch.float32)


class Float8Grid:
    """float8 values q [m, n] (or [E, m, n]) times a grid of scales, one per bm x bn block."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, block: tuple[int, int]):
        self.q, self.block = q, block
        grid = (math.ceil(q.shape[-2] / block[0]), math.ceil(q.shape[-1] / block[1]))
        self.s = scale_values(scales).reshape(*q.shape[:-2], *grid)

    def read(self, e: int | None, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        q, s = (self.q, self.s) if e is None else (self.q[e], self.s[e])
        bm, bn = self.block
        x = q[r0:r1, c0:c1].to(torch.float32)
        scale = s.index_select(0, torch.arange(r0, r1) // bm).index_select(1, torch.arange(c0, c1) // bn)
        return x.mul_(scale)


class MXFP4Blocks:
    """gpt-oss packing: blocks [E, R, G, 16] uint8 (two e2m1 per byte, low nibble first), scales [E, R, G] E8M0."""

    def __init__(self, blocks: torch.Tensor, scales: torch.Tensor):
        self.blocks, self.scales = blocks, scales

    def read(self, e: int | None, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        b, s = (self.blocks, self.scales) if e is None else (self.blocks[e], self.scales[e])
        g0, g1 = c0 // 32, -(-c1 // 32)
        vals = _FP4_PAIRS[b[r0:r1, g0:g1].to(torch.long)].reshape(r1 - r0, g1 - g0, 32)
        vals = torch.ldexp(vals, s[r0:r1, g0:g1, None].to(torch.int32) - 127)
        return vals.reshape(r1 - r0, -1)[:, c0 - 32 * g0 : c1 - 32 * g0]


def dequantize_fp8(q: torch.Tensor, scales: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """A whole float8 weight with its scale grid, in float32."""
    return QuantizedTensor(Float8Grid(q, scales, block), tuple(q.shape)).materialize()


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A whole MXFP4 expert tensor [E, 32G, R] in float32 (the layout transformers' loader produces)."""
    e, r, g, _ = blocks.shape
    return QuantizedTensor(MXFP4Blocks(blocks, scales), (e, r, 32 * g), transposed=True).materialize()


# -------------------------------------------------------------------------------------- lazy tensor


def _real(x: Any) -> Any:
    if isinstance(x, QuantizedTensor):
        return x.materialize()
    if isinstance(x, (list, tuple)):
        return type(x)(_real(v) for v in x)
    if isinstance(x, dict):
        return {k: _real(v) for k, v in x.items()}
    return x


class QuantizedTensor:
    """A quantized weight that acts as its float32 values, dequantizing only what is read.

    Slicing (``w[e]`` on experts, ``w[a:b]``, ``w[:, a:b]``) and ``.T`` are free views; ``.to(...)``, any
    ``torch`` function and any other tensor method dequantize what the view covers. The scan's Gram product
    reads one column block at a time, so a quantized weight never exists in float32 as a whole during a scan,
    and the raw values stay memory-mapped. ``torch.isfinite`` is computed a chunk at a time.
    """

    def __init__(
        self,
        reader,
        stored: tuple[int, ...],
        transposed: bool = False,
        expert: int | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
    ):
        self._reader, self._stored, self._t, self._expert = reader, tuple(stored), transposed, expert
        self._rows = rows or (0, self._stored[-2])
        self._cols = cols or (0, self._stored[-1])

    # metadata ---------------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        r, c = self._rows[1] - self._rows[0], self._cols[1] - self._cols[0]
        mat = (c, r) if self._t else (r, c)
        lead = self._stored[:1] if len(self._stored) == 3 and self._expert is None else ()
        return torch.Size((*lead, *mat))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    dtype = torch.float32
    device = torch.device("cpu")

    def dim(self) -> int:
        return self.ndim

    def size(self, d: int | None = None):
        return self.shape if d is None else self.shape[d]

    def numel(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"QuantizedTensor(shape={tuple(self.shape)}, {type(self._reader).__name__})"

    # views ------------------------------------------------------------------------------------------
    @property
    def T(self) -> torch.Tensor | QuantizedTensor:  # a Tensor where not 2-D
        if self.ndim != 2:
            return self.materialize().T
        return QuantizedTensor(self._reader, self._stored, not self._t, self._expert, self._rows, self._cols)

    def t(self) -> torch.Tensor | QuantizedTensor:
        return self.T

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if self.ndim == 3:
            if isinstance(idx[0], int) and all(i == slice(None) for i in idx[1:]):
                e = range(self._stored[0])[idx[0]]
                return QuantizedTensor(self._reader, self._stored, self._t, e)
        elif len(idx) <= 2 and all(isinstance(i, slice) and i.step in (None, 1) for i in idx):
            spans = [self._cols, self._rows] if self._t else [self._rows, self._cols]
            cut = []
            for d, (a, b) in enumerate(spans):
                start, stop = (0, b - a) if d >= len(idx) else idx[d].indices(b - a)[:2]
                cut.append((a + start, a + max(start, stop)))
            rows, cols = (cut[1], cut[0]) if self._t else (cut[0], cut[1])
            return QuantizedTensor(self._reader, self._stored, self._t, self._expert, rows, cols)
        return self.materialize()[idx]

    # values -----------------------------------------------------------------------------------------
    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """fn applied to the values, computed a chunk of rows at a time into one output tensor."""
        if self.ndim == 3:
            out = torch.empty(self.shape, dtype=dtype)
            for e in range(self._stored[0]):
                out[e] = self[e]._map(fn, dtype)
            return out
        (r0, r1), (c0, c1) = self._rows, self._cols
        out = torch.empty(r1 - r0, c1 - c0, dtype=dtype)
        step = max(1, _CHUNK // max(c1 - c0, 1))
        for a in range(r0, r1, step):
            b = min(a + step, r1)
            out[a - r0 : b - r0] = fn(self._reader.read(self._expert, a, b, c0, c1))
        return out.T if self._t else out

    def materialize(self) -> torch.Tensor:
        """The view's values as a float32 tensor."""
        return self._map(lambda x: x, torch.float32)

    def to(self, *args, **kwargs) -> torch.Tensor:
        """Like Tensor.to. A float dtype on the CPU is written chunk by chunk, with no float32 copy in between
        (the Gram product asks for float64 blocks)."""
        dtype = kwargs.get("dtype", next((a for a in args if isinstance(a, torch.dtype)), None))
        device = kwargs.get("device", next((a for a in args if isinstance(a, (str, torch.device))), "cpu"))
        rest = [k for k in kwargs if k not in ("dtype", "device")]
        if dtype is not None and dtype.is_floating_point and torch.device(device).type == "cpu" and not rest:
            return self._map(lambda x: x, dtype)
        return self.materialize().to(*args, **kwargs)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.isfinite and len(args) == 1 and not kwargs:
            return args[0]._map(torch.isfinite, torch.bool)
        return func(*_real(args), **_real(kwargs))

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)


# ---------------------------------------------------------------------------------------- listing


@dataclasses.dataclass(frozen=True)
class Scheme:
    """How one checkpoint weight is quantized, as far as the listing can tell."""

    label: str  # e.g. "fp8 block 128x128", "mxfp4", "GPTQ 4-bit"
    reader: str = ""  # "fp8" | "mxfp4" | "" (cannot be dequantized here)
    block: tuple[int, int] | None = None
    why: str = ""  # why it cannot be dequantized; empty when it can


def method_of(config: dict) -> tuple[str, dict]:
    """quant_method (lower case) and the quantization_config of a config.json, ("", {}) when there is none."""
    qc = config.get("quantization_config") or config.get("compression_config") or {}
    if not isinstance(qc, dict):
        return "", {}
    return str(qc.get("quant_method", "")).lower(), qc


def method_label(config: dict) -> str:
    """A readable name of the checkpoint's quantization method, or ""."""
    method, qc = method_of(config)
    if not method:
        return ""
    if method == "bitsandbytes":
        return "bitsandbytes 4-bit" if qc.get("load_in_4bit") else "bitsandbytes 8-bit"
    if method in ("gptq", "awq") and qc.get("bits"):
        return f"{_METHODS[method]} {qc['bits']}-bit"
    if method == "compressed-tensors":
        return f"compressed-tensors {qc.get('format', '')}".strip()
    return _METHODS.get(method, method)


def _configured_block(qc: dict) -> tuple[int, int] | None:
    """The fp8 block size the quantization_config names: weight_block_size, or a compressed-tensors group's."""
    block = qc.get("weight_block_size")
    if block is None:
        for group in (qc.get("config_groups") or {}).values():
            w = (group or {}).get("weights") or {}
            bs = w.get("block_structure")
            if isinstance(bs, str) and "x" in bs:
                bs = [int(x) for x in bs.split("x")]
            if bs:
                block = bs
                break
    return (int(block[0]), int(block[1])) if block else None


def _fp8_scheme(
    shape: tuple[int, ...], scale_shape: tuple[int, ...], configured: tuple[int, int] | None, scale_key: str
) -> Scheme:
    """Which blocks a float8 weight's scale grid covers, checked against both shapes."""
    m, n = shape[-2:]
    lead = tuple(shape[:-2])
    numel = math.prod(scale_shape)
    if numel == math.prod(lead or (1,)):
        return Scheme("fp8 per-tensor" + ("" if not lead else " per expert"), "fp8", (m, n))
    grid = tuple(scale_shape[len(lead) :]) if tuple(scale_shape[: len(lead)]) == lead else ()
    if len(grid) == 1:
        grid = (grid[0], 1)
    if len(grid) != 2:
        return Scheme(
            "fp8",
            why=f"its {scale_key} has shape {list(scale_shape)}, which is not a grid over the {list(shape)} weight",
        )
    r, c = grid
    candidates = [configured] if configured else []
    if m % r == 0 and n % c == 0:
        candidates.append((m // r, n // c))
    for bm, bn in candidates:
        if math.ceil(m / bm) == r and math.ceil(n / bn) == c:
            if (bm, bn) == (1, n):
                return Scheme("fp8 per-channel", "fp8", (1, n))
            if bm == 1:
                return Scheme(f"fp8 group {bn}", "fp8", (1, bn))
            return Scheme(f"fp8 block {bm}x{bn}", "fp8", (bm, bn))
    named = (
        f"nor the configured block {configured[0]}x{configured[1]}"
        if configured
        else "and the quantization_config names no block size (weight_block_size)"
    )
    return Scheme("fp8", why=f"its {scale_key} grid {r}x{c} does not tile the {m}x{n} weight in equal blocks, {named}")


def classify(tensors: list, config: dict) -> list:
    """The weights of a checkpoint listing, quantization parameters attached to them, never listed.

    Takes and returns ``checkpoint.TensorInfo`` items. A quantized weight keeps the file key of its values
    and gets its Hugging Face name (``X_blocks`` -> ``X``, ``qweight`` -> ``weight``), its dequantized shape,
    a ``scheme`` and the (file, key) of its scales.
    """
    method, qc = method_of(config)
    label = method_label(config)
    configured = _configured_block(qc)
    by_name = {t.name: t for t in tensors}
    out = []
    for t in tensors:
        if is_aux(t.name):
            continue
        if t.name.endswith("_scales") and t.name[: -len("_scales")] + "_blocks" in by_name:
            continue
        base = t.name[: -len("_blocks")] if t.name.endswith("_blocks") else None
        if base is not None and base + "_scales" in by_name:
            out.append(_mxfp4(t, base, by_name[base + "_scales"]))
            continue
        if t.dtype.upper() in _FLOAT8:
            out.append(_float8(t, by_name, configured))
            continue
        for packed in (".qweight", ".weight_packed"):
            if t.name.endswith(packed):
                t = dataclasses.replace(t, name=t.name[: -len(packed)] + ".weight")
        if method and not _is_float(t.dtype):
            name = label or method
            t = dataclasses.replace(t, scheme=Scheme(name, why=_unsupported(name, t.dtype, method)))
        out.append(t)
    return out


def _is_float(dtype: str) -> bool:
    return dtype.upper() in {"F64", "F32", "F16", "BF16", "FLOAT64", "FLOAT32", "FLOAT16", "BFLOAT16"}


def _unsupported(label: str, dtype: str, method: str) -> str:
    fix = "Scan the unquantized (bf16/fp16) checkpoint of this model"
    if method == "bitsandbytes":
        fix += ", or load this one with transformers, call model.dequantize() and pass the model to spectrum_llm.scan"
    return (
        f"{label} weight ({dtype}): spectrum-llm dequantizes fp8 (block, channel or tensor scales) and MXFP4 "
        f"checkpoints, not {label}. {fix}."
    )


def _float8(t, by_name: dict, configured):
    scale = by_name.get(t.name + "_scale_inv") or by_name.get(t.name + "_scale")
    if scale is None or len(t.shape) not in (2, 3):
        why = (
            "float8 weight without a weight_scale or weight_scale_inv tensor beside it, so its scale is unknown. "
            "Scan the unquantized (bf16/fp16) checkpoint of this model."
        )
        return dataclasses.replace(t, scheme=Scheme("fp8", why=why))
    if t.name + "_zero_point" in by_name:
        why = "asymmetric fp8 (with a weight_zero_point) is not dequantized here. Scan the bf16 checkpoint."
        return dataclasses.replace(t, scheme=Scheme("fp8", why=why))
    key = scale.name.rsplit(".", 1)[-1]
    scheme = _fp8_scheme(t.shape, scale.shape, configured, key)
    if scheme.why:
        scheme = dataclasses.replace(scheme, why=f"fp8 weight: {scheme.why}. Scan the bf16 checkpoint of this model.")
    return dataclasses.replace(t, scheme=scheme, scales=((scale.file, scale.key),))


def _mxfp4(t, base: str, scales):
    if len(t.shape) != 4 or t.shape[-1] != 16 or tuple(scales.shape) != tuple(t.shape[:-1]):
        why = (
            f"MXFP4 blocks {list(t.shape)} with scales {list(scales.shape)} are not the gpt-oss expert layout "
            "([E, R, G, 16] and [E, R, G]). Scan the bf16 checkpoint of this model."
        )
        return dataclasses.replace(t, name=base, scheme=Scheme("mxfp4", why=why))
    e, r, g, _ = t.shape
    return dataclasses.replace(
        t,
        name=base,
        shape=(e, 32 * g, r),
        scheme=Scheme("mxfp4", "mxfp4", (1, 32)),
        scales=((scales.file, scales.key),),
    )


def open_tensor(info, values: torch.Tensor, scales: list[torch.Tensor]) -> QuantizedTensor:
    """The lazy float32 view of a quantized weight from its raw values and scales."""
    if info.scheme.reader == "mxfp4":
        e, r, g, _ = values.shape
        return QuantizedTensor(MXFP4Blocks(values, scales[0]), (e, r, 32 * g), transposed=True)
    return QuantizedTensor(Float8Grid(values, scales[0], info.scheme.block), tuple(values.shape))


def stored_dtype(info) -> str:
    """The element type the checkpoint stores for a weight (MXFP4 for gpt-oss packed blocks)."""
    return "MXFP4" if info.scheme is not None and info.scheme.label == "mxfp4" else info.dtype
