"""The output folder of a run: checked before anything loads, removed again when a run fails before it saved
anything, and at the end holding the model (in the input's dtypes) or the adapter, the tokenizer, the selection
and ``train_summary.json``; the checkpoints are removed unless kept."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import distributed
from ..errors import SpectrumError
from ..files import check_writable, write_json_atomic, write_text_atomic
from ..models import tied_aliases
from . import interrupts

SUMMARY_FILE = "train_summary.json"
SELECTION_FILE = "selection.json"  # the selection a run trained from (also written as selection.yaml)
LORA_CONFIG_FILE = "lora_config.json"
LOG = logging.getLogger(__name__)


def _model_files_size(model: str) -> int:
    p = Path(model)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin") and f.is_file())


# What a run writes into its output folder: the files and folders --overwrite removes (and nothing else).
RUN_FILES = (
    SUMMARY_FILE,
    SELECTION_FILE,
    "selection.yaml",
    LORA_CONFIG_FILE,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
RUN_GLOBS = ("model-*-of-*.safetensors", "checkpoint-*", "adapter")
_RUN_MARKS = (SUMMARY_FILE, SELECTION_FILE, LORA_CONFIG_FILE, "config.json", "adapter")


def earlier_run(out: Path) -> list[str]:
    """What an earlier run left in ``out`` (its summary, model, adapter, selection or checkpoints), by name."""
    if not out.is_dir():
        return []
    found = [m for m in _RUN_MARKS if (out / m).exists()]
    found += sorted(p.name for p in out.glob("*.safetensors"))
    return found + [p.name for p in interrupts.checkpoints(out)]


def clear_run(out: Path) -> list[str]:
    """Remove what a run writes (``RUN_FILES``, ``RUN_GLOBS``) from ``out``; other files stay. The names removed."""
    gone = []
    for p in [*(out / f for f in RUN_FILES), *(q for g in RUN_GLOBS for q in out.glob(g))]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        gone.append(p.name)
    return gone


def check_output_dir(out: Path, model: str, resume: bool, overwrite: bool = False) -> str | None:
    """Check that the output folder can be written and has room for ``model``, without creating it (a run that
    fails before training leaves nothing behind); return the checkpoint to resume. A folder holding an earlier
    run is refused unless ``resume`` (continue its last complete checkpoint) or ``overwrite`` (clear it first,
    main process). Safe on every rank at once."""
    check_writable(out, folder=True)
    need = 2 * _model_files_size(model)  # the final model plus at least one checkpoint
    free = shutil.disk_usage(next(p for p in (out, *out.parents) if p.is_dir())).free
    if need and free < need:
        raise SpectrumError(
            f"Not enough space in {out}: {free / 2**30:.2f} GiB free, the model and one checkpoint "
            f"need about {need / 2**30:.2f} GiB. Free space or choose another --output-dir."
        )
    earlier = earlier_run(out)
    if overwrite:
        if earlier and distributed.is_main():
            gone = clear_run(out)
            LOG.info("--overwrite: removed the earlier run in %s (%s)", out, ", ".join(gone))
        return None
    if resume:
        last = interrupts.checkpoint_to_resume(out)
        if last is None and earlier:
            raise SpectrumError(
                f"{out} holds an earlier run ({', '.join(earlier[:4])}) but no complete checkpoint to resume. "
                "Pass --overwrite to train again there, or choose another --output-dir."
            )
        return str(last) if last is not None else None
    if earlier:
        ckpts = [n for n in earlier if n.startswith("checkpoint-")]
        if ckpts:
            raise SpectrumError(
                f"{out} already holds checkpoints of an {'earlier' if SUMMARY_FILE in earlier else 'unfinished'} "
                f"run ({ckpts[-1]}). Pass --resume to continue it, --overwrite to start again there, or choose an "
                "empty --output-dir."
            )
        raise SpectrumError(
            f"{out} already holds a run ({', '.join(earlier[:4])}). Pass --overwrite to replace it (only the "
            "files a run writes are removed), or choose another --output-dir."
        )
    return None


@contextlib.contextmanager
def removed_on_failure(out: Path) -> Iterator[None]:
    """Remove an output folder this run created when the run fails before it saved a checkpoint or the model."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if (
            not existed
            and distributed.is_main()
            and out.is_dir()
            and not any(out.glob("checkpoint-*"))
            and not any(out.glob("*.safetensors"))
        ):
            shutil.rmtree(out, ignore_errors=True)
        raise


def write_selection(out: Path, selection: Any) -> None:
    """The selection a run trains from, as selection.json and selection.yaml (main process only)."""
    from ..exports import write_selection as write_yaml

    write_json_atomic(out / SELECTION_FILE, selection.to_json())
    write_yaml(selection, out / "selection.yaml")


