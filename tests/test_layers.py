"""Layers, selectors, orderings and windows (see the README's definitions) on the paper's ResNet18 and the CNN."""

import pytest
import torch
from torch import nn

from fedlayer.cli import main
from fedlayer.errors import FedlayerError
from fedlayer.layers import (
    ORDERINGS,
    Layer,
    cumulative_groups,
    describe_layers,
    keys_of,
    model_layers,
    order_layers,
    select_layers,
    sliding_windows,
)
from fedlayer.models import build_model

RESNET18_LAYERS = [
    "conv1",
    *[f"layer1.{b}.conv{c}" for b in (0, 1) for c in (1, 2)],
    *[
        name
        for stage in (2, 3, 4)
        for name in (
            f"layer{stage}.0.conv1",
            f"layer{stage}.0.conv2",
            f"layer{stage}.0.downsample.0",
            f"layer{stage}.1.conv1",
            f"layer{stage}.1.conv2",
        )
    ],
    "fc",
]
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def names(layers):
    return [layer.name for layer in layers]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return build_model("resnet18", (3, 32, 32), 10, norm="none")


@pytest.fixture(scope="module")
def resnet_layers(resnet):
    return model_layers(resnet)


@pytest.fixture(scope="module")
def resnet_bn_layers():
    return model_layers(build_model("resnet18", (1, 8, 8), 10, norm="bn"))


@pytest.fixture(scope="module")
def cnn_layers():
    return model_layers(build_model("cnn", (1, 8, 8), 10))


# ---------------------------------------------------------------- what a layer is


def test_resnet18_without_norm_has_the_papers_21_layers_in_order(resnet_layers):
    assert names(resnet_layers) == RESNET18_LAYERS
    assert [layer.index for layer in resnet_layers] == list(range(21))
    assert resnet_layers[0].keys == ("conv1.weight",)
    assert resnet_layers[-1].keys == ("fc.weight", "fc.bias")
    assert resnet_layers[-1].module_type == "Linear" and resnet_layers[0].module_type == "Conv2d"
    assert not any(layer.is_norm for layer in resnet_layers)


def test_layers_cover_the_state_dict_once_in_order(resnet, resnet_layers):
    assert keys_of(resnet_layers) == list(resnet.state_dict())
    assert sum(layer.numel for layer in resnet_layers) == sum(p.numel() for p in resnet.parameters())


def test_batchnorm_statistics_move_with_their_norm_layer(resnet_bn_layers):
    by_name = {layer.name: layer for layer in resnet_bn_layers}
    assert len(resnet_bn_layers) == 41
    for name in ("bn1", "layer1.0.bn2", "layer2.0.downsample.1"):
        layer = by_name[name]
        assert layer.keys == tuple(f"{name}.{suffix}" for suffix in BN_KEYS)
        assert layer.is_norm and layer.module_type == "BatchNorm2d"
    assert names(resnet_bn_layers)[:3] == ["conv1", "bn1", "layer1.0.conv1"]
    assert by_name["conv1"].keys == ("conv1.weight",)


def test_state_dict_gives_the_same_layers_as_the_module(resnet, resnet_layers):
    assert model_layers(resnet.state_dict()) == resnet_layers


def test_layers_from_a_copied_state_dict_keep_keys_and_guess_types(resnet_bn_layers):
    model = build_model("resnet18", (1, 8, 8), 10, norm="bn")
    copied = model_layers({key: value.clone() for key, value in model.state_dict().items()})
    assert [(c.name, c.keys, c.numel, c.is_norm) for c in copied] == [
        (layer.name, layer.keys, layer.numel, layer.is_norm) for layer in resnet_bn_layers
    ]
    assert copied[1].module_type == "BatchNorm" and copied[-1].module_type == "Linear"


