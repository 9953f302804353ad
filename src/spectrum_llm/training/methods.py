"""The training methods, one registered object each: spectrum (train the selected modules, freeze the rest; the
frozen linear modules optionally held in int8 or NF4), full (train everything), lora (adapters on all linear
layers, or on the selected modules) and qlora (lora on a 4-bit NF4 base; the quantization is in ``lowbit``).

``prepare_model(config, model)`` does a method's setup on a model already loaded: it freezes or adds adapters,
gives the trainable low-precision parameters fp32 master copies and says what trains. ``train`` calls it, and a
benchmark with its own training loop can too; it needs no Trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..errors import SpectrumError
from ..params import count_params, shape
from ..selection import DEFAULT_TOP_PERCENT
from .outputs import SELECTION_FILE

if TYPE_CHECKING:
    from ..freezing import FreezeSummary
    from ..results import ScanResult
    from ..selection import Selection
    from .config import TrainConfig
    from .lowbit import LowBitReport

LOG = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A model made ready for one method: what it trains and how much."""

    model: Any  # the model to train (for lora the PEFT model around the one passed in)
    method: str
    selection: Selection | None  # what the method trains from, if anything
    trainable_params: int  # partial tensors count only their trainable rows
    total_params: int
    always_trained: int = 0  # spectrum: trainable parameters of the embeddings and head (a tied pair once)
    frozen: FreezeSummary | None = None  # spectrum: what freeze() left trainable
    lora_config: dict[str, Any] | None = None  # lora: the LoraConfig arguments
    upcast: int = 0  # parameters given fp32 master copies
    lowbit: LowBitReport | None = None  # a low-bit base (qlora, spectrum --frozen-precision int8/nf4)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


@dataclass(frozen=True)
class Method:
    """One way to train: the packages it needs beyond the train extra's, whether it trains from a Selection, and
    its setup on a loaded model (before the fp32 master copies)."""

    name: str
    packages: tuple[str, ...]
    uses_selection: Callable[[TrainConfig], bool]
    setup: Callable[[TrainConfig, Any, Selection | None], Prepared]


def _spectrum(cfg: TrainConfig, model: Any, selection: Selection | None) -> Prepared:
    from ..freezing import freeze

    assert selection is not None  # spectrum always trains from a selection
    frozen = freeze(model, selection, allow_other_model=cfg.allow_other_model)
    if frozen.partial and cfg.weight_decay and distributed.is_main():
        LOG.warning(
            "the selection trains only some rows of %s; weight decay still shrinks their frozen rows. "
            "Set weight_decay: 0 (the default) to keep them bit-identical.",
            ", ".join(frozen.partial),
        )
    prepared = Prepared(
        model,
        "spectrum",
        selection,
        trainable_params=frozen.trainable_params,
        total_params=count_params(model)[1],
        always_trained=_always_trained(model),
        frozen=frozen,
    )
    if cfg.frozen_precision != "bf16":
        from . import lowbit

        lowbit.check_trained_in_files(cfg.model, [n for n, p in model.named_parameters() if p.requires_grad])
        prepared.lowbit = lowbit.frozen_linears(model, cfg.frozen_precision, lowbit.train_device(cfg.use_cpu))
    return prepared


def _full(cfg: TrainConfig, model: Any, selection: Selection | None) -> Prepared:
    for p in model.parameters():
        if p.is_floating_point():
            p.requires_grad_(True)
    return Prepared(model, "full", None, *count_params(model))


def _lora(cfg: TrainConfig, model: Any, selection: Selection | None) -> Prepared:
    if selection is not None:
        from ..architecture import check_model

        check_model(selection, model, allow_other_model=cfg.allow_other_model)
        kwargs = _lora_plan(cfg, selection, model)
    elif cfg.selection:
        from ..lora import load_lora_config

        kwargs = load_lora_config(cfg.selection)
    else:
        kwargs = _all_linear(cfg)
    import torch

    torch.manual_seed(cfg.seed)  # the adapters' random init from --seed: the same on every rank and every run
    model = apply_lora(model, kwargs)
    return Prepared(model, "lora", selection, *count_params(model), lora_config=kwargs)


def _qlora(cfg: TrainConfig, model: Any, selection: Selection | None) -> Prepared:
    """LoRA as the QLoRA paper trains it: an NF4 base (double quantization, 16-bit compute), peft's
    prepare_model_for_kbit_training, then the lora method's adapters; counts are of the unquantized model."""
    from peft import prepare_model_for_kbit_training

    from . import lowbit

    total = count_params(model)[1]
    device = lowbit.train_device(cfg.use_cpu)
    report = lowbit.qlora_base(model, device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    prepared = _lora(cfg, model, selection)
    prepared.method, prepared.total_params, prepared.lowbit = "qlora", total, report
    prepared.trainable_params = count_params(prepared.model)[0]
    return prepared


def _lora_uses_selection(cfg: TrainConfig) -> bool:
    """A selection file or --top-percent puts the adapters on the selected modules; a PEFT file says it all."""
    from ..lora import is_lora_config

    if cfg.selection:
        return not is_lora_config(cfg.selection)
    return cfg.top_percent is not None


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("spectrum", (), lambda cfg: True, _spectrum),
        Method("full", (), lambda cfg: False, _full),
        Method("lora", ("peft",), _lora_uses_selection, _lora),
        Method("qlora", ("peft",), _lora_uses_selection, _qlora),
    )
}
METHODS = tuple(REGISTRY)
LORA_METHODS = ("lora", "qlora")  # adapters: the LoRA flags, learning rate and outputs


