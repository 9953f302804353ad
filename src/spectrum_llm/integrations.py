"""Apply a selection inside Hugging Face ``Trainer`` / TRL ``SFTTrainer`` runs.

The one-line way is ``spectrum_llm.freeze(model, "sel.yaml")`` before building the trainer: the
Trainer builds its optimizer inside ``train()`` from the parameters that require gradients, so
freezing first is enough. ``SpectrumCallback`` does the same from the trainer's side, for code that
builds the model elsewhere (``SFTTrainer(model="path", ...)``): it freezes in ``on_init_end``, which
runs at the end of ``Trainer.__init__``, before any optimizer exists. Added later with
``trainer.add_callback``, it freezes at ``on_train_begin`` instead: the optimizer then already holds
every tensor, but frozen tensors never get a gradient, so they are never updated and get no
optimizer state.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .errors import SpectrumError, require
from .freezing import FreezeSummary, freeze
from .selection import Selection, load_selection

require("transformers", extra="train")
from transformers import TrainerCallback  # noqa: E402

LOG = logging.getLogger(__name__)


class SpectrumCallback(TrainerCallback):
    """``Trainer(..., callbacks=[SpectrumCallback("sel.yaml")])`` trains only the selection."""

    def __init__(self, selection: Selection | str | os.PathLike | list[str], *, strict: bool = True):
        self.selection = load_selection(selection)
        self.strict = strict
        self.summary: FreezeSummary | None = None

    def _apply(self, model: Any) -> None:
        if self.summary is not None:
            return
        if model is None:
            raise SpectrumError(
                "SpectrumCallback got no model from the Trainer; call spectrum_llm.freeze(model, "
                "selection) yourself before building the trainer."
            )
        self.summary = freeze(_unwrap(model), self.selection, strict=self.strict)
        LOG.info("spectrum: %s", self.summary)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._apply(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(model)


def _unwrap(model: Any) -> Any:
    """The plain model under a DDP/compile wrapper, whose parameter names match the selection."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or inner is model:
            return model
        model = inner
