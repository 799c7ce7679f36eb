"""Model registry: every model trains on every dataset shape, is seeded, and has the documented layers."""

import numpy as np
import pytest
import torch
from torch import nn

from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from fedlayer.models import DATASET_SPECS, MODEL_NORMS, MODEL_TASKS, MODELS, build_model, dataset_spec
from fedlayer.task_kinds import CLASSIFICATION

SHAPES = [((1, 8, 8), 10), ((1, 28, 28), 10), ((3, 32, 32), 100)]
IMAGE_MODELS = [name for name in MODELS if MODEL_TASKS[name] == CLASSIFICATION]  # language: test_language_models
VARIANTS = [(name, norm) for name in IMAGE_MODELS for norm in MODEL_NORMS[name]]


def layer_names(model):
    return [layer.name for layer in model_layers(model)]


@pytest.mark.parametrize(("name", "norm"), VARIANTS, ids=[f"{n}-{m}" for n, m in VARIANTS])
@pytest.mark.parametrize(("shape", "classes"), SHAPES, ids=["digits", "28x28", "cifar100"])
def test_every_model_runs_forward_and_backward(name, norm, shape, classes):
    torch.manual_seed(0)
    model = build_model(name, shape, classes, norm=norm)
    logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, classes)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_every_model_has_its_norms_and_its_task():
    assert set(MODEL_NORMS) == set(MODEL_TASKS) == set(MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_models_are_deterministic_given_the_seed(name):
    def state(seed):
        torch.manual_seed(seed)
        return build_model(name, (1, 8, 8), 10).state_dict()

    first, again, other = state(1), state(1), state(2)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first)


def test_resnet18_without_norm_is_the_papers_model():
    model = build_model("resnet18", (3, 32, 32), 10)
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in model.modules())
    assert isinstance(model.maxpool, nn.Identity) and isinstance(model.layer2[0].downsample[1], nn.Identity)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert len(layer_names(model)) == 21


def test_resnet18_norm_variants():
    bn = build_model("resnet18", (1, 28, 28), 10, norm="bn")
    gn = build_model("resnet18", (1, 28, 28), 10, norm="gn")
    assert isinstance(bn.bn1, nn.BatchNorm2d) and bn.conv1.in_channels == 1
    assert all(m.num_groups == 32 for m in gn.modules() if isinstance(m, nn.GroupNorm))
    assert len(layer_names(bn)) == len(layer_names(gn)) == 41


def test_cnn_is_the_fedavg_cnn():
    model = build_model("cnn", (3, 32, 32), 10)
    assert layer_names(model) == ["conv1", "conv2", "fc1", "fc2"]
    assert (model.conv1.out_channels, model.conv1.kernel_size, model.conv2.out_channels) == (32, (5, 5), 64)
    assert (model.fc1.in_features, model.fc1.out_features) == (64 * 8 * 8, 512)
    assert build_model("cnn", (1, 8, 8), 10).fc1.in_features == 64 * 2 * 2
    assert layer_names(build_model("cnn", (1, 8, 8), 10, norm="bn")) == [
        "conv1",
        "norm1",
        "conv2",
        "norm2",
        "fc1",
        "fc2",
    ]


def test_mlp_layers():
    model = build_model("mlp", (1, 28, 28), 10)
    assert layer_names(model) == ["fc1", "fc2", "fc3"]
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (784, 200, 200)


def test_vgg11_keeps_torchvision_names_and_skips_pools_on_tiny_images():
    names = [f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18)] + [f"classifier.{i}" for i in (0, 3, 6)]
    digits = build_model("vgg11", (1, 8, 8), 10)
    assert layer_names(digits) == names
    assert sum(isinstance(m, nn.MaxPool2d) for m in digits.features) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in build_model("vgg11", (3, 32, 32), 10).features) == 5
    assert digits.classifier[6].out_features == 10 and digits.classifier[2].p == 0.0
    assert build_model("vgg11", (1, 8, 8), 10, options={"dropout": 0.5}).classifier[2].p == 0.5


def test_deep_linear_has_no_nonlinearity():
    torch.manual_seed(0)
    model = build_model("deep-linear", (1, 8, 8), 10, options={"depth": 3, "width": 16})
    assert layer_names(model) == ["fc1", "fc2", "fc3"]
    assert {type(m) for m in model.children()} == {nn.Flatten, nn.Linear}
    x, y, zero = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    with torch.no_grad():  # an affine map: f(2x - 3y) - f(0) = 2 (f(x) - f(0)) - 3 (f(y) - f(0))
        left = model(2 * x - 3 * y) - model(zero)
        right = 2 * (model(x) - model(zero)) - 3 * (model(y) - model(zero))
    assert torch.allclose(left, right, atol=1e-5)
    assert len(layer_names(build_model("deep-linear", (1, 8, 8), 10))) == 4


def test_dataset_specs():
    assert dataset_spec("digits") == ((1, 8, 8), 10)
    assert dataset_spec("cifar100") == ((3, 32, 32), 100)
    assert set(DATASET_SPECS) == {"digits", "fashion-mnist", "mnist", "cifar10", "cifar100"}
    with pytest.raises(FedlayerError, match="unknown dataset 'svhn'; valid choices: digits"):
        dataset_spec("svhn")


def test_numpy_integers_are_accepted_as_shapes():
    model = build_model("mlp", tuple(np.array([1, 8, 8])), np.int64(10))
    assert model.fc3.out_features == 10


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: build_model("resnet50", (3, 32, 32), 10),
            "unknown model 'resnet50'; valid choices: mlp, cnn, resnet18",
        ),
        (
            lambda: build_model("vgg11", (3, 32, 32), 10, norm="bn"),
            "model 'vgg11' does not support norm 'bn'; valid choices: none",
        ),
        (
            lambda: build_model("resnet18", (3, 32, 32), 10, norm="ln"),
            "norm 'ln'; valid choices: none, bn, gn",
        ),
        (lambda: build_model("cnn", (3, 32, 32), 10, options={"depth": 3}), "unknown option.* depth for model 'cnn'"),
        (lambda: build_model("deep-linear", (3, 32, 32), 10, options={"height": 3}), "valid choices: depth, width"),
        (lambda: build_model("deep-linear", (3, 32, 32), 10, options={"depth": 0}), "depth >= 1"),
        (lambda: build_model("cnn", (32, 32), 10), r"input_shape must be \(channels, height, width\)"),
        (lambda: build_model("cnn", (3, 0, 32), 10), "input_shape entry must be an integer >= 1"),
        (lambda: build_model("cnn", (3, 32, 32), 1), "num_classes must be an integer >= 2"),
    ],
    ids=["model", "norm", "norm-resnet", "option", "option-list", "depth", "shape", "shape-entry", "classes"],
)
def test_errors_name_the_bad_value_and_the_choices(call, message):
    with pytest.raises(FedlayerError, match=message):
        call()