class TiedModel(nn.Module):
    """An embedding shared with the output projection, with a layer between them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(self.mid(self.embed(tokens)))


def test_tied_weights_form_one_layer():
    model = TiedModel()
    layers = model_layers(model)
    assert names(layers) == ["embed", "mid"]
    assert layers[0].keys == ("embed.weight", "out.weight", "out.bias")
    assert layers[0].numel == 40 + 10  # the shared tensor counts once
    from_state = model_layers(model.state_dict())  # state_dict() tensors still share memory
    assert [(x.name, x.keys, x.numel) for x in from_state] == [(x.name, x.keys, x.numel) for x in layers]
    assert layers[0].module_type == "Embedding" and from_state[0].module_type == "Linear"  # a guess


def test_tied_weights_are_lost_in_a_copied_state_dict():
    copied = {key: value.clone() for key, value in TiedModel().state_dict().items()}
    assert names(model_layers(copied)) == ["embed", "mid", "out"]


def test_root_level_tensors_are_layers_of_their_own():
    model = nn.Module()
    model.cls_token = nn.Parameter(torch.zeros(1, 4))
    model.head = nn.Linear(4, 2)
    layers = model_layers(model)
    assert names(layers) == ["cls_token", "head"] and layers[0].keys == ("cls_token",)


# ---------------------------------------------------------------- selectors

SELECTOR_CASES = [
    ("all", RESNET18_LAYERS),
    ("head", ["fc"]),
    ("body", RESNET18_LAYERS[:-1]),
    ("first:3", RESNET18_LAYERS[:3]),
    ("last:2", ["layer4.1.conv2", "fc"]),
    ("middle:5", RESNET18_LAYERS[8:13]),
    ("middle:21", RESNET18_LAYERS),
    ("re:downsample", [f"layer{s}.0.downsample.0" for s in (2, 3, 4)]),
    ("re:^layer1\\..*conv1$", ["layer1.0.conv1", "layer1.1.conv1"]),
    (
        "re:layer[34]\\.0\\.conv\\d{1,1}",
        ["layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1", "layer4.0.conv2"],
    ),
    ("*.downsample.*", [f"layer{s}.0.downsample.0" for s in (2, 3, 4)]),
    ("layer?.1.conv2", [f"layer{s}.1.conv2" for s in (1, 2, 3, 4)]),
    ("layer2", RESNET18_LAYERS[5:10]),
    ("layer2.0", RESNET18_LAYERS[5:8]),
    ("fc", ["fc"]),
    ("fc, conv1", ["conv1", "fc"]),
    ("layer4,layer1,head", RESNET18_LAYERS[1:5] + RESNET18_LAYERS[15:]),
    ("head,fc,last:1", ["fc"]),
    (["fc", "re:^conv"], ["conv1", "fc"]),
    ("none", []),
    ("none,fc", ["fc"]),
]


@pytest.mark.parametrize(("selector", "expected"), SELECTOR_CASES, ids=[str(s) for s, _ in SELECTOR_CASES])
def test_selectors_on_resnet18(resnet_layers, selector, expected):
    assert names(select_layers(resnet_layers, selector)) == expected


def test_selectors_on_the_cnn(cnn_layers):
    assert names(cnn_layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert names(select_layers(cnn_layers, "head")) == ["fc2"]
    assert names(select_layers(cnn_layers, "body")) == ["conv1", "conv2", "fc1"]
    assert names(select_layers(cnn_layers, "conv*")) == ["conv1", "conv2"]
    assert names(select_layers(cnn_layers, "middle:2")) == ["conv2", "fc1"]
    assert names(select_layers(cnn_layers, "re:^fc")) == ["fc1", "fc2"]


def test_norm_selects_the_normalisation_layers(resnet_bn_layers):
    picked = select_layers(resnet_bn_layers, "norm")
    assert len(picked) == 20 and all(layer.module_type == "BatchNorm2d" for layer in picked)
    assert len(select_layers(resnet_bn_layers, "body")) == 40
    groupnorm = model_layers(build_model("cnn", (1, 8, 8), 10, norm="gn"))
    assert names(select_layers(groupnorm, "norm")) == ["norm1", "norm2"]


def test_prefix_stops_at_a_dot_boundary():
    layers = [
        Layer(i, name, (f"{name}.weight",), 1, "Linear", False)
        for i, name in enumerate(["layer1.0.conv1", "layer10.conv", "layer1"])
    ]
    assert names(select_layers(layers, "layer1")) == ["layer1.0.conv1", "layer1"]
    assert names(select_layers(layers, "layer10")) == ["layer10.conv"]


def test_random_k_is_seeded_and_kept_in_model_order(resnet_layers):
    first = select_layers(resnet_layers, "random:5", seed=3)
    assert first == select_layers(resnet_layers, "random:5", seed=3)
    assert len(first) == 5 and [layer.index for layer in first] == sorted(layer.index for layer in first)
    assert any(select_layers(resnet_layers, "random:5", seed=s) != first for s in range(4, 8))


def test_selector_matching_nothing_lists_the_layer_names(resnet_layers):
    with pytest.raises(FedlayerError, match="'layer9' matches no layer") as info:
        select_layers(resnet_layers, "fc,layer9")
    assert "layer2.0.downsample.0" in str(info.value) and "middle:k" in str(info.value)
    with pytest.raises(FedlayerError, match="matches no layer"):
        select_layers(resnet_layers, "norm")
    with pytest.raises(FedlayerError, match="empty layer selector"):
        select_layers(resnet_layers, " , ")


@pytest.mark.parametrize("selector", ["first:0", "last:22", "middle:-1", "first:x", "middle:"])
def test_bad_layer_count_is_an_error(resnet_layers, selector):
    with pytest.raises(FedlayerError, match="k must be an integer from 1 to 21"):
        select_layers(resnet_layers, selector)


def test_bad_regex_is_an_error(resnet_layers):
    with pytest.raises(FedlayerError, match=r"bad regular expression in layer selector 're:conv\('"):
        select_layers(resnet_layers, "re:conv(")


def test_head_needs_a_linear_layer():
    layers = model_layers(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(FedlayerError, match="no Linear layer"):
        select_layers(layers, "head")


# ---------------------------------------------------------------- orderings, groups, windows


def test_shallow_and_deep_orderings(resnet_layers):
    assert order_layers(resnet_layers, "shallow") == resnet_layers
    assert order_layers(resnet_layers, "deep") == resnet_layers[::-1]


def test_minimal_ordering_is_the_papers_for_21_layers(resnet_layers):
    order = [layer.index for layer in order_layers(resnet_layers, "minimal")]
    assert order == [0, 1, 2, 3, 4, 16, 17, 18, 19, 20, *range(5, 16)]


def test_minimal_ordering_degrades_for_small_models(cnn_layers):
    assert names(order_layers(cnn_layers, "minimal")) == ["conv1", "fc2", "conv2", "fc1"]
    assert order_layers(cnn_layers[:2], "minimal") == cnn_layers[:2]


def test_random_ordering_is_a_seeded_permutation(resnet_layers):
    order = order_layers(resnet_layers, "random", seed=1)
    assert sorted(layer.index for layer in order) == list(range(21))
    assert order == order_layers(resnet_layers, "random", seed=1)
    assert order != order_layers(resnet_layers, "random", seed=2)
    assert order != resnet_layers


def test_unknown_ordering_lists_the_choices(resnet_layers):
    with pytest.raises(FedlayerError, match="unknown layer ordering 'middle'.*shallow, deep, random, minimal"):
        order_layers(resnet_layers, "middle")


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_cumulative_groups_grow_one_layer_at_a_time(resnet_layers, ordering):
    groups = cumulative_groups(resnet_layers, ordering, seed=5)
    ordered = order_layers(resnet_layers, ordering, seed=5)
    assert [len(group) for group in groups] == list(range(1, 22))
    assert all(group == ordered[: k + 1] for k, group in enumerate(groups))


def test_cumulative_groups_deep_starts_from_the_head(resnet_layers):
    groups = cumulative_groups(resnet_layers, "deep")
    assert names(groups[0]) == ["fc"] and names(groups[1]) == ["fc", "layer4.1.conv2"]


def test_sliding_windows_are_consecutive_with_stride_one(resnet_layers):
    windows = sliding_windows(resnet_layers, 3)
    assert len(windows) == 19
    assert [[layer.index for layer in w] for w in windows[:2]] == [[0, 1, 2], [1, 2, 3]]
    assert names(windows[-1]) == ["layer4.1.conv1", "layer4.1.conv2", "fc"]
    assert sliding_windows(resnet_layers, 21) == [resnet_layers]
    assert len(sliding_windows(resnet_layers, 1)) == 21


@pytest.mark.parametrize("width", [0, 22, -1, 2.5, True])
def test_bad_window_width_is_an_error(resnet_layers, width):
    with pytest.raises(FedlayerError, match="bad window width .*from 1 to 21"):
        sliding_windows(resnet_layers, width)


def test_describe_layers_table(resnet_bn_layers):
    table = describe_layers(resnet_bn_layers)
    assert list(table.columns) == ["index", "name", "type", "keys", "numel"]
    assert table.loc[1, "keys"] == ", ".join(BN_KEYS)
    assert table.loc[40, "name"] == "fc" and table.loc[40, "numel"] == 512 * 10 + 10


# ---------------------------------------------------------------- CLI


def test_layers_cli_prints_the_table(capsys):
    assert main(["layers", "--model", "cnn", "--dataset", "digits", "--orderings"]) == 0
    out = capsys.readouterr().out
    for text in (
        "conv1",
        "conv2",
        "fc1",
        "fc2",
        "Conv2d",
        "weight, bias",
        "total: 4 layers",
        "minimal: 0 3 1 2",
    ):
        assert text in out


def test_layers_cli_shows_what_a_selector_picks(capsys):
    assert main(["layers", "--model", "resnet18", "--norm", "bn", "--dataset", "digits", "--select", "norm"]) == 0
    out = capsys.readouterr().out
    assert "selector 'norm' picks 20 of 41 layers" in out
    assert "layer2.0.downsample.1" in out and "layer2.0.downsample.0" not in out


def test_layers_cli_reports_a_bad_selector(capsys):
    assert main(["layers", "--model", "cnn", "--dataset", "digits", "--select", "conv3"]) == 2
    assert "'conv3' matches no layer; layers: conv1, conv2, fc1, fc2" in capsys.readouterr().err
