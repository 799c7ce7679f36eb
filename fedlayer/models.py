"""Model registry: the paper's architectures, sized for small images (8x8 digits up to 32x32 CIFAR);
`build_model` also builds any model a spec names (`fedlayer.model_specs`).

Every builder draws its initial weights from torch's global generator only, so
`torch.manual_seed(s)` before `build_model` gives the same model every time (clients share an init).
"""

from __future__ import annotations

import inspect
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, SupportsIndex

from torch import nn

from fedlayer.data.datasets import DATASET_SPECS
from fedlayer.errors import DataError, ModelError, choices_message
from fedlayer.model_specs import SPEC_FORMS, build_spec_model, spec_kind

NORMS = ("none", "bn", "gn")
"""Normalisation layers a model may have: none, BatchNorm or GroupNorm (per model: `MODEL_NORMS`)."""
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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet18": _resnet18,
    "vgg11": SmallVGG,
    "deep-linear": _deep_linear,
}
"""The model registry: builder by name, each called as builder(input_shape, num_classes, **options)."""
MODEL_NORMS: dict[str, tuple[str, ...]] = {
    "mlp": ("none",),
    "cnn": NORMS,
    "resnet18": NORMS,
    "vgg11": ("none",),
    "deep-linear": ("none",),
}
"""The `NORMS` each model supports, by model name (the same keys as `MODELS`)."""


def _checked_int(what: str, value: object, minimum: int) -> int:
    """An integer (numpy and torch integers too) of at least `minimum`, else a ModelError."""
    try:
        number = operator.index(value) if isinstance(value, SupportsIndex) else minimum - 1
    except TypeError:
        number = minimum - 1
    if number < minimum:
        raise ModelError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return number


def _checked_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(_checked_int("input_shape entry", d, 1) for d in input_shape)
    if len(shape) != 3:
        raise ModelError(f"input_shape must be (channels, height, width), got {tuple(input_shape)!r}")
    return shape


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    norm: str = "none",
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A fresh, randomly initialised model, sized for the given inputs and classes: a built-in one by
    name, or any model a spec names (`fedlayer.model_specs`: torchvision, Hugging Face, a callable).

    The built-in architectures are those of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024,
    arXiv:2307.06966), sized for small images: "mlp" (fc1, fc2, fc3); "cnn", the FedAvg CNN of
    McMahan et al. 2017 (arXiv:1602.05629); "resnet18" (He et al. 2016, arXiv:1512.03385) with a
    3x3 stem and no max-pool; "vgg11" (Simonyan and Zisserman 2014, arXiv:1409.1556); and
    "deep-linear", a stack of Linear layers with no non-linearity. Initial weights come from torch's
    global generator only: seed torch first for a reproducible initialisation.

    Parameters
    ----------
    name : str
        One of `MODELS`, or a spec: "torchvision:<builder>", "hf:<model id or directory>",
        "path/to/file.py:callable" or "package.module:callable".
    input_shape : tuple[int, ...]
        (channels, height, width) of one image; spec models also take other shapes, e.g. (features,).
    num_classes : int
        Classes of the classifier, at least 2.
    norm : str, default "none"
        Built-in models: one of `MODEL_NORMS[name]`, "none", "bn" (BatchNorm) or "gn" (GroupNorm).
    options : mapping, optional
        `model.options`: the builder's extra keywords (mlp: width; vgg11: dropout; deep-linear: depth,
        width), a torchvision builder's keywords, Hugging Face config overrides, a callable's keywords.

    Returns
    -------
    nn.Module
        The model, on the CPU, in training mode. A spec model has been fitted to the input (grayscale
        repeated to its stem's channels, logits out) and checked by a forward pass (`fedlayer.model_fit`).

    Raises
    ------
    ModelError
        If the name, norm or an option is unknown for this model, the shape or class count is bad, or a
        spec model cannot be built or does not fit the data.
    """
    options = dict(options or {})
    if name not in MODELS:
        if spec_kind(name) is None:
            raise ModelError(choices_message("model", name, [*MODELS, SPEC_FORMS]))
        if norm != "none":
            raise ModelError(f"norm {norm!r} applies to the built-in models only; {name} brings its own layers")
        shape = tuple(_checked_int("input_shape entry", d, 1) for d in input_shape)
        return build_spec_model(name, shape, _checked_int("num_classes", num_classes, 2), options)
    if norm not in MODEL_NORMS[name]:
        raise ModelError(
            f"model {name!r} does not support norm {norm!r}; valid choices: " + ", ".join(MODEL_NORMS[name])
        )
    shape, num_classes = _checked_shape(input_shape), _checked_int("num_classes", num_classes, 2)
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
