"""The settings of a training run and the summary it writes.

Each ``TrainConfig`` field carries its help text (``_setting``): ``cli.options_from`` turns the fields into the
`spectrum train` flags, the YAML keys are the field names, and ``validate`` checks them before anything loads.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import estimators
from ..errors import SpectrumError
from ..select_config import embedding_switches
from ..selection import DEFAULT_TOP_PERCENT
from .lowbit import FROZEN_PRECISIONS
from .methods import LORA_METHODS, METHODS

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_SEQ_LEN = 512
DEFAULT_LR = 2e-5
DEFAULT_LORA_LR = 2e-4


def _shown(value: Any) -> str:
    """A default as help text says it: on/off, 1 (not 1.0), 2e-5 (not 2e-05)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting(default: Any = None, text: str = "", *flags: str, cli: bool = True, factory: Any = None) -> Any:
    """A TrainConfig field with its help text, where ``{default}`` reads the default, so each default is
    stated once. ``cli`` fields are `spectrum train` flags: ``--field-name`` (``--x/--no-x`` for booleans)
    unless ``flags`` names them; the others are set in the YAML file or in Python."""
    meta = {"help": text.format(default=_shown(default)), "flags": flags, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. Field names are the YAML keys and (with dashes) the CLI flags; each
    field's help is the flag's ``--help`` text."""

    model: str = _setting(
        "",
        "Checkpoint folder, a hub id in the local cache, or a GGUF file / "
        "builtin:smollm2-135m / builtin:gemma3-270m (converted once, cached).",
    )
    data: str = _setting("", "Training data: .jsonl/.json/.parquet/.txt or a datasets save_to_disk folder.")
    output_dir: str = _setting(
        "", "Where the model, checkpoints, selection and train_summary.json go.", "--output-dir", "-o"
    )
    method: str = _setting(
        "spectrum",
        "spectrum, full, lora (all linear layers; with --selection/--top-percent "
        "only the selected ones, rank by score) or qlora (lora on a 4-bit NF4 base; needs "
        "spectrum-llm[quant]); default {default}.",
    )
    task: str = _setting(
        "cpt",
        "cpt (text, packed) or sft (chat messages or prompt/completion; loss on answers only); default {default}.",
    )
    text_field: str = _setting("text", "The text column for cpt (default {default}).")
    # spectrum: a selection file, or a scan (file or cached) and a percentage (default DEFAULT_TOP_PERCENT)
    selection: str | None = _setting(
        None,
        "Selection file (.yaml/.json/.txt; for --method lora also a LoraConfig .json from select --format peft).",
        "--selection",
        "-s",
    )
    top_percent: float | None = _setting(
        None,
        "Train this percent of each module type, chosen from a scan (run "
        f"once and cached; default {_shown(DEFAULT_TOP_PERCENT)}, which with the "
        "embeddings is about 60% of SmolLM2-135M's parameters).",
    )
    scan: str | None = _setting(None, "Scan file to select from (written there if absent).")
    estimator: str = _setting(estimators.DEFAULT, "Estimator for a scan run here ({default}).")
    embeddings: str | None = _setting(
        None,
        "train or freeze: the input embeddings and the output head together, besides the selection (default: "
        "train); sets --train-embeddings/--train-lm-head.",
        "--embeddings",
    )
    train_embeddings: bool = _setting(
        True, "Train the input embeddings (and a head tied to them) besides the selection (default: {default})."
    )
    train_lm_head: bool | None = _setting(
        None,
        "Train the output head besides the selection (default: on; a "
        "head tied to the embeddings follows --train-embeddings).",
    )
    frozen_precision: str = _setting(
        "bf16",
        "spectrum: hold the frozen linear modules in bf16 (the model's own dtype), int8 or nf4 "
        "(bitsandbytes, spectrum-llm[quant]); the saved model's frozen tensors are the input's, bit for bit; "
        "default {default}.",
    )
    # lora
    lora_rank: int = _setting(16, "LoRA rank (default {default}).")
    lora_alpha: float | None = _setting(None, "LoRA alpha (default: twice the rank).", cli=False)
    lora_dropout: float = _setting(0.0, "LoRA dropout (default {default}).", cli=False)
    merge: bool | None = _setting(
        None,
        "lora/qlora: also save the merged full model (default: on for lora, off for qlora, whose merge "
        "loads the original 16-bit weights, never the 4-bit ones).",
    )
    # data
    seq_len: int | None = _setting(
        None, f"Sequence length in tokens (default {DEFAULT_SEQ_LEN}, or the model's maximum when smaller)."
    )
    skip_bad_rows: bool = _setting(
        False, "Leave out data rows that cannot be used (no answer, wrong types) instead of stopping."
    )
    packing: bool | None = _setting(None, "Pack examples into full blocks (default: on for cpt, off for sft).")
    eval_split: float = _setting(0.0, "Fraction of the data held out for eval.")
    eval_data: str | None = _setting(None, "Separate eval data file.")
    # schedule
    batch_size: int = _setting(4, "Per-device batch size (default {default}).")
    eval_batch_size: int | None = _setting(None, "Per-device eval batch size (default: the batch size).", cli=False)
    grad_accum: int = _setting(1, "Gradient accumulation steps (default {default}).")
    learning_rate: float | None = _setting(
        None,
        f"Peak learning rate (default {_shown(DEFAULT_LR)}; lora {_shown(DEFAULT_LORA_LR)}).",
        "--lr",
        "--learning-rate",
    )
    lr_scheduler: str = _setting("cosine", "Schedule: {default} (default), linear, constant, ...")
    warmup_steps: float = _setting(0.0, "Warmup steps (a value < 1 is a fraction of the run).")
    weight_decay: float = _setting(
        0.0,
        "AdamW weight decay (default {default}, which keeps the frozen rows of "
        "partially trained tensors bit-identical).",
        cli=False,
    )
    max_grad_norm: float = _setting(1.0, "Gradient clipping norm (default {default}).", cli=False)
    epochs: float = _setting(1.0, "Epochs (default {default}).")
    max_steps: int = _setting(-1, "Stop after this many steps (overrides --epochs).")
    seed: int = _setting(42, "Random seed (default {default}).")
    schedule: str = _setting(
        "static",
        "spectrum: static (train the selection throughout; the default) or dynamic (every --switch-every "
        "steps draw which modules train, as many per type as the selection has).",
    )
    switch_every: int = _setting(50, "dynamic: draw a new set of modules every N steps (default {default}).")
    schedule_weights: str = _setting(
        "score", "dynamic: draw modules weighted by their scores (score, the default) or uniformly (uniform)."
    )
    # runtime
    precision: str = _setting("auto", "auto (the model's dtype), bf16, fp16 or fp32; default {default}.")
    gradient_checkpointing: bool = _setting(False, "Recompute activations to save memory.")
    cache_prefix: bool = _setting(
        False,
        "spectrum: compute the frozen layers below the lowest trained one once and train from their cached output "
        "(one process; the embeddings and those layers frozen; pays off from the second epoch).",
        "--cache-prefix",
    )
    cache_prefix_max_gib: float = _setting(4.0, "Refuse a prefix cache larger than this many GiB (default {default}).")
    logging_steps: int = _setting(10, "Log every N steps (default {default}).")
    eval_steps: int | None = _setting(None, "Evaluate every N steps (default: every save).", cli=False)
    save_steps: int = _setting(
        500, "Save a resumable checkpoint every N steps (default {default}); only the latest is kept."
    )
    save_total_limit: int | None = _setting(1, "Checkpoints kept while training (default {default}).", cli=False)
    keep_checkpoints: bool = _setting(
        False,
        "Keep the last checkpoint (with optimizer state) after a successful "
        "run; by default it is removed and only the model is left.",
        "--keep-checkpoints",
    )
    resume: bool = _setting(
        False, "Continue from the last complete checkpoint in --output-dir (an interrupted save is skipped)."
    )
    overwrite: bool = _setting(
        False,
        "Replace an earlier run in --output-dir: its model, adapter, tokenizer, selection, summary and "
        "checkpoints are removed first; other files stay.",
        "--overwrite",
    )
    allow_other_model: bool = _setting(
        False,
        "Train a selection whose recorded architecture (layer count, module shapes) differs from this model's.",
        "--allow-other-model",
    )
    use_cpu: bool | None = _setting(None, "Train on the CPU (default: when no GPU is present).", cli=False)
    fsdp: bool = _setting(False, "Shard with FSDP2 (under torchrun).")
    fsdp_config: dict[str, Any] | str | None = _setting(
        None, "accelerate's FSDP settings (default: version 2, FSDP2).", cli=False
    )
    deepspeed: str | None = _setting(None, "DeepSpeed config JSON (see examples/).")
    report_to: str = _setting("none", "Where the Trainer reports metrics (default {default}).", cli=False)
    progress: bool = _setting(True, "Show the scan's and the training's progress bars (default: {default}).")
    verbose: bool = _setting(
        False, "Also show the data preparation bars, transformers' messages and every logged metric.", "--verbose"
    )
    extra_args: dict[str, Any] = _setting(
        None, "More transformers TrainingArguments, passed as they are.", cli=False, factory=dict
    )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        """Read a YAML file of these fields (dashes or underscores); ``overrides`` (e.g. CLI flags) win."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise SpectrumError(f"Config file {p} does not exist. Pass --config with a YAML file of train settings.")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SpectrumError(f"{p} is not valid YAML ({e}).") from None
        if not isinstance(data, dict):
            raise SpectrumError(f"{p} must be a mapping of settings (key: value), not {type(data).__name__}.")
        return cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}}, source=str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise SpectrumError(
                f"{source}: unknown setting(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        return cls(**norm)

    def validate(self) -> None:
        for name in ("model", "data", "output_dir"):
            if not getattr(self, name):
                raise SpectrumError(
                    f"No {name.replace('_', '-')} given. Pass --{name.replace('_', '-')} or set "
                    f"`{name}:` in the config file."
                )
        if self.method not in METHODS:
            raise SpectrumError(f"Unknown method {self.method!r}. Use one of: {', '.join(METHODS)}.")
        if self.precision not in PRECISIONS:
            raise SpectrumError(f"Unknown precision {self.precision!r}. Use one of: {', '.join(PRECISIONS)}.")
        if self.method == "full" and (self.selection or self.top_percent is not None):
            raise SpectrumError(
                "--selection/--top-percent apply to --method spectrum (train the selection) and lora "
                "(adapters on the selection), not full. Drop them or pick one of those."
            )
        if self.selection and self.top_percent is not None:
            raise SpectrumError("Give either --selection FILE or --top-percent (which selects from a scan), not both.")
        if self.top_percent is not None and not 0 < self.top_percent <= 100:
            raise SpectrumError(f"--top-percent must be in (0, 100], got {self.top_percent}.")
        embedding_switches(self.embeddings, self.train_embeddings, self.train_lm_head)
        if self.resume and self.overwrite:
            raise SpectrumError("Give either --resume (continue the run in --output-dir) or --overwrite, not both.")
        self._validate_lowbit()
        if self.cache_prefix and self.method != "spectrum":
            raise SpectrumError(f"--cache-prefix needs --method spectrum (a frozen prefix), not {self.method}.")
        if self.fsdp and self.deepspeed:
            raise SpectrumError("Choose one engine: --fsdp or --deepspeed, not both.")
        for name in ("batch_size", "grad_accum", "lora_rank", "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise SpectrumError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        from .dynamic import check_config

        check_config(self)
        if self.max_steps < 1 and self.epochs <= 0:
            raise SpectrumError("Nothing to train: set --epochs above 0 or --max-steps to 1 or more.")

    def _validate_lowbit(self) -> None:
        if self.frozen_precision not in FROZEN_PRECISIONS:
            raise SpectrumError(
                f"Unknown --frozen-precision {self.frozen_precision!r}. Use one of: {', '.join(FROZEN_PRECISIONS)}."
            )
        if self.frozen_precision != "bf16" and self.method != "spectrum":
            raise SpectrumError(
                f"--frozen-precision {self.frozen_precision} applies to --method spectrum (for LoRA on a 4-bit "
                "base use --method qlora). Drop it or use --method spectrum."
            )
        if self.method == "spectrum" and self.frozen_precision != "bf16" and self.resume:
            raise SpectrumError(
                f"--resume is not available with --frozen-precision {self.frozen_precision}: its checkpoints hold "
                "the quantized base. Start again in an empty --output-dir, or resume with --frozen-precision bf16."
            )
        if (self.method == "qlora" or self.frozen_precision != "bf16") and (self.fsdp or self.deepspeed):
            raise SpectrumError(
                "A low-bit base (--method qlora, --frozen-precision int8/nf4) runs on one process or DDP, not "
                "with --fsdp/--deepspeed. Drop those, or train a 16-bit base."
            )

    @property
    def out(self) -> Path:
        """The output folder as a Path: the one place the ``output_dir`` setting (a string, as given) becomes one."""
        return Path(self.output_dir)

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LORA_LR if self.method in LORA_METHODS else DEFAULT_LR


@dataclass
class TrainSummary:
    """What a run did and what it cost; written as ``train_summary.json`` beside the model."""

    method: str
    task: str
    model: str  # as the user named it (builtin:smollm2-135m, a hub id, a path)
    model_path: str  # what was loaded: the folder, after any GGUF conversion
    output_dir: str
    trainable_params: int
    total_params: int
    steps: int
    epochs: float
    train_loss: float | None
    losses: list[float]  # every logged training loss, the last step's included
    loss_steps: list[int]  # the step of each of them
    eval_loss: float | None
    tokens: int
    tokens_per_second: float
    runtime_s: float
    peak_memory_bytes: int
    memory_kind: str
    world_size: int
    engine: str
    dtype: str
    precision: str
    resumed_from: str | None
    selection: str | None
    selected_modules: int | None
    data: dict[str, Any]
    config: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)  # kept in output_dir (--keep-checkpoints)
    frozen_precision: str = "bf16"  # how the frozen linear modules were held: bf16 (the model's dtype), int8, nf4
    lowbit: dict[str, Any] | None = None  # a low-bit base: modules quantized, kept in 16-bit, the optimizer

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable_fraction"] = self.trainable_fraction
        return d
