"""The training recipe. ``train(config)`` runs these steps in order, each a function below:

resolve the model and the output folder -> TrainingArguments -> setup data -> setup selection -> setup model ->
setup method (``methods.prepare_model``) -> setup trainer -> train -> save -> summarise.

The model loads in its own dtype; only the method's parameters train, upcast to fp32 master copies, and the
forward pass runs under autocast. ``transformers.Trainer`` runs the loop, so DDP, FSDP2 and DeepSpeed come from
``torchrun`` / ``accelerate launch`` as usual. The final model is written in the input's dtypes, so every frozen
tensor is bit-identical to the input, with the tokenizer, the selection and ``train_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import distributed
from ..data import DataConfig, PadCollator, build_datasets, check_seq_len
from ..errors import require
from ..models import tied_aliases
from ..selection import Selection
from . import engine, interrupts, lowbit, outputs
from .config import DEFAULT_SEQ_LEN, TrainConfig, TrainSummary
from .methods import LORA_METHODS, REGISTRY, Prepared, prepare_model, resolve_selection

LOG = logging.getLogger(__name__)


@dataclass
class Job:
    """One run's settings, resolved once, before anything big loads."""

    cfg: TrainConfig  # model: the folder to load (a GGUF file converted); seq_len: resolved
    source: str  # the model as the user named it (builtin:smollm2-135m, a hub id, a path)
    resume_from: str | None  # the checkpoint to continue from (--resume)
    max_positions: int | None  # the model's maximum sequence length, if its config says
    dtype: Any  # the checkpoint's dtype
    precision: str  # bf16, fp16 or fp32 (auto resolved)

    @property
    def resumed(self) -> bool:
        return self.resume_from is not None


def train(config: TrainConfig, callbacks: list | None = None) -> TrainSummary:
    """Run one training job and return its summary (also written to ``output_dir/train_summary.json``).

    ``callbacks`` are ``transformers.TrainerCallback`` objects added to the Trainer. An output folder this
    run created is removed again when the run fails before it saved a checkpoint or the model.
    """
    method = REGISTRY.get(config.method)
    require("transformers", "accelerate", "datasets", *(method.packages if method else ()), extra="train")
    config.validate()
    engine.check_engine(config)
    from .callbacks import KeepBackwardShort, StopOnSignal, quiet

    stopper = interrupts.SignalState()
    trainer = None
    with outputs.removed_on_failure(config.out), quiet(config.verbose), interrupts.signals_handled(stopper):
        try:
            job = resolve(config)
            lowbit.check_job(job.cfg, job.source)
            args = engine.training_args(job.cfg, job.precision)  # sets up the distributed state first
            if distributed.is_main():
                LOG.debug("settings: %s", json.dumps(_jsonable(dataclasses.asdict(job.cfg))))
            tokenizer = load_tokenizer(job)
            train_ds, eval_ds, data_summary = setup_data(job, tokenizer, args)
            selection = setup_selection(job)
            engine.check_selection(job.cfg, selection)
            engine.start_engine(args)  # before the model: ZeRO-3 builds it partitioned
            model, orig_dtypes = setup_model(job)
            prepared = setup_method(job, model, selection, args)
            own: list[Any] = [StopOnSignal(stopper)]
            if job.cfg.method == "spectrum":
                own.append(KeepBackwardShort())
            if job.cfg.cache_prefix:
                from .prefix_cache import setup as setup_prefix_cache

                train_ds, cached = setup_prefix_cache(job.cfg, prepared.model, train_ds, args, tokenizer.pad_token_id)
                own.append(cached)
            trainer, bar = setup_trainer(
                job, args, prepared.model, train_ds, eval_ds, tokenizer, [*own, *(callbacks or [])]
            )
            if job.cfg.schedule == "dynamic":
                from .dynamic import attach

                attach(trainer, job, prepared)
            result, runtime = run(trainer, job, bar, stopper)
        except KeyboardInterrupt:
            raise _interrupted(stopper.signum or signal.SIGINT, config.out, trainer) from None
        eval_loss = float(trainer.evaluate()["eval_loss"]) if eval_ds is not None else None
        outputs.save_outputs(
            trainer,
            tokenizer,
            job.cfg.out,
            orig_dtypes,
            lora=job.cfg.method in LORA_METHODS,
            keep=job.cfg.keep_checkpoints,
            merge=job.cfg.merge if job.cfg.merge is not None else job.cfg.method == "lora",
            frozen_from=job.cfg.model if lowbit.uses_lowbit(job.cfg) else None,
        )
        return summarise(job, prepared, trainer, result, runtime, eval_loss, data_summary)


