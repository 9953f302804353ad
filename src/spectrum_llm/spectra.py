"""Singular values of one weight matrix, exactly and fast.

The singular values are the whole cost of a scan. For an m x n matrix with m <= n, the eigenvalues of
the m x m Gram matrix W W^T are the squared singular values; forming it in float64 one column block at a
time and calling ``eigvalsh`` is several times faster than an SVD on a CPU, needs memory only for the Gram
matrix and one block (never a float64 copy of the whole tensor), and stays within 1e-6 of the largest
singular value (the squaring costs about 8 of float64's 16 digits). ``svd`` computes ``svdvals`` directly,
for checking and for GPUs where the SVD is already fast.
"""

from __future__ import annotations

import torch

from .errors import SpectrumError

METHODS = ("auto", "gram", "svd")
_BLOCK_BYTES = 64 * 2**20


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpectrumError(f"--device {device} was asked for, but torch sees no CUDA GPU here. Use --device cpu.")
    return dev


def gram(w: torch.Tensor, device: torch.device) -> torch.Tensor:
    """W W^T or W^T W (whichever is smaller) in float64, accumulated over blocks of the longer side."""
    wide = w.shape[0] <= w.shape[1]
    small, long = (w.shape[0], w.shape[1]) if wide else (w.shape[1], w.shape[0])
    step = max(1, _BLOCK_BYTES // (8 * small))
    g = torch.zeros(small, small, dtype=torch.float64, device=device)
    for start in range(0, long, step):
        block = w[:, start : start + step] if wide else w[start : start + step].T
        b = block.to(device=device, dtype=torch.float64)
        g.addmm_(b, b.T)
    return g


def singular_values(w: torch.Tensor, device: str | torch.device = "cpu", method: str = "auto") -> torch.Tensor:
    """All singular values of a 2-D tensor, float64, largest first."""
    if w.ndim != 2:
        raise ValueError(f"singular_values needs a 2-D tensor, got shape {tuple(w.shape)}")
    if method not in METHODS:
        raise SpectrumError(f"Unknown singular-value method {method!r}; use one of {', '.join(METHODS)}.")
    dev = resolve_device(device)
    if method == "svd":
        s = torch.linalg.svdvals(w.to(device=dev, dtype=torch.float64))
    else:
        ev = torch.linalg.eigvalsh(gram(w, dev))
        s = ev.clamp_min(0).sqrt().flip(0)
    return s.cpu()
