"""``--cache-prefix``: compute the frozen prefix once, then train only the layers above it.

When the embeddings and every layer below L are frozen, the hidden states entering layer L depend only on the
example, not on training. The cache runs the prefix once over the training set (no gradients, eval mode, under the
run's autocast) and keeps, per example, the hidden states entering layer L. During training a batch carries each
example's row index (``prefix_index``, a dataset column); hooks swap the embeddings' output for the cached states
and let layers 0..L-1 pass them through untouched, so the forward pass starts at L and the backward pass stops
there. Position ids, the causal mask and the rotary embeddings are still made by the model's own forward from
``input_ids`` and ``attention_mask``, exactly as in an uncached run. Padding positions get zeros: they are masked
out of every real position's attention and carry no loss, so the losses equal the uncached run's.

Shuffling does not matter (rows are found by index). Dropout would: the prefix runs in eval mode, so a model with
dropout in its prefix is refused. Evaluation batches carry no index and run the whole model. One process only.
The cache is keyed by the weights' fingerprint, the data's tokens, the sequence length, L, the attention
implementation and the dtype; it is kept in memory and written under the spectrum cache dir
(``cache.root()/prefix``), so a rerun or a resumed run reads it back. Its size is said before it is built and
a cache over ``--cache-prefix-max-gib`` is refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .. import cache, distributed
from ..backward import decoder_layers, layer_count, lowest_trained_layer
from ..errors import SpectrumError

LOG = logging.getLogger(__name__)

PREFIX_INDEX = "prefix_index"  # the dataset column and batch key: each example's row in the cache


@dataclass
class PrefixPlan:
    """What the cache holds and costs, decided before it is built."""

    layer: int  # the hidden states entering this layer are cached
    layers: int
    examples: int
    tokens: int
    hidden: int
    dtype: Any  # torch dtype of the cached states
    key: str
    path: Path

    @property
    def bytes(self) -> int:
        import torch

        return self.tokens * self.hidden * torch.empty((), dtype=self.dtype).element_size()

    def __str__(self) -> str:
        return (
            f"prefix cache: the hidden states entering layer {self.layer} of {self.layers} for {self.examples:,} "
            f"examples ({self.tokens:,} tokens x {self.hidden}): {self.bytes / 2**20:,.1f} MiB in memory and on disk "
            f"({self.path}); training skips layers 0-{self.layer - 1}"
        )


def refusal(cfg: Any, world_size: int) -> str | None:
    """Why --cache-prefix cannot run with these settings (None: it can)."""
    if cfg.method != "spectrum":
        return f"--cache-prefix needs --method spectrum (a frozen prefix), not {cfg.method}."
    if world_size > 1 or cfg.fsdp or cfg.deepspeed:
        return "--cache-prefix runs in one process without FSDP or DeepSpeed; drop it for distributed runs."
    return None


def plan(cfg: Any, model: Any, dataset: Any, fingerprint: str, dtype: Any) -> PrefixPlan:
    """The cache for ``model`` (frozen by the method) and the training ``dataset``; raises with one line when
    the prefix cannot be cached or the cache would pass the limit."""
    lowest = lowest_trained_layer(model)
    if lowest is None or lowest == 0:
        what = "the embeddings or layer 0 train" if lowest == 0 else "no decoder layer trains"
        raise SpectrumError(
            f"--cache-prefix needs a frozen prefix, but {what}. Select upper layers only with the embeddings "
            "frozen (--no-train-embeddings), or drop --cache-prefix."
        )
    if (dropped := _prefix_dropout(model, lowest)) is not None:
        raise SpectrumError(
            f"--cache-prefix computes the frozen prefix once in eval mode, but {dropped} has dropout, which "
            "would make each pass differ. Set the model's dropout to 0 or drop --cache-prefix."
        )
    lengths = [len(x) for x in dataset["input_ids"]]
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    h = hashlib.sha256()
    h.update(
        f"{fingerprint}|{cfg.seq_len}|{lowest}|{dtype}|{getattr(text, '_attn_implementation', '')}|"
        f"{type(model).__name__}".encode()
    )
    for ids in dataset["input_ids"]:
        h.update(repr(list(ids)).encode())
    key = h.hexdigest()[:32]
    p = PrefixPlan(
        layer=lowest,
        layers=layer_count(model) or lowest,
        examples=len(lengths),
        tokens=sum(lengths),
        hidden=int(text.hidden_size),
        dtype=dtype,
        key=key,
        path=cache.root() / "prefix" / f"{key}.pt",
    )
    limit = cfg.cache_prefix_max_gib * 2**30
    if p.bytes > limit:
        raise SpectrumError(
            f"The prefix cache would take {p.bytes / 2**30:.2f} GiB (over --cache-prefix-max-gib "
            f"{cfg.cache_prefix_max_gib:g}); raise the limit or drop --cache-prefix."
        )
    return p


def _prefix_dropout(model: Any, lowest: int) -> str | None:
    """A module at or below the prefix that drops out (a Dropout with p > 0, or attention dropout)."""
    import torch

    layers = decoder_layers(model)
    below = [layers[i] for i in range(lowest)] if layers is not None else []
    emb = model.get_input_embeddings()
    for part in [emb, *below]:
        for name, m in part.named_modules():
            if isinstance(m, torch.nn.Dropout) and m.p > 0:
                return name or type(m).__name__
            if float(getattr(m, "attention_dropout", 0.0) or 0.0) > 0:
                return f"{type(m).__name__} (attention_dropout)"
    return None


def setup(cfg: Any, model: Any, dataset: Any, args: Any, pad_token_id: int) -> tuple[Any, PrefixCache]:
    """The training set with row indices and the callback that builds and serves the cache; says its cost first."""
    import torch

    from ..checkpoint import open_checkpoint
    from ..data import PadCollator

    if (why := refusal(cfg, args.world_size)) is not None:
        raise SpectrumError(why)
    autocast = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    dtype = autocast or model.get_input_embeddings().weight.dtype
    prefix = plan(cfg, model, dataset, open_checkpoint(cfg.model).fingerprint(), dtype)
    if distributed.is_main():
        LOG.info("%s", prefix)
    return with_index(dataset), PrefixCache(prefix, dataset, PadCollator(pad_token_id), autocast)


def with_index(dataset: Any) -> Any:
    """The training set with each example's row index, which the collator passes on to the model."""
    return dataset.add_column(PREFIX_INDEX, list(range(len(dataset))))