def _interrupted(signum: int, out: Path, trainer: Any) -> interrupts.TrainingInterrupted:
    state = trainer.state if trainer is not None else None
    return interrupts.TrainingInterrupted(
        signum,
        out,
        state.global_step if state is not None and state.max_steps else None,
        state.max_steps if state is not None else None,
        interrupts.last_complete_checkpoint(out),
    )


def resolve(config: TrainConfig) -> Job:
    """The model folder to load (a GGUF file converted once, cached), the output folder checked, the checkpoint
    to resume, the sequence length and the precision."""
    model = model_folder(config.model)
    resume_from = outputs.check_output_dir(config.out, model, config.resume, config.overwrite)
    model_cfg = _load_model_config(model)
    max_positions = getattr(model_cfg, "max_position_embeddings", None)
    dtype = _model_dtype(model_cfg)
    return Job(
        cfg=dataclasses.replace(config, model=model, seq_len=resolved_seq_len(config.seq_len, max_positions, model)),
        source=config.model,
        resume_from=resume_from,
        max_positions=max_positions,
        dtype=dtype,
        precision=_precision(config.precision, dtype),
    )


def model_folder(model: str) -> str:
    """The folder to load ``model`` from: itself, or for a GGUF file its converted folder (converted once, cached).
    ``gradscore`` loads models through this too."""
    from ..checkpoint import resolve as resolve_model
    from ..conversion import cached_folder, gguf_to_folder, is_gguf

    if is_gguf(model):
        if distributed.is_main() and cached_folder(model) is None:
            LOG.info("converting %s into a transformers folder (once; it is cached)", model)
        return str(gguf_to_folder(model))
    return str(resolve_model(model))  # a folder, or a hub id in the offline cache: else one error line


def load_tokenizer(job: Job) -> Any:
    return tokenizer_for(job.cfg.model)


def tokenizer_for(model: str) -> Any:
    """The tokenizer of a model folder, with the end-of-sequence token as padding when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def setup_data(job: Job, tokenizer: Any, args: Any) -> tuple[Any, Any, Any]:
    """The train and eval datasets (tokenized, packed or not) and their summary; prepared by the main process
    first, so the others read its cache."""
    cfg = job.cfg
    assert cfg.seq_len is not None  # resolved
    dcfg = DataConfig(
        path=cfg.data,
        task=cfg.task,
        seq_len=cfg.seq_len,
        text_field=cfg.text_field,
        packing=cfg.packing,
        eval_split=cfg.eval_split,
        eval_path=cfg.eval_data,
        seed=cfg.seed,
        skip_bad_rows=cfg.skip_bad_rows,
    )
    with args.main_process_first(desc="prepare data"):
        return build_datasets(dcfg, tokenizer, job.max_positions)


def setup_selection(job: Job) -> Selection | None:
    """The selection the method trains from (a file, the resumed run's, or a scan of the source), before the
    model loads; None for a method without one."""
    if not REGISTRY[job.cfg.method].uses_selection(job.cfg):
        return None
    return resolve_selection(job.cfg, job.source, resumed=job.resumed)


def setup_model(job: Job) -> tuple[Any, dict[str, Any]]:
    """The model in its own dtypes, and those dtypes by state-dict name (the final model is saved in them)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job.cfg.model, dtype="auto")
    return model, {k: v.dtype for k, v in model.state_dict().items()}


