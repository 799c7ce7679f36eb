"""Model registry: the paper's architectures, sized for small images (8x8 digits up to 32x32 CIFAR) and for
windows of characters; `build_model` also builds any model a spec names (`fedlayer.model_specs`).

Every builder draws its initial weights from torch's global generator only, so
`torch.manual_seed(s)` before `build_model` gives the same model every time (clients share an init).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, SupportsIndex

from torch import nn

from fedlayer.data.datasets import DATASET_SPECS
from fedlayer.errors import DataError, ModelError, choices_message
from fedlayer.language_models import GPT, CharLSTM
from fedlayer.model_specs import SPEC_FORMS, build_spec_model, spec_kind
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE, TASKS
from fedlayer.vit import SimpleViT

NORMS = ("none", "bn", "gn")
"""Normalisation layers a model may have: none, BatchNorm or GroupNorm (per model: `MODEL_NORMS`)."""
INIT_MODES = ("same", "per-client", "checkpoints")
"""Where each client's model starts (`federation.init`): the run's one initialisation, its own seeded one, or a
checkpoint per client."""
GROUP_NORM_GROUPS = 32  # GroupNorm uses gcd(32, channels) groups, i.e. 32 for every ResNet width


def dataset_spec(dataset: str) -> tuple[tuple[int, int, int], int]:
    """(input_shape, num_classes) a model for a registered dataset needs, without loading the data.

    Raises
    ------
    DataError
        If `dataset` is not one of `fedlayer.data.DATASETS`.
    """
    if dataset not in DATASET_SPECS:
        raise DataError(choices_message("dataset", dataset, DATASET_SPECS))
    return DATASET_SPECS[dataset]


def client_init_seed(seed: int, partition: int) -> int:
    """The torch seed of a client's own initialisation (`federation.init = "per-client"`): fixed by the run's
    seed and the partition id, and apart from the run's seed and from every other client's."""
    digest = hashlib.sha256(f"init-{seed}-{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch seeds are below 2**63


def _norm_2d(norm: str) -> Callable[[int], nn.Module]:
    """A channels -> module factory; 'none' is Identity (it ignores the channel count)."""
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, channels), channels)
    return nn.Identity


def _init_like_torchvision(modules) -> None:
    """torchvision's ResNet/VGG init for modules we build or replace ourselves."""
    for module in modules:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers, classifier: layers fc1, fc2, fc3."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 200):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc3(self.relu(self.fc2(x)))


class CNN(nn.Module):
    """The FedAvg CNN of McMahan et al.: two 5x5 conv + max-pool blocks, fc 512, classifier.

    Layers conv1, conv2, fc1, fc2 (plus norm1, norm2 with norm="bn"|"gn", after each conv).
    The flatten size follows the input, so 8x8, 28x28 and 32x32 images all work.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, norm: str = "none"):
        super().__init__()
        channels, height, width = input_shape
        make_norm = _norm_2d(norm)
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=5, padding=2)
        self.norm1 = make_norm(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.norm2 = make_norm(64)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.norm1(self.conv1(x))))
        x = self.pool(self.relu(self.norm2(self.conv2(x))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class SmallVGG(nn.Module):
    """torchvision's VGG11 (no batch norm) for small images, with torchvision's module names.

    features.N is VGG11's conv/ReLU/max-pool stack with the dataset's input channels; a max-pool
    that would shrink the image below 1x1 becomes Identity (same index, no parameters), so 8x8
    digits work. The classifier is 512 -> 512 -> 512 -> classes after a 1x1 adaptive average pool,
    keeping torchvision's classifier.0/.3/.6 names; its dropout defaults to 0 (torchvision: 0.5).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0):
        from torchvision.models.vgg import cfgs

        super().__init__()
        channels, height, width = input_shape
        size = min(height, width)
        stack: list[nn.Module] = []
        for item in cfgs["A"]:
            if item == "M":
                stack.append(nn.MaxPool2d(2, 2) if size // 2 >= 1 else nn.Identity())
                size = max(size // 2, 1)
            else:
                stack += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*stack)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )
        _init_like_torchvision(self.modules())

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _deep_linear(input_shape: tuple[int, int, int], num_classes: int, depth: int = 4, width: int = 64) -> nn.Module:
    """Flatten, then `depth` Linear layers fc1..fcN (with bias) and no non-linearity.

    The paper's deep linear network: the loss is convex along any single-layer cut.
    """
    if depth < 1 or width < 1:
        raise ModelError(f"deep-linear needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
    sizes = [math.prod(input_shape)] + [width] * (depth - 1) + [num_classes]
    stack = [(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1])) for i in range(depth)]
    return nn.Sequential(OrderedDict([("flatten", nn.Flatten()), *stack]))


