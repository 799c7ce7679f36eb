"""Hugging Face `transformers` models for `hf:<model id or directory>` specs (the optional `fedlayer[hf]`).

A model is built from its config (`config.json` in a local directory, or an id in the Hugging Face
cache), with `model.options` as config overrides and random weights; `pretrained = true` loads the
weights too. Nothing is downloaded: every client process builds the same model, offline, from the same
files (fetch a model once with `hf download <id>`). Image data takes an image-classification head;
1-D inputs are token ids (stored as numbers) for a sequence-classification head, or, on a language task
(a next token per position), for a causal language model (`AutoModelForCausalLM`: GPT-2, GPT-NeoX,
Llama, ...). The model's forward returns the logits: (N, classes), or (N, T, vocabulary) for a causal
language model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedlayer.checkpoints import hub_checkpoint
from fedlayer.errors import ModelError, listed
from fedlayer.model_fit import FittedModel, fit_input
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE

PRETRAINED = "pretrained"
"""The one option that is not a config override: load the weights too."""
RESERVED = ("architectures", "model_type", "transformers_version", "id2label", "label2id", "num_labels")
"""Config attributes options cannot set: the model's identity, and the labels (the data sets them)."""


def hf_model(
    source: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any], task: str = CLASSIFICATION
) -> nn.Module:
    """The model for `source`'s config with the head the data's task needs, sized for the data (see the module
    docstring)."""
    transformers = _transformers()
    pretrained = options.pop(PRETRAINED, False)
    if not isinstance(pretrained, bool):
        raise ModelError(f"model.options.{PRETRAINED} for hf:{source} must be true or false, got {pretrained!r}")
    try:
        config = _local(transformers.AutoConfig.from_pretrained, source, "config.json")
    except ValueError as exc:  # a config.json that transformers cannot read, e.g. an unknown model_type
        raise ModelError(f"hf:{source}: its config.json cannot be read: {exc}") from None
    images = len(input_shape) == 3
    if task == LANGUAGE:
        auto = transformers.AutoModelForCausalLM
    elif images:
        auto = transformers.AutoModelForImageClassification
    else:
        auto = transformers.AutoModelForSequenceClassification
    _check_task(config, task, images, source)
    valid = sorted(key for key in config.to_dict() if not key.startswith("_") and key not in RESERVED)
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ModelError(
            f"unknown model option(s) {', '.join(unknown)} for hf:{source}; valid choices: {PRETRAINED}, "
            f"{', '.join(valid)} (its config's attributes)"
        )
    if task == LANGUAGE:  # options may override `sized`, never what the data sets (`fixed`)
        sized = {"use_cache": False}
        fixed = _language_sizes(config, input_shape, num_classes, source, pretrained, options)
    else:
        sized = {} if pretrained or not images else _image_sizes(config, input_shape)
        fixed = {"num_labels": num_classes}
    for key, value in {**sized, **options, **fixed}.items():
        setattr(config, key, value)
    load = auto.from_pretrained
    try:
        if pretrained:
            model = _local(
                lambda s, **kw: load(s, config=config, ignore_mismatched_sizes=True, **kw),
                source,
                "weights (model.safetensors or pytorch_model.bin)",
            )
        else:
            model = auto.from_config(config)
    except ModelError:
        raise
    except Exception as exc:  # e.g. overrides that do not fit together (hidden_size vs num_attention_heads)
        raise ModelError(f"hf:{source} cannot be built with options {options}: {type(exc).__name__}: {exc}") from exc
    return fit_input(model, logits=True, tokens=not images)