def setup_method(job: Job, model: Any, selection: Selection | None, args: Any) -> Prepared:
    """Freeze or add adapters, fp32 master copies (unless fp32 or DeepSpeed, which keeps its own); log what trains
    and write the selection (or LoRA config) to the output folder."""
    prepared = prepare_model(
        job.cfg,
        model,
        selection,
        source=job.source,
        resumed=job.resumed,
        upcast=job.precision != "fp32" and not engine.keeps_own_master_copies(args),
    )
    engine.reset_peak_memory()
    if distributed.is_main():
        _log_setup(job, prepared, args.world_size)
        if prepared.lora_config is not None:
            outputs.write_lora_config(job.cfg.out, prepared.lora_config)
        if prepared.selection is not None:
            outputs.write_selection(job.cfg.out, prepared.selection)
    return prepared


def _log_setup(job: Job, prepared: Prepared, world_size: int) -> None:
    from ..backward import layer_count, trainable_names
    from ..selection_text import backward_text, embedding_note

    trainable, total = prepared.trainable_params, prepared.total_params
    backward = (
        "; " + backward_text(trainable_names(prepared.model), layer_count(prepared.model))
        if prepared.frozen is not None
        else ""
    )
    LOG.info(
        "%s: training %s of %s parameters (%.1f%%), %s, %d process%s%s",
        job.cfg.method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
        job.precision,
        world_size,
        "es" if world_size > 1 else "",
        backward,
    )
    if prepared.selection is None:
        return
    tied = bool(tied_aliases(prepared.model))  # a causal LM's one shared tensor is a head tied to the embeddings
    flags = (
        "select again with --no-train-embeddings --no-train-lm-head"
        if job.cfg.selection
        else "pass --no-train-embeddings" + ("" if tied else " --no-train-lm-head")
    )
    note = embedding_note(trainable, prepared.always_trained, flags)
    if note:
        LOG.info("%s", note)


def setup_trainer(
    job: Job, args: Any, model: Any, train_ds: Any, eval_ds: Any, tokenizer: Any, callbacks: list | None
) -> tuple[Any, Any]:
    """The Trainer with our progress bar (unless --verbose keeps its own) and the caller's callbacks; says when
    the engine that runs is not the one asked for."""
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    from .callbacks import Finish, ProgressBar

    bar = ProgressBar() if job.cfg.progress and not job.cfg.verbose else None
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[Finish(job.cfg.keep_checkpoints), *([bar] if bar else []), *(callbacks or [])],
    )
    if not job.cfg.verbose:
        trainer.remove_callback(ProgressCallback)
    engine.warn_engine(job.cfg, engine.engine_name(trainer))
    return trainer, bar


def run(trainer: Any, job: Job, bar: Any, stopper: Any = None) -> tuple[Any, float]:
    """Train (from the checkpoint to resume, if any); the Trainer's result and the seconds it took. A run that a
    signal stopped before its last step raises TrainingInterrupted (after the checkpoint of the step it reached)."""
    t0 = time.monotonic()
    try:
        result = trainer.train(resume_from_checkpoint=job.resume_from)
    finally:
        if bar is not None:
            bar.close()
    if stopper is not None and stopper.signum is not None and trainer.state.global_step < trainer.state.max_steps:
        raise _interrupted(stopper.signum, job.cfg.out, trainer)
    return result, time.monotonic() - t0