def _resnet18(input_shape: tuple[int, int, int], num_classes: int, norm: str = "none") -> nn.Module:
    """torchvision ResNet18 for small images, as the paper: 3x3 stride-1 conv1, no max-pool.

    norm="none" (the paper's model) puts Identity where BatchNorm was: 21 layers (conv1, 16 block
    convs, 3 downsample.0 convs, fc); conv biases stay off, as in torchvision.
    """
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes, norm_layer=_norm_2d(norm))
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    _init_like_torchvision([model.conv1])
    model.maxpool = nn.Identity()
    return model


def _vit(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    dim_head: int = 32,
    mlp_dim: int = 256,
    patch_size: int = 4,
) -> nn.Module:
    """SimpleViT (`fedlayer.vit`), the paper's E4 transformer, sized by its options.

    The defaults are a quarter of the paper's width and two thirds of its depth (about 0.5 M
    parameters; 64 patches of a 32x32 image): small enough to train federated on a CPU, deep enough
    for layer-wise barriers. The paper's model is dim 512, depth 6, heads 16, dim_head 64,
    mlp_dim 1024, patch_size 4.
    """
    sizes = dict(dim=dim, depth=depth, heads=heads, dim_head=dim_head, mlp_dim=mlp_dim, patch_size=patch_size)
    dim, depth, heads, dim_head, mlp_dim, patch_size = _checked_sizes("vit", sizes)
    if dim % 4 or dim < 8:
        raise ModelError(f"model 'vit' needs dim a multiple of 4, at least 8 (sin-cos position embedding), got {dim}")
    _, height, width = input_shape
    if height % patch_size or width % patch_size:
        raise ModelError(
            f"model 'vit': patch_size {patch_size} does not divide the data's {height}x{width} images; set "
            "model.options.patch_size to a divisor of both, or resize the images with data.resize"
        )
    return SimpleViT(input_shape, num_classes, dim, depth, heads, dim_head, mlp_dim, patch_size)


def _lstm(
    input_shape: tuple[int], num_classes: int, embedding_dim: int = 8, hidden_size: int = 256, num_layers: int = 2
) -> nn.Module:
    """LEAF's character LSTM (`fedlayer.language_models.CharLSTM`): embedding 8, two LSTM layers of 256."""
    sizes = dict(embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers)
    return CharLSTM(num_classes, *_checked_sizes("lstm", sizes))


