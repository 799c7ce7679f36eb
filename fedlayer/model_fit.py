"""Fit a model to the data it will see, and check that it does, before any training.

Grayscale images are repeated to the channels of the model's stem (its first Conv2d), images are
resized (`data.resize`), token ids stored as numbers become integers, and an output object (a Hugging
Face `ModelOutput`) is reduced to its logits.
The model's class is swapped for a subclass whose `forward` adapts the input and then runs the
model's own `forward`: the state_dict, so the layers, checkpoints and averaging, stays exactly the
model's, and torch.fx still traces it (the barrier engine's fast path). A wrapper module would prefix
every key; forward hooks would be invisible to the tracer.
"""

from __future__ import annotations

import dataclasses
import typing

import torch
import torch.nn.functional as F
from torch import nn

from fedlayer.errors import ModelError
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE

PROBE_SIZES = (16, 32, 64, 96, 128, 160, 224, 256, 299, 384, 512)
"""Square image sizes tried, smallest first, to tell a user which size a model that rejects the data takes."""
DRY_RUN_BATCH = 2


@dataclasses.dataclass(frozen=True)
class InputFit:
    """How a fitted model adapts what it is given: 0 and False change nothing."""

    channels: int = 0  # repeat 1-channel images to this many channels
    size: int = 0  # resize images to size x size (bilinear, antialiased)
    logits: bool = False  # the model returns an object: take its .logits
    tokens: bool = False  # the inputs are token ids: cast them to integers


class FittedModel(nn.Module):
    """The base of every fitted model's class (`fit_input`); its own class comes next in the MRO."""

    fedlayer_fit: InputFit

    def forward(self, x: torch.Tensor):
        fit = self.fedlayer_fit
        if fit.tokens:
            x = x.long()
        if fit.channels:
            x = x.expand(-1, fit.channels, -1, -1)
        if fit.size:
            x = F.interpolate(x, size=(fit.size, fit.size), mode="bilinear", align_corners=False, antialias=True)
        out = super().forward(x)
        return out.logits if fit.logits else out


_FITTED_CLASSES: dict[type[nn.Module], type[FittedModel]] = {}


def fit_input(model: nn.Module, **changes) -> FittedModel:
    """`model` (the same object) adapting its input as `changes` (fields of `InputFit`) say on top of
    what it already adapts; its parameters, buffers and state_dict keys are untouched."""
    if not isinstance(model, FittedModel):
        cls = type(model)
        if cls not in _FITTED_CLASSES:  # `cls` with FittedModel.forward in front, under the same name
            namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
            _FITTED_CLASSES[cls] = type(cls.__name__, (FittedModel, cls), namespace)
        model.__class__ = _FITTED_CLASSES[cls]
        typing.cast(FittedModel, model).fedlayer_fit = InputFit()
    fitted = typing.cast(FittedModel, model)
    fitted.fedlayer_fit = dataclasses.replace(fitted.fedlayer_fit, **changes)
    return fitted


def fit_to_data(
    model: nn.Module, spec: str, input_shape: tuple[int, ...], num_classes: int, task: str = CLASSIFICATION
) -> nn.Module:
    """`model` fitted to inputs of `input_shape`, checked by a forward pass on blank inputs (token id 0 on a
    language task).

    Raises
    ------
    ModelError
        If the images have channels the stem cannot be fed (only 1-channel data is repeated), the
        model rejects the input size (the message names a size it takes, to set as data.resize), it
        fails on the input otherwise, or its output is not one logit per class: (N, classes), or
        (N, T, vocabulary) on a language task.
    """
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if len(input_shape) == 3 and stem is not None and stem.in_channels != input_shape[0]:
        if input_shape[0] != 1:
            raise ModelError(
                f"model {spec!r} takes {stem.in_channels}-channel images (its first convolution), the data has "
                f"{input_shape[0]} channels; only 1-channel (grayscale) images are repeated to fit a model"
            )
        fit_input(model, channels=stem.in_channels)
    out = _dry_run(model, input_shape, task)
    if isinstance(out, Exception):
        size = _size_it_takes(model, input_shape)
        shape = "x".join(map(str, input_shape))
        if size:
            raise ModelError(
                f"model {spec!r} cannot take the data's {shape} inputs ({type(out).__name__}: {out}); it takes "
                f"{size}x{size} images: resize them with data.resize = {size}"
            )
        raise ModelError(f"model {spec!r} cannot take the data's {shape} inputs: {type(out).__name__}: {out}")
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {spec!r} returns a {type(out).__name__} from forward(), not a tensor of logits")
    if task == LANGUAGE:
        expected, what = (DRY_RUN_BATCH, *input_shape, num_classes), f"a vocabulary of {num_classes} tokens"
        per = "one logit per token of the vocabulary at every position"
    else:
        expected, what, per = (DRY_RUN_BATCH, num_classes), f"{num_classes} classes", "one logit per class"
    if tuple(out.shape) != expected:
        raise ModelError(
            f"model {spec!r} gives outputs of shape {tuple(out.shape)} for {DRY_RUN_BATCH} inputs; the data has "
            f"{what}, so it must give {expected}: {per}"
        )
    return model


def _dry_run(model: nn.Module, input_shape: tuple[int, ...], task: str = CLASSIFICATION) -> object:
    """The model's output on a batch of blank inputs (token ids on a language task), or the exception it raised;
    in eval mode, so nothing (BatchNorm statistics) changes."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros((DRY_RUN_BATCH, *input_shape), dtype=torch.long if task == LANGUAGE else None))
    except Exception as exc:  # any failure means "cannot take this input"; the caller says which
        return exc
    finally:
        model.train(training)


def _size_it_takes(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The smallest of `PROBE_SIZES` above the data's image size that the model takes, if any."""
    if len(input_shape) != 3:
        return None
    channels, height, width = input_shape
    for size in PROBE_SIZES:
        if size > min(height, width) and isinstance(_dry_run(model, (channels, size, size)), torch.Tensor):
            return size
    return None
