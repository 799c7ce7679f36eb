"""The two task kinds fedlayer trains and measures, and the one place predictions are matched to labels.

Classification gives one label per input and the model one row of logits per input. Language
modelling gives one label per position (the next token) and the model one row of logits per position.
Losses, error rates and barriers are means over predictions, so both kinds flow through the same
code once `flat_predictions` has lined them up.
"""

from __future__ import annotations

import math

import torch

from fedlayer.errors import ModelError

CLASSIFICATION = "classification"
LANGUAGE = "language"
TASKS = (CLASSIFICATION, LANGUAGE)
"""Task kinds: "classification" (labels (N,), logits (N, classes)) and "language" (labels (N, T),
logits (N, T, vocab))."""

PREDICTION_UNITS = {CLASSIFICATION: "sample", LANGUAGE: "token"}
"""What one prediction is, by task: losses and error rates are means over these."""


def perplexity(loss: float) -> float:
    """exp(loss), a language model's perplexity per token: inf where exp overflows a float."""
    return math.exp(loss) if loss < _LARGEST_EXP else math.inf


_LARGEST_EXP = 709.0  # exp(709.78...) is the largest float


def task_of_labels(labels: torch.Tensor) -> str:
    """The task kind integer labels of this shape belong to: (N,) classification, (N, T) language."""
    return LANGUAGE if labels.dim() == 2 else CLASSIFICATION


def flat_predictions(logits: object, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) as (predictions, classes) and (predictions,): one row per prediction.

    Raises
    ------
    ModelError
        If the model's output does not give one row of logits per label: (N, classes) for labels (N,),
        (N, T, vocab) for labels (N, T).
    """
    if isinstance(logits, torch.Tensor) and logits.dim() == labels.dim() + 1 and logits.shape[:-1] == labels.shape:
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if labels.dim() == 2:
        expected = f"({labels.shape[0]}, {labels.shape[1]}, vocab) logits, one row per position (a language task)"
    else:
        expected = f"({labels.shape[0]}, classes) logits, one row per input (a classification task)"
    raise ModelError(f"the model must return {expected}, got {shape}")