def _gpt(
    input_shape: tuple[int],
    num_classes: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    block_size: int = 128,
    dropout: float = 0.0,
    bias: bool = False,
) -> nn.Module:
    """A GPT-2-like decoder (`fedlayer.language_models.GPT`), the paper's E5 language model, sized by its options.

    The defaults are sized for a CPU (about 0.8 M parameters; block_size 128 covers LEAF's windows
    of 80 characters). The paper's model is n_layer 12, n_head 12, n_embd 768, block_size 256,
    dropout 0.2, bias false.
    """
    sizes = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size)
    n_layer, n_head, n_embd, block_size = _checked_sizes("gpt", sizes)
    if n_embd % n_head:
        raise ModelError(f"model 'gpt' needs n_embd divisible by n_head, got n_embd={n_embd}, n_head={n_head}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ModelError(f"model 'gpt' option dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(bias, bool):
        raise ModelError(f"model 'gpt' option bias must be true or false, got {bias!r}")
    (seq_len,) = input_shape
    if seq_len > block_size:
        raise ModelError(
            f"the data's windows of seq_len {seq_len} tokens are longer than model 'gpt''s block_size {block_size} "
            f"(the positions it has embeddings for): set model.options.block_size to at least {seq_len}, or "
            f"data.seq_len to at most {block_size}"
        )
    return GPT(num_classes, block_size, n_layer, n_head, n_embd, float(dropout), bias)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet18": _resnet18,
    "vgg11": SmallVGG,
    "deep-linear": _deep_linear,
    "vit": _vit,
    "lstm": _lstm,
    "gpt": _gpt,
}
"""The model registry: builder by name, each called as builder(input_shape, num_classes, **options)."""
MODEL_NORMS: dict[str, tuple[str, ...]] = {
    "mlp": ("none",),
    "cnn": NORMS,
    "resnet18": NORMS,
    "vgg11": ("none",),
    "deep-linear": ("none",),
    "vit": ("none",),  # the transformers bring their own LayerNorms
    "lstm": ("none",),
    "gpt": ("none",),
}
"""The `NORMS` each model supports, by model name (the same keys as `MODELS`)."""
MODEL_TASKS: dict[str, str] = {
    "mlp": CLASSIFICATION,
    "cnn": CLASSIFICATION,
    "resnet18": CLASSIFICATION,
    "vgg11": CLASSIFICATION,
    "deep-linear": CLASSIFICATION,
    "vit": CLASSIFICATION,
    "lstm": LANGUAGE,
    "gpt": LANGUAGE,
}
"""The task (`fedlayer.task_kinds.TASKS`) each model is made for, by model name (the same keys as `MODELS`)."""
TASK_INPUTS = {
    CLASSIFICATION: "(channels, height, width) images in, one row of class logits per image out",
    LANGUAGE: "token ids (N, T) in, next-token logits (N, T, vocabulary) out",
}
"""What a built-in model of each task reads and returns, for messages."""


def _checked_int(what: str, value: object, minimum: int) -> int:
    """An integer (numpy and torch integers too) of at least `minimum`, else a ModelError."""
    try:
        number = operator.index(value) if isinstance(value, SupportsIndex) else minimum - 1
    except TypeError:
        number = minimum - 1
    if number < minimum:
        raise ModelError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


def _checked_sizes(model: str, sizes: Mapping[str, object]) -> list[int]:
    """A builder's size options, each an integer >= 1, in the order given."""
    return [_checked_int(f"model {model!r} option {name}", value, 1) for name, value in sizes.items()]


def _checked_shape(name: str, input_shape, task: str) -> tuple[int, ...]:
    """A built-in model's input shape: (channels, height, width) for a classifier, (seq_len,) for a language model."""
    shape = tuple(_checked_int("input_shape entry", d, 1) for d in input_shape)
    if task == LANGUAGE and len(shape) != 1:
        raise ModelError(f"model {name!r} reads windows of token ids: input_shape must be (seq_len,), got {shape!r}")
    if task == CLASSIFICATION and len(shape) != 3:
        raise ModelError(f"input_shape must be (channels, height, width), got {tuple(input_shape)!r}")
    return shape


def _check_task(name: str, task: str) -> None:
    """A built-in model must be made for the data's task: a classifier cannot read token windows, nor the reverse."""
    made_for = MODEL_TASKS[name]
    if made_for != task:
        fitting = [other for other, kind in MODEL_TASKS.items() if kind == task]
        raise ModelError(
            f"model {name!r} is a {made_for} model ({TASK_INPUTS[made_for]}), but the data is a {task} task; "
            f"built-in models for it: {', '.join(fitting)}"
        )


