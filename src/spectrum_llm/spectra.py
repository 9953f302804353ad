"""Singular values of one weight matrix, exactly and fast.

The singular values are the whole cost of a scan. For an m x n matrix with m <= n, the eigenvalues of
the m x m Gram matrix W W^T are the squared singular values; forming it in float64 one column block at a
time and calling ``eigvalsh`` is several times faster than an SVD on a CPU, needs memory only for the Gram
matrix and one block (never a float64 copy of the whole tensor), and stays within 1e-6 of the largest
singular value (the squaring costs about 8 of float64's 16 digits). ``svd`` computes ``svdvals`` directly,
for checking and for GPUs where the SVD is already fast.

GPUs keep float64 too: a float32 Gram loses half of float32's 7 digits, about 3e-4 of the largest singular
value for the smallest ones, far outside the 1e-6 the scan promises. Data-centre GPUs (P100, V100, A100,
H100, B200) run float64 at half their float32 rate; consumer cards run it at 1/32-1/64, and there the scan
says so (``float64_note``): the Gram then costs about as much as on a many-core CPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .errors import SpectrumError

METHODS = ("gram", "svd")
#: bytes of one float64 block of rows the Gram product takes at a time on the CPU (the block and BLAS's copy
#: of it stay small), and on a GPU
BLOCK_BYTES = 16 * 2**20
DEVICE_BLOCK_BYTES = 256 * 2**20


def resolve_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpectrumError(f"--device {device} was asked for, but torch sees no CUDA GPU here. Use --device cpu.")
    return dev


def gram(w: torch.Tensor, device: torch.device) -> torch.Tensor:
    """W W^T or W^T W (whichever is smaller) in float64, accumulated over blocks of the longer side."""
    wide = w.shape[0] <= w.shape[1]
    small, long = (w.shape[0], w.shape[1]) if wide else (w.shape[1], w.shape[0])
    step = max(1, (BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES) // (8 * small))
    g = torch.zeros(small, small, dtype=torch.float64, device=device)
    for start in range(0, long, step):
        block = w[:, start : start + step] if wide else w[start : start + step].T
        b = block.to(device=device, dtype=torch.float64)
        g.addmm_(b, b.T)
    return g


#: at most this many CPU threads, the eigensolver runs on one (see ``_eigensolver_threads``)
FEW_THREADS = 4


@contextmanager
def _eigensolver_threads(device: torch.device):
    """One thread for the CPU eigensolver on machines of a few cores.

    The tridiagonal reduction inside ``eigvalsh`` synchronises its threads once per column, so on 2 cores
    shared with the scan's reader thread (or anything else) each step waits for a descheduled thread:
    measured here, a 1024 x 1024 ``eigvalsh`` took 1.2-1.7 s on one thread and 14-20 s on two, while the Gram
    product, with few synchronisation points, still ran 1.8x faster on two.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1 or n > FEW_THREADS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def singular_values_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first, from one Gram matrix or a batch of equal-sized ones (one eigensolver call)."""
    with _eigensolver_threads(g.device):
        ev = torch.linalg.eigvalsh(g)
    return ev.clamp_min(0).sqrt().flip(-1)


_FULL_RATE_FLOAT64 = {(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)}  # P100, V100, A100, H100/H200, B200


def float64_note(device: torch.device) -> str | None:
    """A one-line notice for GPUs whose float64 rate is a small fraction of float32 (consumer cards), else None."""
    if device.type != "cuda":
        return None
    cap = torch.cuda.get_device_capability(device)
    if cap in _FULL_RATE_FLOAT64:
        return None
    name = torch.cuda.get_device_name(device)
    return (
        f"{name} (compute capability {cap[0]}.{cap[1]}) computes float64 at 1/32-1/64 of its float32 rate; "
        "the scan still forms the Gram matrices in float64, because float32 would miss the 1e-6 accuracy "
        "of the singular values (about 3e-4 of the largest). Expect CPU-like speed for the Gram products."
    )


def singular_values(w: torch.Tensor, device: str | torch.device = "cpu", method: str = "gram") -> torch.Tensor:
    """All singular values of a 2-D tensor, float64, largest first."""
    if w.ndim != 2:
        raise ValueError(f"singular_values needs a 2-D tensor, got shape {tuple(w.shape)}")
    if method not in METHODS:
        raise SpectrumError(f"Unknown singular-value method {method!r}; use one of {', '.join(METHODS)}.")
    dev = resolve_device(device)
    if method == "svd":
        s = torch.linalg.svdvals(w.to(device=dev, dtype=torch.float64))
    else:
        s = singular_values_from_gram(gram(w, dev))
    return s.cpu()