def summarise(
    job: Job, prepared: Prepared, trainer: Any, result: Any, runtime: float, eval_loss: float | None, data: Any
) -> TrainSummary:
    """The run's summary, written as train_summary.json and said in one line (main process)."""
    cfg, state = job.cfg, trainer.state
    tokens = int(state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0))
    peak, kind = engine.peak_memory()
    logged = [h for h in state.log_history if "loss" in h]
    selection = prepared.selection
    summary = TrainSummary(
        method=cfg.method,
        task=cfg.task,
        model=job.source,
        model_path=_where(cfg.model),
        output_dir=cfg.output_dir,
        trainable_params=prepared.trainable_params,
        total_params=prepared.total_params,
        steps=int(state.global_step),
        epochs=float(state.epoch or 0.0),
        train_loss=float(result.training_loss)
        if result.training_loss is not None and math.isfinite(result.training_loss)
        else None,
        losses=[float(h["loss"]) for h in logged],
        loss_steps=[int(h.get("step", 0)) for h in logged],
        eval_loss=eval_loss,
        tokens=tokens,
        tokens_per_second=tokens / runtime if runtime else 0.0,
        runtime_s=runtime,
        peak_memory_bytes=peak,
        memory_kind=kind,
        world_size=trainer.args.world_size,
        engine=engine.engine_name(trainer),
        dtype=str(job.dtype).removeprefix("torch."),
        precision=job.precision,
        resumed_from=job.resume_from,
        selection=str(job.cfg.out / outputs.SELECTION_FILE) if selection is not None else None,
        selected_modules=len(selection.modules) if selection is not None else None,
        data=dataclasses.asdict(data),
        config=_jsonable(dataclasses.asdict(_resolved(job, prepared.model))),
        checkpoints=outputs.kept_checkpoints(job.cfg.out) if cfg.keep_checkpoints else [],
        frozen_precision="nf4" if cfg.method == "qlora" else cfg.frozen_precision,
        lowbit=prepared.lowbit.to_json() if prepared.lowbit is not None else None,
    )
    if distributed.is_main():
        outputs.write_summary(job.cfg.out, summary)
        LOG.info(
            "done: %d steps, %s%s, %s tokens/s, peak %s memory %s, %.0f s -> %s",
            summary.steps,
            f"loss {summary.losses[-1]:.4g}" if summary.losses else "no loss logged",
            f", eval loss {eval_loss:.4g}" if eval_loss is not None else "",
            _fmt_rate(summary.tokens_per_second),
            kind,
            _fmt_bytes(peak),
            summary.runtime_s,
            cfg.output_dir,
        )
    return summary


# ------------------------------------------------------------------------------------------ resolving


def resolved_seq_len(asked: int | None, max_positions: int | None, model: str) -> int:
    """The sequence length asked for, or the default cut to the model's maximum (said in one line)."""
    if asked is not None:
        check_seq_len(asked, max_positions, model)
        return asked
    if max_positions and max_positions < DEFAULT_SEQ_LEN:
        if distributed.is_main():
            LOG.info("seq-len %d: the model's maximum (the default is %d)", max_positions, DEFAULT_SEQ_LEN)
        return max_positions
    return DEFAULT_SEQ_LEN


def _load_model_config(model: str) -> Any:
    """The model's config, or one line of our own naming what is wrong with ``--model`` (as scan words it)."""
    from ..model_config import load_model_config

    return load_model_config(model, folder_only=True)[0]


def _model_dtype(model_cfg: Any) -> Any:
    import torch

    dt = getattr(model_cfg, "dtype", None) or getattr(model_cfg, "torch_dtype", None) or torch.float32
    return getattr(torch, dt) if isinstance(dt, str) else dt


def _precision(asked: str, dtype: Any) -> str:
    import torch

    if asked != "auto":
        return asked
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# ------------------------------------------------------------------------------------------ summary


def _resolved(job: Job, model: Any) -> TrainConfig:
    """The settings as the run used them: the model as named, and the defaults left open (None) filled in."""
    cfg = job.cfg
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return dataclasses.replace(
        cfg,
        model=job.source,
        learning_rate=cfg.lr,
        packing=cfg.packing if cfg.packing is not None else cfg.task == "cpt",
        train_lm_head=bool(head is not None and head.weight.requires_grad),
    )


def _where(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.exists() else model


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(d, allow_nan=False)
        return d
    except (TypeError, ValueError):
        return {
            k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)) for k, v in d.items()
        }


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
