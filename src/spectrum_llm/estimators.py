"""Signal-to-noise estimators: from singular values to one score per matrix.

``reference`` is the published Spectrum formula, kept exactly so that selections reproduce the paper's.
``mp`` is the scale-invariant Marchenko-Pastur estimator this project recommends (see docs/estimators.md):
the noise scale comes from the median singular value (Gavish & Donoho, 2014), the threshold is the MP bulk
edge plus a small Tracy-Widom margin, and the score is the ratio of signal energy to noise energy, so that it
does not change when W is multiplied by a constant and can be compared across module types and models.

Each estimator is one entry of ``REGISTRY``, carrying what the rest of the package needs to know about it:
whether its scores compare across module types (``scale_invariant``) and a ``version``, recorded in scan files,
that changes whenever its scores would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .errors import SpectrumError

if TYPE_CHECKING:  # tensor methods and local numpy imports keep the registry cheap to import (the CLI does)
    import numpy as np
    import torch


@dataclass
class Score:
    """One matrix's score and the quantities behind it."""

    snr: float
    sigma: float
    threshold: float
    signal_rank: int
    max_sv: float

    def stats(self) -> dict[str, float]:
        return {
            "sigma": self.sigma,
            "threshold": self.threshold,
            "signal_rank": self.signal_rank,
            "max_sv": self.max_sv,
        }


def reference_snr(s: torch.Tensor, m: int, n: int) -> Score:
    """The published formula: IQR noise scale, MP threshold, (signal / noise) / largest singular value."""
    s = s.double()
    q75, q25 = s.quantile(s.new_tensor([0.75, 0.25])).tolist()
    sigma = (q75 - q25) / 1.349
    beta = min(m, n) / max(m, n)
    threshold = sigma * (1 + math.sqrt(beta))
    above = s > threshold
    signal = float(s[above].sum())
    noise = float(s[~above].sum()) if bool((~above).any()) else 1.0
    max_sv = float(s.max())
    return Score(signal / noise / max_sv, sigma, threshold, int(above.sum()), max_sv)


