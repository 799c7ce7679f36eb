"""Models named by a spec rather than the built-in registry: torchvision builders, Hugging Face
transformers (`fedlayer.hf_models`) and user callables.

`spec_kind` reads a name without importing anything (config validation uses it); `build_spec_model`
builds, fits the model to the data (`fedlayer.model_fit`) and checks it, so a model that cannot take
the data fails before any training. On a language task (`fedlayer.task_kinds`) the data is windows of
token ids and the model returns next-token logits at every position: torchvision's classifiers do not
fit it, Hugging Face causal language models and callables do.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from fedlayer.errors import ModelError, choices_message, listed
from fedlayer.model_fit import fit_to_data
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE

SPEC_FORMS = (
    "a model spec: 'torchvision:<builder>', 'hf:<model id or directory>', 'path/to/file.py:callable' "
    "or 'package.module:callable'"
)
DATA_ARGUMENTS = {
    CLASSIFICATION: ("input_shape", "num_classes"),
    LANGUAGE: ("input_shape", "num_classes", "vocab_size", "seq_len"),
}
"""What a callable model is given from the data, by task (those it accepts); options cannot set them. On a
language task, vocab_size is num_classes and seq_len is input_shape[0]."""


def spec_kind(name: str) -> str | None:
    """The kind of a model spec, "torchvision", "hf" or "callable"; None for anything else (a built-in name
    or a malformed spec). Syntax only: nothing is imported or built."""
    prefix, sep, rest = name.partition(":")
    if sep and rest and prefix in ("torchvision", "hf"):
        return prefix
    module, sep, attribute = name.rpartition(":")
    return "callable" if sep and module and attribute.isidentifier() else None


def is_model_spec(name: str) -> bool:
    """Whether `name` reads as a model spec (config validation: `model.name`)."""
    return spec_kind(name) is not None


def absolute_model_spec(name: str) -> str:
    """`name` with a file or a local Hugging Face directory made absolute, so that a saved config means
    the same model from any working directory (`--resume`, clients started elsewhere)."""
    kind = spec_kind(name)
    if kind == "callable":
        module, _, attribute = name.rpartition(":")
        if module.endswith(".py"):
            return f"{Path(module).expanduser().resolve()}:{attribute}"
    if kind == "hf":
        folder = Path(name.partition(":")[2]).expanduser()
        if folder.is_dir():
            return f"hf:{folder.resolve()}"
    return name


def build_spec_model(
    spec: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: Mapping[str, Any],
    task: str = CLASSIFICATION,
) -> nn.Module:
    """The model a spec names, built for the data and its task, fitted to it and checked (see
    `fedlayer.models.build_model`)."""
    kind = spec_kind(spec)
    if kind == "torchvision":
        if task == LANGUAGE:
            raise ModelError(
                f"model {spec} is an image classifier, but the data is a language task (windows of token ids, a "
                "next token per position): use lstm, gpt, an hf: causal language model or a callable of your own"
            )
        model = _torchvision_model(spec.partition(":")[2], num_classes, dict(options))
    elif kind == "hf":
        from fedlayer.hf_models import hf_model

        model = hf_model(spec.partition(":")[2], input_shape, num_classes, dict(options), task)
    elif kind == "callable":
        model = _callable_model(spec, input_shape, num_classes, dict(options), task)
    else:
        raise ModelError(f"bad model spec {spec!r}; expected a built-in model name or {SPEC_FORMS}")
    return fit_to_data(model, spec, input_shape, num_classes, task)


def _callable_model(
    spec: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any], task: str
) -> nn.Module:
    """`callable(**data arguments it accepts, **options)`, which must return an nn.Module."""
    from strategies.loading import accepted_keywords, load_callable

    function = load_callable(spec, "model")
    accepted, any_keyword = accepted_keywords(function)
    given = DATA_ARGUMENTS[task]
    _check_options(spec, options, [name for name in accepted if name not in given], any_keyword, given)
    data: dict[str, object] = {"input_shape": input_shape, "num_classes": num_classes}
    if task == LANGUAGE:
        data |= {"vocab_size": num_classes, "seq_len": input_shape[0]}
    kwargs = {key: value for key, value in data.items() if any_keyword or key in accepted} | options
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as exc:
        raise ModelError(
            f"model {spec} cannot be called with {', '.join(kwargs) or 'no arguments'}: {exc} (it is given "
            f"those of {', '.join(given)} it accepts on a {task} task, and model.options)"
        ) from None
    try:
        model = function(**kwargs)
    except Exception as exc:
        raise ModelError(f"model {spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_options(
    spec: str,
    options: Mapping[str, Any],
    valid: list[str],
    any_keyword: bool = False,
    given: tuple[str, ...] = DATA_ARGUMENTS[CLASSIFICATION],
) -> None:
    """An option the builder does not take, or one that the data sets (`given`), is an error listing the valid ones."""
    set_by_data = sorted(set(options) & set(given))
    if set_by_data:
        raise ModelError(f"model.options for {spec} set {', '.join(set_by_data)}, which the data sets; remove them")
    unknown = [key for key in options if key not in valid]
    if unknown and not any_keyword:
        raise ModelError(
            f"unknown model option(s) {', '.join(unknown)} for {spec}; valid choices: {', '.join(valid) or '(none)'}"
        )


# ---------------------------------------------------------------- torchvision


def _torchvision_model(name: str, num_classes: int, options: dict[str, Any]) -> nn.Module:
    """A torchvision classification builder with random weights, or pretrained ones (options.weights) with
    a new, randomly initialised head when the data has another number of classes than the weights."""
    from torchvision import models

    builders = models.list_models(module=models)
    if name not in builders:
        close = difflib.get_close_matches(name, builders, n=5, cutoff=0.5)
        listing = f"close matches: {', '.join(close)}" if close else f"valid choices: {listed(builders, 10)}"
        raise ModelError(
            f"unknown torchvision classification builder {name!r}; {listing} "
            "(all: torchvision.models.list_models(module=torchvision.models))"
        )
    builder = models.get_model_builder(name)
    model_class = typing.get_type_hints(builder)["return"]
    valid = [n for f in (builder, model_class) for n in _named_parameters(f) if n not in ("self", "num_classes")]
    _check_options(
        f"torchvision:{name}", options, valid, any_keyword="kwargs" in inspect.signature(model_class).parameters
    )
    weights = _weights(name, options.pop("weights", None))
    classes = len(weights.meta["categories"]) if weights is not None else num_classes
    try:
        model = builder(weights=weights, num_classes=classes, **options)
    except Exception as exc:
        if weights is not None and isinstance(exc, OSError):  # urllib's URLError is one: not cached, no internet
            raise ModelError(_not_cached(weights, exc)) from exc
        raise ModelError(f"torchvision:{name} cannot be built with {options}: {type(exc).__name__}: {exc}") from exc
    _drop_auxiliary_heads(model)
    if classes != num_classes:
        _replace_head(model, classes, num_classes)
    return model


def _named_parameters(function) -> list[str]:
    return [
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def _weights(name: str, value: object):
    """The torchvision weights enum member named by `value` ("DEFAULT", "IMAGENET1K_V1", ...), or None."""
    if value is None:
        return None
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except ValueError:
        enum = None
    names = list(enum.__members__) if enum is not None else []
    if not isinstance(value, str) or value not in names:
        raise ModelError(
            choices_message(f"weights for torchvision:{name}", value, names or ["(none: it has no pretrained weights)"])
        )
    return enum[value]


def _not_cached(weights, exc: Exception) -> str:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = Path(urlparse(weights.url).path).name
    return (
        f"torchvision weights {type(weights).__name__}.{weights.name} are not in the torch hub cache ({folder}) and "
        f"cannot be downloaded ({type(exc).__name__}: {exc}); put {file} there (from {weights.url}) or leave "
        "model.options.weights unset for random weights"
    )


def _drop_auxiliary_heads(model: nn.Module) -> None:
    """GoogLeNet's and Inception v3's auxiliary classifiers, removed as torchvision does for pretrained
    GoogLeNet: fedlayer trains on the main logits, and a training-mode forward then returns only those."""
    if getattr(model, "aux_logits", False):
        model.aux_logits = False  # type: ignore[assignment]  # torch stub: __setattr__ takes Tensor | Module
        for child_name, child in list(model.named_children()):
            if type(child).__name__ == "InceptionAux":
                setattr(model, child_name, None)


def _replace_head(model: nn.Module, old: int, new: int) -> None:
    """Every Linear (or 1x1 Conv2d, SqueezeNet's) with `old` outputs gets a fresh one with `new` outputs."""
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and module.out_features == old:
            head: nn.Module = nn.Linear(module.in_features, new, bias=module.bias is not None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == old:
            size = typing.cast(tuple[int, int], module.kernel_size)
            head = nn.Conv2d(module.in_channels, new, size, bias=module.bias is not None)
        else:
            continue
        parent, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent), attribute, head)