class _Stop(Exception):
    """Raised once layer L's input is captured, so the rest of the model does not run."""


class PrefixCache(TrainerCallback):
    """Builds (or reads back) the cache when training begins, on the device the Trainer put the model on, and
    serves cached batches until training ends."""

    def __init__(self, prefix: PrefixPlan, dataset: Any, collate: Any, autocast: Any | None):
        self.plan = prefix
        self.dataset = dataset
        self.collate = collate
        self.autocast = autocast  # the run's autocast dtype, or None
        self.states: Any = None  # [tokens, hidden], the examples one after another
        self.offsets: Any = None  # [examples + 1]
        self.rows: Any = None  # the current batch's example indices, while a cached batch runs
        self._handles: list[Any] = []
        self._patched: list[Any] = []

    # ------------------------------------------------------------------ build
    def build(self, model: Any) -> None:
        import torch

        if self.plan.path.is_file():
            try:
                saved = torch.load(self.plan.path, map_location="cpu", weights_only=True)
                self.states, self.offsets = saved["states"], saved["offsets"]
                if distributed.is_main():
                    LOG.info("prefix cache: read back from %s", self.plan.path)
                return
            except (OSError, RuntimeError, KeyError) as e:
                LOG.warning("prefix cache at %s is unreadable (%s); computing it again", self.plan.path, e)
        self.states, self.offsets = self._compute(model)
        self._save()

    def _compute(self, model: Any) -> tuple[Any, Any]:
        import torch

        layers = decoder_layers(model)
        device = next(model.parameters()).device
        captured: list[Any] = []

        def grab(module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = layers[self.plan.layer].register_forward_pre_hook(grab, with_kwargs=True)
        was_training = model.training
        model.eval()
        chunks: list[Any] = []
        lengths: list[int] = []
        batch_size = 8
        try:
            with torch.no_grad():
                for start in range(0, len(self.dataset), batch_size):
                    rows = [self.dataset[i] for i in range(start, min(start + batch_size, len(self.dataset)))]
                    batch = self.collate(rows)
                    with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
                        try:
                            model(
                                input_ids=batch["input_ids"].to(device),
                                attention_mask=batch["attention_mask"].to(device),
                                use_cache=False,
                            )
                        except _Stop:
                            pass
                    states = captured.pop().to("cpu", self.plan.dtype)
                    for j, row in enumerate(rows):
                        n = len(row["input_ids"])
                        chunks.append(states[j, :n])
                        lengths.append(n)
        finally:
            handle.remove()
            model.train(was_training)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(lengths).cumsum(0)
        return torch.cat(chunks).contiguous(), offsets

    def _save(self) -> None:
        import torch

        path = self.plan.path
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"states": self.states, "offsets": self.offsets}, tmp)
            tmp.replace(path)
        except OSError as e:  # the disk copy is a convenience: the run goes on from memory
            tmp.unlink(missing_ok=True)
            LOG.warning("prefix cache not written to %s (%s); it is kept in memory only", path, e)

    # ------------------------------------------------------------------ serve
    def install(self, model: Any) -> None:
        """Hooks that start cached batches at layer L (batches without ``prefix_index`` run as usual)."""
        emb = model.get_input_embeddings()
        layers = decoder_layers(model)
        self._handles = [
            model.register_forward_pre_hook(self._take_rows, with_kwargs=True),
            model.register_forward_hook(self._done, always_call=True),
            emb.register_forward_hook(self._embed),
        ]
        for i in range(self.plan.layer):
            layer = layers[i]
            layer.forward = self._skip(layer.forward)
            self._patched.append(layer)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for layer in self._patched:
            del layer.forward  # back to the class's forward
        self._handles, self._patched, self.rows = [], [], None

    def _take_rows(self, module, args, kwargs):
        rows = kwargs.pop(PREFIX_INDEX, None)
        self.rows = rows
        return args, kwargs

    def _done(self, module, args, output):
        self.rows = None

    def _embed(self, module, args, output):
        if self.rows is None:
            return output
        import torch

        batch, length = output.shape[:2]
        out = torch.zeros(batch, length, self.plan.hidden, dtype=self.states.dtype)
        for j, i in enumerate(self.rows.tolist()):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            n = min(b - a, length)
            out[j, :n] = self.states[a : a + n]
        return out.to(output.device)

    def _skip(self, forward: Any) -> Any:
        def forward_or_skip(hidden_states, *args, **kwargs):
            if self.rows is not None:
                return hidden_states
            return forward(hidden_states, *args, **kwargs)

        return forward_or_skip

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, **kw):
        if self.states is None:
            self.build(model)
        self.install(model)

    def on_train_end(self, args, state, control, model=None, **kw):
        self.remove()