def hf_checkpoint_state(model: nn.Module, source: str) -> dict[str, torch.Tensor] | None:
    """A Hugging Face checkpoint (a model folder, or "hf:ID[@REVISION]" in the local cache) loaded by transformers
    into `model`'s class and config, so that its key renames and conversions apply (a GPT-NeoX folder stores
    `embed_out`, the model names it `lm_head`); None when `model` is not a transformers model or `source` is
    not such a checkpoint (then it is read as a plain state dict)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    hub = hub_checkpoint(source)
    if hub is not None:
        name, revision = hub
    elif (Path(source).expanduser() / "config.json").is_file():
        name, revision = str(Path(source).expanduser()), ""
    else:
        return None
    cls = next(c for c in type(model).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FittedModel))
    loaded = _local(
        lambda s, **kw: cls.from_pretrained(s, config=model.config, revision=revision or "main", **kw),
        name,
        "weights (model.safetensors or pytorch_model.bin)" + (f" at revision {revision}" if revision else ""),
    )
    return loaded.state_dict()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "hf: model specs need the transformers package: pip install 'fedlayer[hf]' (or 'transformers>=4.46')"
        ) from None
    return transformers


def _local(load, source: str, what: str):
    """`load(source, local_files_only=True)`: from a local directory or the Hugging Face cache, never the network."""
    try:
        return load(source, local_files_only=True)
    except OSError as exc:
        if Path(source).expanduser().is_dir():
            raise ModelError(f"hf:{source}: no {what} in that directory ({exc})") from None
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelError(
            f"hf:{source}: no {what} in the Hugging Face cache ({HF_HUB_CACHE}), and {source!r} is not a local "
            f"directory; fedlayer does not download models: fetch it once with `hf download {source}` on a "
            "machine with internet access, or give the directory that holds it"
        ) from None


def _check_task(config, task: str, images: bool, source: str) -> None:
    """The config's model type must have the head the data needs."""
    from transformers.models.auto import modeling_auto

    names: Mapping[str, object]
    if task == LANGUAGE:
        names, head = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "causal language"
        data = "windows of token ids with a next token per position"
    elif images:
        names, head, data = modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, "image classification", "images"
    else:
        names, head = modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "sequence classification"
        data = "token sequences with one label each"
    if config.model_type in names:
        return
    language = (
        "; a causal language model needs a language dataset (windows of token ids with next-token labels, "
        "such as shakespeare)"
        if task != LANGUAGE and config.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        else ""
    )
    raise ModelError(
        f"Hugging Face model hf:{source} is a {config.model_type!r}, which has no {head} model in transformers "
        f"(the data is {data}){language}; model types with one: " + listed(sorted(names), 12)
    )


def _language_sizes(
    config, input_shape: tuple[int, ...], vocabulary: int, source: str, pretrained: bool, options: dict[str, Any]
) -> dict[str, Any]:
    """Config attributes a language task decides: the data's vocabulary (a model with random weights is built
    for it; pretrained weights must already have it). The windows must fit the model's positions.

    Raises
    ------
    ModelError
        If pretrained weights have another vocabulary than the data, or the windows are longer than the
        model's max_position_embeddings.
    """
    if pretrained and config.vocab_size != vocabulary:
        raise ModelError(
            f"hf:{source} has a vocabulary of {config.vocab_size} tokens (its config's vocab_size), the data's has "
            f"{vocabulary}: pretrained weights need the data in the model's own tokens; without model.options."
            f"{PRETRAINED} the model is built for the data's vocabulary"
        )
    seq_len = input_shape[0]
    positions_key = config.attribute_map.get("max_position_embeddings", "max_position_embeddings")
    positions = options.get(positions_key, getattr(config, "max_position_embeddings", None))
    if isinstance(positions, int) and seq_len > positions:
        raise ModelError(
            f"the data's windows of seq_len {seq_len} tokens are longer than hf:{source}'s {positions} positions "
            f"(its config's {positions_key}): set model.options.{positions_key} to at least {seq_len}, or "
            f"data.seq_len to at most {positions}"
        )
    return {"vocab_size": vocabulary}


def _image_sizes(config, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Config attributes the images decide for a model with random weights: their channels and size."""
    channels, height, width = input_shape
    sizes = {"num_channels": channels, "image_size": height if height == width else [height, width]}
    return {key: value for key, value in sizes.items() if hasattr(config, key)}
