"""The names the offline commands accept, defined without torch, so that the command line refuses a wrong
one (``--method foo``) before anything slow is imported or loaded; :mod:`models.train.trainer` uses the same."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Method", "Optimizer", "CeOn", "METHODS", "OPTIMIZERS", "CE_ON"]

Method = Literal["zero-shot", "coop", "ebm"]  # see models.train.trainer
Optimizer = Literal["sgd", "adamw"]
CeOn = Literal["edited", "original"]  # logits of the EBM loss's cross-entropy

METHODS: tuple[str, ...] = get_args(Method)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
CE_ON: tuple[str, ...] = get_args(CeOn)