def _check_vocabulary(name: str, options: dict[str, Any], vocabulary: int) -> None:
    """A `vocab_size` option must be the data's vocabulary (its class count); then it is dropped: the data sets it."""
    if "vocab_size" not in options:
        return
    given = options.pop("vocab_size")
    if given != vocabulary:
        raise ModelError(
            f"model {name!r}: model.options.vocab_size is {given!r}, but the data's vocabulary has {vocabulary} "
            "tokens (the data sets it): remove the option, or use data with that vocabulary"
        )


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    task: str = CLASSIFICATION,
    norm: str = "none",
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A fresh, randomly initialised model, sized for the given inputs and classes: a built-in one by
    name, or any model a spec names (`fedlayer.model_specs`: torchvision, Hugging Face, a callable).

    The built-in architectures are those of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024,
    arXiv:2307.06966), sized for small images: "mlp" (fc1, fc2, fc3); "cnn", the FedAvg CNN of
    McMahan et al. 2017 (arXiv:1602.05629); "resnet18" (He et al. 2016, arXiv:1512.03385) with a
    3x3 stem and no max-pool; "vgg11" (Simonyan and Zisserman 2014, arXiv:1409.1556);
    "deep-linear", a stack of Linear layers with no non-linearity; and "vit", the SimpleViT of the
    paper's transformer experiment (`fedlayer.vit`). For a language task: "lstm", LEAF's character
    LSTM (Caldas et al. 2018, arXiv:1812.01097), and "gpt", the GPT-2-like decoder of the paper's
    language-model experiment (`fedlayer.language_models`). Initial weights come from torch's
    global generator only: seed torch first for a reproducible initialisation.

    Parameters
    ----------
    name : str
        One of `MODELS`, or a spec: "torchvision:<builder>", "hf:<model id or directory>",
        "path/to/file.py:callable" or "package.module:callable".
    input_shape : tuple[int, ...]
        (channels, height, width) of one image, or (seq_len,) of one window of token ids for a language
        task; spec models also take other shapes, e.g. (features,).
    num_classes : int
        Classes of the classifier, or the vocabulary size for a language task; at least 2.
    task : str, default "classification"
        The data's task, one of `fedlayer.task_kinds.TASKS`: "classification" (one label per input) or
        "language" (a next token per position); the model must be made for it (`MODEL_TASKS`).
    norm : str, default "none"
        Built-in models: one of `MODEL_NORMS[name]`, "none", "bn" (BatchNorm) or "gn" (GroupNorm).
    options : mapping, optional
        `model.options`: the builder's extra keywords (mlp: width; vgg11: dropout; deep-linear: depth,
        width; vit: dim, depth, heads, dim_head, mlp_dim, patch_size; lstm: embedding_dim,
        hidden_size, num_layers; gpt: n_layer, n_head, n_embd, block_size, dropout, bias), a
        torchvision builder's keywords, Hugging Face config overrides, a callable's keywords. On a
        language task, a `vocab_size` option must equal `num_classes`.

    Returns
    -------
    nn.Module
        The model, on the CPU, in training mode. A spec model has been fitted to the input (grayscale
        repeated to its stem's channels, logits out) and checked by a forward pass (`fedlayer.model_fit`).

    Raises
    ------
    ModelError
        If the name, task, norm or an option is unknown for this model, the model is made for the other
        task, the shape or class count is bad, a `vocab_size` option is not the data's vocabulary, the
        windows are longer than the positions the model has (gpt's block_size), or a spec model cannot be
        built or does not fit the data.
    """
    options = dict(options or {})
    if task not in TASKS:
        raise ModelError(choices_message("task", task, TASKS))
    if task == LANGUAGE:
        _check_vocabulary(name, options, num_classes)
    if name not in MODELS:
        if spec_kind(name) is None:
            raise ModelError(choices_message("model", name, [*MODELS, SPEC_FORMS]))
        if norm != "none":
            raise ModelError(f"norm {norm!r} applies to the built-in models only; {name} brings its own layers")
        shape = tuple(_checked_int("input_shape entry", d, 1) for d in input_shape)
        return build_spec_model(name, shape, _checked_int("num_classes", num_classes, 2), options, task)
    if norm not in MODEL_NORMS[name]:
        raise ModelError(
            f"model {name!r} does not support norm {norm!r}; valid choices: " + ", ".join(MODEL_NORMS[name])
        )
    _check_task(name, task)
    shape, num_classes = _checked_shape(name, input_shape, task), _checked_int("num_classes", num_classes, 2)
    builder = MODELS[name]
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("input_shape", "num_classes", "norm")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(
            f"unknown option(s) {', '.join(unknown)} for model {name!r}; valid choices: "
            + (", ".join(allowed) or "(none)")
        )
    if "norm" in inspect.signature(builder).parameters:
        options["norm"] = norm
    return builder(shape, num_classes, **options)
