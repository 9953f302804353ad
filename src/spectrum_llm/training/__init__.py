"""Targeted training: Spectrum, full fine-tuning or LoRA on the same data and schedule.

``train(TrainConfig(...))`` runs the recipe in ``run``: the settings are ``config``, the methods and
``prepare_model`` (a method's setup on a loaded model) ``methods``, the Trainer's arguments and engine
``engine``, the output folder ``outputs``, and the progress bar and quiet libraries ``callbacks``.
"""

from __future__ import annotations

from .config import DEFAULT_LORA_LR, DEFAULT_LR, DEFAULT_SEQ_LEN, PRECISIONS, TrainConfig, TrainSummary
from .methods import (
    METHODS,
    REGISTRY,
    Method,
    Prepared,
    apply_lora,
    lora_kwargs,
    prepare_model,
    resolve_selection,
    upcast_trainable,
)
from .outputs import LORA_CONFIG_FILE, SELECTION_FILE, SUMMARY_FILE
from .run import train

__all__ = [
    "DEFAULT_LORA_LR",
    "DEFAULT_LR",
    "DEFAULT_SEQ_LEN",
    "LORA_CONFIG_FILE",
    "METHODS",
    "PRECISIONS",
    "REGISTRY",
    "SELECTION_FILE",
    "SUMMARY_FILE",
    "Method",
    "Prepared",
    "TrainConfig",
    "TrainSummary",
    "apply_lora",
    "lora_kwargs",
    "prepare_model",
    "resolve_selection",
    "train",
    "upcast_trainable",
]
