"""Task-aware module scores: how strongly the user's own data pulls on each weight matrix.

A spectral scan (``scanning``) looks at the weights alone, so it cannot tell which modules matter for *this*
task. ``score_modules`` runs ``batches`` forward and backward passes over the training data (the same data
pipeline and model loading ``spectrum train`` uses) and scores every module by its gradients:

- ``grad`` (default): the mean over batches of ||G||^2 / ||W||^2, the squared gradient norm relative to the
  weight's: how far one step moves the matrix, relative to its size.
- ``fisher``: the sum over batches of ||G||^2 divided by the module's element count, the diagonal empirical
  Fisher mass per parameter (at batch level).

Each parameter's gradient is folded into its modules' sums the moment it is accumulated (a post-accumulate hook)
and then freed, so at most one parameter's gradient is alive at a time and no optimizer is ever built.
The result is a ScanResult in the scan file format, estimator ``grad`` or ``fisher``: every selection rule,
export, report and ``spectrum train --selection`` / ``--scan`` takes it unchanged. ``combine_scores`` averages
the per-type rank percentiles of two score files (e.g. a gradient score and an SNR scan).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import __version__
from .errors import SpectrumError, require
from .estimators import REGISTRY as ESTIMATORS
from .results import ModuleScore, ScanResult
from .scan_files import load_scan

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)

METRICS = ("grad", "fisher")
COMBINED = "rank-mean"


def _option(default: Any, text: str, cli: bool = True) -> Any:
    """A ScoreConfig field with its `spectrum score` help (``cli.options_from`` makes the flag ``--field-name``)."""
    return field(default=default, metadata={"help": text, "flags": (), "cli": cli})


@dataclass
class ScoreConfig:
    """What `spectrum score` reads and how: the model, the data (as `spectrum train` reads it), how many batches.
    Each field but ``model`` and ``output`` is a flag of the command, with its help here."""

    model: str = _option("", "", cli=False)
    data: str = _option("", "Training data, read as `spectrum train` reads it (required).")
    task: str = _option("cpt", "cpt (text) or sft (chat or prompt/completion).")
    batches: int = _option(8, "Forward and backward passes to score on.")
    batch_size: int = _option(4, "Examples per batch.")
    seq_len: int | None = _option(None, "Sequence length (default 512, or the model's maximum when smaller).")
    text_field: str = _option("text", "The text column for cpt.")
    metric: str = _option("grad", "grad: mean ||G||^2/||W||^2; fisher: Fisher mass per parameter.")
    seed: int = _option(42, "Which examples make the batches.")
    device: str = _option("cpu", "cpu, cuda or cuda:N.")
    dtype: str = _option("float32", "The model's dtype while scoring: float32, bfloat16, float16.")
    combine: str | None = _option(None, "A scan to combine with: the mean of each module's per-type rank percentiles.")
    output: str | None = _option(None, "", cli=False)

    def validate(self) -> None:
        if not self.model or not self.data:
            raise SpectrumError("spectrum score needs a MODEL and --data (the training data to score on).")
        if self.metric not in METRICS:
            raise SpectrumError(f"Unknown --metric {self.metric!r}. Use one of: {', '.join(METRICS)}.")
        for name in ("batches", "batch_size"):
            if getattr(self, name) < 1:
                raise SpectrumError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise SpectrumError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}.")
        if self.combine is not None and not Path(self.combine).is_file():
            raise SpectrumError(f"--combine {self.combine}: no such scan file. Run `spectrum scan MODEL -o FILE`.")


def score_modules(config: ScoreConfig) -> ScanResult:
    """Score every weight matrix of ``config.model`` by its gradients on ``config.batches`` batches of
    ``config.data``; written to ``config.output`` if given (combined with ``config.combine`` if given).

    Costs ``batches`` forward and backward passes of the full model at ``batch_size`` x ``seq_len``.
    """
    require("transformers", "datasets", extra="train")
    config.validate()
    import torch
    from transformers import AutoModelForCausalLM

    from .data import DataConfig, PadCollator, build_datasets
    from .files import check_writable
    from .model_config import load_model_config
    from .training.callbacks import quiet
    from .training.run import model_folder, resolved_seq_len, tokenizer_for

    if config.output:
        check_writable(config.output)
    folder = model_folder(config.model)
    model_cfg = load_model_config(folder, folder_only=True)[0]
    max_positions = getattr(model_cfg, "max_position_embeddings", None)
    seq_len = resolved_seq_len(config.seq_len, max_positions, folder)
    with quiet(verbose=False):
        tokenizer = tokenizer_for(folder)
        dcfg = DataConfig(
            path=config.data, task=config.task, seq_len=seq_len, text_field=config.text_field, seed=config.seed
        )
        train_ds, _, _ = build_datasets(dcfg, tokenizer, max_positions)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, config.dtype))
    model.to(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train_ds), generator=gen).tolist()
    collate = PadCollator(tokenizer.pad_token_id)
    need = config.batches * config.batch_size
    picks = [order[i % len(order)] for i in range(need)]  # a small data set is cycled through again
    batches = [
        collate([train_ds[j] for j in picks[i : i + config.batch_size]]) for i in range(0, need, config.batch_size)
    ]
    t0 = time.monotonic()
    result = module_scores(model, batches, config.metric, device=config.device)
    seconds = time.monotonic() - t0
    result.model = config.model
    result.config.update(
        data=str(config.data),
        task=config.task,
        batches=config.batches,
        batch_size=config.batch_size,
        seq_len=seq_len,
        seed=config.seed,
        dtype=config.dtype,
        seconds=round(seconds, 2),
    )
    if config.combine is not None:
        result = combine_scores(result, load_scan(config.combine))
    if config.output:
        result.save(config.output)
    return result


def module_scores(
    model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], metric: str = "grad", device: str = "cpu"
) -> ScanResult:
    """The gradient scores of a model already in memory over ``batches`` (dicts of ``input_ids``,
    ``attention_mask``, ``labels``): the core of ``score_modules``. Leaves every ``requires_grad`` as it was and
    no ``.grad`` behind."""
    import torch

    from .checkpoint import TensorInfo
    from .scan_plan import plan_tensor

    if metric not in METRICS:
        raise SpectrumError(f"Unknown metric {metric!r}. Use one of: {', '.join(METRICS)}.")
    config = cast(Any, model).config.to_dict() if hasattr(model, "config") else {}
    mods: list[ModuleScore] = []
    cuts: dict[int, list[tuple[int, Any]]] = {}  # id(param) -> (index into mods, how to cut its gradient)
    params: dict[int, torch.nn.Parameter] = {}
    weight_sq: list[float] = []
    for name, p in model.named_parameters():
        info = TensorInfo(name, tuple(p.shape), str(p.dtype).removeprefix("torch."), "<memory>", name)
        for mod, mat in plan_tensor(info, p.detach(), config):
            if mat is not None:
                cuts.setdefault(id(p), []).append((len(mods), _cut(mod)))
                params[id(p)] = p
                weight_sq.append(float(mat.float().pow(2).sum()))
            else:
                weight_sq.append(0.0)
            mods.append(mod)
    if not cuts:
        raise SpectrumError("The model has no weight matrix to score.")
    sums = torch.zeros(len(mods), dtype=torch.float64)
    was = {pid: p.requires_grad for pid, p in ((id(p), p) for p in model.parameters())}
    hooks = []

    def fold(p: torch.Tensor) -> None:
        g = p.grad
        assert g is not None
        for i, cut in cuts[id(p)]:
            sums[i] += float(cut(g).float().pow(2).sum())
        p.grad = None  # freed now: the next parameter's gradient never meets this one

    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in params)
        for p in params.values():
            hooks.append(p.register_post_accumulate_grad_hook(fold))
        model.eval()  # no dropout: the same data gives the same scores
        n = 0
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items()})
            out.loss.backward()
            n += 1
    finally:
        for h in hooks:
            h.remove()
        for p in model.parameters():
            p.requires_grad_(was[id(p)])
            p.grad = None
    if n == 0:
        raise SpectrumError("No batch to score on: the data gave no examples.")
    for i, m in enumerate(mods):
        if m.skipped is not None or weight_sq[i] == 0.0 and metric == "grad":
            if m.skipped is None:
                m.skipped = "all-zero matrix: no relative gradient"
            continue
        g2 = float(sums[i])
        m.snr = g2 / n / weight_sq[i] if metric == "grad" else g2 / max(m.numel, 1)
        m.stats = {"grad_sq": g2, "weight_sq": weight_sq[i], "batches": n}
    est = ESTIMATORS[metric]
    return ScanResult(
        model=getattr(model, "name_or_path", type(model).__name__),
        estimator=est.name,
        estimator_version=est.version,
        modules=mods,
        version=__version__,
        config={k: config[k] for k in ("model_type", "tie_word_embeddings") if k in config},
    )


def _cut(mod: ModuleScore) -> Any:
    """How to take this module's slice of its parameter's gradient, exactly as the scan cuts the weight."""
    if mod.rows is None:
        return lambda g: g
    a, b = mod.rows
    if mod.expert is not None and mod.part is None:
        return lambda g: g[a]
    return (lambda g: g[a:b]) if mod.dim == 0 else (lambda g: g[:, a:b])


def combine_scores(a: ScanResult, b: ScanResult) -> ScanResult:
    """One score per module from two score files of the same model: the mean of its rank percentile within its
    type in ``a`` and in ``b`` (1 = highest in its type), so scores on different scales (SNR, gradients) count
    alike. Modules scored in only one of them are skipped. Each module keeps both inputs' scores in ``stats``."""
    pa, pb = _percentiles(a), _percentiles(b)
    scores_a = {m.name: m.snr for m in a.modules}
    scores_b = {m.name: m.snr for m in b.modules}
    if not set(pa) & set(pb):
        raise SpectrumError(
            f"The two score files share no scored module ({a.model} vs {b.model}): combine scores of the same model."
        )
    mods = []
    for m in a.modules:
        m = dataclasses.replace(m, stats={})
        if m.name in pa and m.name in pb:
            m.snr = (pa[m.name] + pb[m.name]) / 2
            m.stats = {
                f"{a.estimator}": float(scores_a[m.name] or 0.0),
                f"{b.estimator}": float(scores_b[m.name] or 0.0),
            }
            m.skipped = None
        elif m.skipped is None:
            m.snr, m.skipped = None, "scored in only one of the combined files"
        mods.append(m)
    est = ESTIMATORS[COMBINED]
    return ScanResult(
        model=a.model,
        estimator=est.name,
        estimator_version=est.version,
        modules=mods,
        fingerprint=a.fingerprint,
        version=__version__,
        config={**b.config, **a.config, "combined": [a.estimator, b.estimator]},
    )


def _percentiles(scan: ScanResult) -> dict[str, float]:
    """Each ranked module's rank percentile within its type: 1 for the highest score, 1/n for the lowest."""
    out: dict[str, float] = {}
    for ms in scan.by_type().values():
        ranked = sorted((m for m in ms if m.ranked), key=lambda m: m.snr)  # type: ignore[arg-type, return-value]
        for i, m in enumerate(ranked):
            out[m.name] = (i + 1) / len(ranked)
    return out


def given_scores(path: str | os.PathLike | None) -> ScanResult | None:
    """The score file at ``path`` when it holds scores a scan cannot remake (``spectrum score``'s, a combination),
    so that training reads it instead of scanning over it; None otherwise."""
    if not path or not Path(path).is_file():
        return None
    try:
        found = load_scan(path)
    except SpectrumError:
        return None
    est = ESTIMATORS.get(found.estimator)
    return found if est is not None and est.family != "snr" else None