def prepare_model(
    config: TrainConfig,
    model: Any,
    selection: Selection | None = None,
    *,
    source: str | None = None,
    resumed: bool = False,
    upcast: bool | None = None,
) -> Prepared:
    """Set up ``config.method`` on a loaded ``model``: freeze all but the selection (spectrum), make everything
    trainable (full) or add LoRA adapters (lora); then fp32 master copies of the trainable low-precision
    parameters (``upcast``; default: unless ``config.precision`` is fp32), frozen ones keep their dtype.

    A method that trains from a selection and gets none resolves it as ``train`` does (``resolve_selection``,
    scanning ``source``, default ``config.model``). Raises SpectrumError when nothing is left trainable.
    """
    method = REGISTRY[config.method]
    from .lowbit import check_job

    check_job(config, source or config.model)
    if selection is None and method.uses_selection(config):
        selection = resolve_selection(config, source or config.model, resumed)
    prepared = method.setup(config, model, selection)
    if upcast is None:
        upcast = config.precision != "fp32"
    if upcast:
        prepared.upcast = upcast_trainable(prepared.model)
    if prepared.trainable_params == 0:
        raise SpectrumError(
            "No parameter is trainable: the selection matches nothing in this model. Check that "
            "the selection was made for this model (or pass --top-percent to select anew)."
        )
    return prepared


def resolve_selection(cfg: TrainConfig, source: str, resumed: bool = False) -> Selection:
    """The Selection a run trains: a file, the one saved by the run being resumed, or a fresh scan.

    ``source`` is the model as the user named it: a GGUF file is scanned as itself (its scan is cached by content,
    so `spectrum scan` of the same file, anywhere, is reused), not as the folder converted for training.
    """
    from ..selection import load_selection, select

    saved = cfg.out / SELECTION_FILE
    if cfg.selection:
        return load_selection(cfg.selection)
    if resumed and saved.is_file() and cfg.top_percent is None:
        return load_selection(saved)
    result = resolve_scan(cfg, source)
    sel = select(
        result,
        top_percent=cfg.top_percent if cfg.top_percent is not None else DEFAULT_TOP_PERCENT,
        embeddings=cfg.embeddings,
        train_embeddings=cfg.train_embeddings,
        train_lm_head=cfg.train_lm_head,
    )
    if distributed.is_main():
        from ..models import tied_head
        from ..selection_text import extras_text, rule_text

        LOG.info(
            "selected %d ranked modules%s by %s, from the %s%s scan of %s",
            len(sel.modules),
            extras_text(sel, bool(tied_head(result))),
            rule_text(sel),
            "cached " if result.cached else "",
            result.estimator,
            source,
        )
    return sel


def resolve_scan(cfg: TrainConfig, source: str) -> ScanResult:
    """The scores a run selects from: a ``--scan`` file of `spectrum score` (gradient or combined scores, which a
    scan cannot remake, so it is read, never scanned over), else a scan of ``source`` (cached)."""
    from ..conversion import is_gguf
    from ..gradscore import given_scores
    from ..scanning import scan

    return given_scores(cfg.scan) or scan(
        source if is_gguf(source) else cfg.model,
        output=cfg.scan,
        estimator=cfg.estimator,
        resume=True,
        progress=cfg.progress,
    )


def lora_kwargs(cfg: TrainConfig, source: str, model: Any, resumed: bool) -> tuple[dict[str, Any], Any]:
    """LoraConfig arguments: all linear layers, or Spectrum-guided (a PEFT file, or a selection: targets the
    selected modules, rank by score up to --lora-rank); and the selection it came from, if any."""
    if not _lora_uses_selection(cfg):
        if cfg.selection:
            from ..lora import load_lora_config

            return load_lora_config(cfg.selection), None
        return _all_linear(cfg), None
    selection = resolve_selection(cfg, source, resumed)
    return _lora_plan(cfg, selection, model), selection


def _all_linear(cfg: TrainConfig) -> dict[str, Any]:
    return dict(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or 2 * cfg.lora_rank,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _lora_plan(cfg: TrainConfig, selection: Selection, model: Any) -> dict[str, Any]:
    """Adapters on the selected modules, rank by score up to --lora-rank (the plan is logged)."""
    from ..lora import lora_config

    ratio = (cfg.lora_alpha or 2 * cfg.lora_rank) / cfg.lora_rank
    plan = lora_config(selection, max_rank=cfg.lora_rank, alpha_ratio=ratio, dropout=cfg.lora_dropout, model=model)
    LOG.info("%s", plan)
    return plan.config


def apply_lora(model: Any, kwargs: dict[str, Any]) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(**kwargs))


def upcast_trainable(model: Any) -> int:
    """fp32 master copies for trainable low-precision parameters; frozen ones keep their dtype."""
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def _always_trained(model: Any) -> int:
    """Trainable parameters of the embeddings and the head (a tied pair once): what every selection adds."""
    from ..naming import parse

    return count_params(model, lambda n, p: parse(n, len(shape(p))).kind in ("embedding", "lm_head"))[0]