@lru_cache(maxsize=4096)
def mp_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law with aspect ratio beta <= 1 and unit variance.

    Integrates the density on [(1-sqrt b)^2, (1+sqrt b)^2] after x = a + (b-a)(1-cos t)/2, which makes the
    integrand smooth at both edges, then inverts the cumulative distribution.
    """
    import numpy as np

    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    t = np.linspace(0.0, math.pi, 20001)
    x = a + (b - a) * (1 - np.cos(t)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((b - a) / 2) ** 2 * np.sin(t) ** 2 / (2 * math.pi * beta * x)
    f[~np.isfinite(f)] = 0.0 if beta < 1 else 2 / math.pi  # limit at x -> 0 when beta == 1
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(t))])
    cdf /= cdf[-1]
    return float(np.interp(0.5, cdf, x))


def mp_edge(sigma: float, m: int, n: int, margin: float = 3.0) -> float:
    """Largest singular value pure noise of scale sigma reaches: the MP edge plus `margin` Tracy-Widom scales.

    For an m x n Gaussian matrix the largest eigenvalue of W W^T / sigma^2 centres on
    mu = (sqrt(n-1/2) + sqrt(m-1/2))^2 with spread (sqrt(n-1/2) + sqrt(m-1/2)) (1/sqrt(n-1/2) + 1/sqrt(m-1/2))^(1/3)
    (Johnstone, 2001); three spreads put the false-signal rate of pure noise well below one percent.
    """
    lo, hi = sorted((m, n))
    rn, rm = math.sqrt(max(hi - 0.5, 0.5)), math.sqrt(max(lo - 0.5, 0.5))
    mu = (rn + rm) ** 2
    spread = (rn + rm) * (1 / rn + 1 / rm) ** (1 / 3)
    return sigma * math.sqrt(mu + margin * spread)


def mp_density(x: np.ndarray, sigma: float, m: int, n: int) -> np.ndarray:
    """Marchenko-Pastur density of the singular values of an m x n noise matrix with entry scale sigma.

    With lo = min(m, n), hi = max(m, n) and beta = lo / hi, t = s^2 / (hi sigma^2) has density
    sqrt((b - t)(t - a)) / (2 pi beta t) on [a, b] = [(1 - sqrt beta)^2, (1 + sqrt beta)^2]; the density
    of s follows by the change of variable ds = dt * hi sigma^2 / (2 s).
    """
    import numpy as np

    lo, hi = sorted((m, n))
    beta = lo / hi
    a, b = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    t = x**2 / (hi * sigma**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.sqrt(np.clip((b - t) * (t - a), 0, None)) / (2 * math.pi * beta * t)
        out = f * 2 * x / (hi * sigma**2)
    return np.where(np.isfinite(out), out, 0.0)


def mp_sigma(s: torch.Tensor, m: int, n: int) -> float:
    """Noise scale from the median singular value (Gavish & Donoho): median(s) / sqrt(max(m,n) * mu_beta)."""
    lo, hi = sorted((m, n))
    med = float(s.double().median())
    return med / math.sqrt(hi * mp_median(lo / hi))


def mp_snr(s: torch.Tensor, m: int, n: int) -> Score:
    """Signal energy over noise energy, split at the MP edge of the median-estimated noise scale."""
    s = s.double()
    sigma = mp_sigma(s, m, n)
    threshold = mp_edge(sigma, m, n)
    above = s > threshold
    energy = s**2
    signal, noise = float(energy[above].sum()), float(energy[~above].sum())
    return Score(signal / noise, sigma, threshold, int(above.sum()), float(s.max()))


def _unscorable_any(s: torch.Tensor, m: int, n: int) -> str | None:
    if min(m, n) < 2:
        return f"{m}x{n} matrix: too few singular values for a noise estimate"
    if float(s.max()) == 0.0:
        return "all-zero matrix: no spectrum to score"
    return None


def _unscorable_mp(s: torch.Tensor, m: int, n: int) -> str | None:
    why = _unscorable_any(s, m, n)
    if why is None and float(s.median()) == 0.0:
        return "more than half the singular values are zero (rank-deficient): no noise floor to measure"
    return why


@dataclass(frozen=True)
class Estimator:
    """One SNR estimator and its properties.

    ``scale_invariant``: its scores do not depend on a module type's weight scale, so they may be ranked across
    types (the global rule) and across models. ``version`` is written into scan files; raise it whenever a
    change would alter the scores, so that scans made before are recognised as such and not reused.
    """

    name: str
    scale_invariant: bool
    version: int
    description: str
    score: Callable[[torch.Tensor, int, int], Score]
    unscorable: Callable[[torch.Tensor, int, int], str | None]
    #: "snr": scored from singular values by `spectrum scan`; "gradient" (``gradscore``, `spectrum score`) and
    #: "combined" (rank-mean of two files) are not spectral, so a scan cannot make them and their values do not
    #: compare with SNR scores.
    family: str = "snr"


REGISTRY: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator(
            "mp",
            scale_invariant=True,
            version=1,
            description="scale-invariant Marchenko-Pastur",
            score=mp_snr,
            unscorable=_unscorable_mp,
        ),
        Estimator(
            "reference",
            scale_invariant=False,
            version=1,
            description="the published formula, exactly",
            score=reference_snr,
            unscorable=_unscorable_any,
        ),
    )
}


def _not_spectral(name: str) -> Callable[[torch.Tensor, int, int], Any]:
    def refuse(s: torch.Tensor, m: int, n: int) -> Any:
        raise SpectrumError(
            f"The {name!r} scores come from gradients on training data, not from singular values: make them with "
            "`spectrum score MODEL --data DATA -o scores.json`, not `spectrum scan`."
        )

    return refuse


for _e in (
    Estimator(
        "grad",
        False,
        1,
        "task-aware: mean ||G||^2/||W||^2 over batches",
        _not_spectral("grad"),
        _not_spectral("grad"),
        family="gradient",
    ),
    Estimator(
        "fisher",
        False,
        1,
        "task-aware: diagonal Fisher mass per parameter",
        _not_spectral("fisher"),
        _not_spectral("fisher"),
        family="gradient",
    ),
    Estimator(
        "rank-mean",
        False,
        1,
        "mean per-type rank percentile of two score files",
        _not_spectral("rank-mean"),
        _not_spectral("rank-mean"),
        family="combined",
    ),
):
    REGISTRY[_e.name] = _e
ESTIMATORS = tuple(REGISTRY)
#: the estimators `spectrum scan` computes (from singular values)
SPECTRAL_REGISTRY = {n: e for n, e in REGISTRY.items() if e.family == "snr"}
SPECTRAL = tuple(SPECTRAL_REGISTRY)
DEFAULT = "mp"


def get(name: str) -> Estimator:
    """The registry entry of ``name``; a clear error naming the known ones for anything else."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        other = ", ".join(n for n in REGISTRY if n not in SPECTRAL)
        raise SpectrumError(
            f"Unknown estimator {name!r}. Use one of: {', '.join(SPECTRAL)}. ({other}: scores of `spectrum score`.)"
        ) from None


def score(s: torch.Tensor, m: int, n: int, estimator: str) -> Score:
    return get(estimator).score(s, m, n)


def unscorable(s: torch.Tensor, m: int, n: int, estimator: str) -> str | None:
    """Why a matrix has no meaningful score (so it is skipped, never given NaN or Inf), or None."""
    return get(estimator).unscorable(s, m, n)