def write_lora_config(out: Path, kwargs: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / LORA_CONFIG_FILE, json.dumps(kwargs, indent=2) + "\n")


def write_summary(out: Path, summary: Any) -> None:
    write_json_atomic(out / SUMMARY_FILE, summary.to_json())


def _in_dtypes(sd: dict[str, Any], orig_dtypes: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to(orig_dtypes[k]) if k in orig_dtypes and v.dtype != orig_dtypes[k] else v for k, v in sd.items()}


def _final_state_dict(trainer: Any, orig_dtypes: dict[str, Any]) -> dict[str, Any]:
    """The full state dict (gathered across ranks by accelerate) in the input's dtypes; empty off rank 0."""
    sd = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    if not distributed.is_main() or sd is None:
        return {}
    return _in_dtypes(sd, orig_dtypes)


def _without_tied(model: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """Drop the aliases of tied weights (``lm_head.weight`` when it is the embedding), as the input stored them."""
    aliases = tied_aliases(model)
    return {k: v for k, v in sd.items() if k not in aliases}


def save_model(
    trainer: Any,
    out: Path,
    orig_dtypes: dict[str, Any],
    lora: bool,
    *,
    merge: bool = True,
    frozen_from: str | None = None,
) -> None:
    """The trained model in the input's dtypes (so frozen tensors are bit-identical); for lora the adapter in
    ``adapter/`` and, with ``merge``, the merged model, unless a sharded run keeps only the adapter.

    ``frozen_from`` (a low-bit frozen base, which holds only an approximation of the frozen weights): the folder
    whose safetensors the frozen tensors are copied from, bit for bit; for a lora run (QLoRA), the original
    weights the adapter is merged into."""
    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    if lora:
        trainer.save_model(str(out / "adapter"))
        if not merge or acc.num_processes > 1 and (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled):
            return  # a sharded LoRA run keeps the adapter; merge it with `peft` on one device
        if distributed.is_main() and frozen_from is not None:
            from .lowbit import merge_from_original

            merge_from_original(out / "adapter", frozen_from, out, orig_dtypes)
        elif distributed.is_main():
            merged = model.merge_and_unload()
            sd = _in_dtypes(merged.state_dict(), orig_dtypes)
            merged.save_pretrained(out, state_dict=_without_tied(merged, sd))
            record_dtype(out, sd)
        return
    if frozen_from is not None:
        if distributed.is_main():
            model.save_pretrained(out, state_dict=_without_tied(model, _from_input(model, frozen_from, orig_dtypes)))
        return
    sd = _final_state_dict(trainer, orig_dtypes)
    if distributed.is_main():
        model.save_pretrained(out, state_dict=_without_tied(model, sd))
        record_dtype(out, sd)


def record_dtype(out: Path, sd: dict[str, Any]) -> None:
    """State in config.json the dtype the saved tensors are in (the most parameters' floating dtype), so that
    ``from_pretrained(out, dtype="auto")`` loads them as saved: save_pretrained writes the dtype of the model's
    first parameter, which is an fp32 master copy when that parameter trained."""
    counts: dict[str, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            name = str(v.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + v.numel()
    path = out / "config.json"
    if not counts or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["dtype"] = max(counts, key=lambda k: counts[k])
    config.pop("torch_dtype", None)
    write_json_atomic(path, config)


def _from_input(model: Any, model_dir: str, orig_dtypes: dict[str, Any]) -> dict[str, Any]:
    """Every tensor of the input's safetensors as stored there, the trained ones replaced by their new values."""
    from safetensors import safe_open

    from .lowbit import input_files

    sd: dict[str, Any] = {}
    for f in input_files(model_dir):
        with safe_open(str(f), framework="pt") as h:
            sd.update({k: h.get_tensor(k) for k in h.keys()})
    for name, p in model.named_parameters():
        if p.requires_grad:
            sd[name] = p.detach().to(sd[name].dtype if name in sd else orig_dtypes.get(name, p.dtype)).cpu()
    return sd


def save_outputs(
    trainer: Any,
    tokenizer: Any,
    out: Path,
    orig_dtypes: dict[str, Any],
    *,
    lora: bool,
    keep: bool,
    merge: bool = True,
    frozen_from: str | None = None,
) -> None:
    """The model (or adapter), then the tokenizer; the checkpoints removed unless ``keep``."""
    save_model(trainer, out, orig_dtypes, lora, merge=merge, frozen_from=frozen_from)
    trainer.accelerator.wait_for_everyone()
    if distributed.is_main():
        tokenizer.save_pretrained(out)
        if not keep:
            remove_checkpoints(out)


def remove_checkpoints(out: Path) -> None:
    for ckpt in out.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt, ignore_errors=True)


def kept_checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))
