"""Layers, selectors, orderings and windows (see the README's definitions) on the paper's ResNet18 and the CNN."""

import pytest
import torch
from torch import nn

from fedlayer.cli import main
from fedlayer.errors import FedlayerError
from fedlayer.layers import (
    LAYER_UNITS,
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


# ---------------------------------------------------------------- layer units


class Mixed(nn.Module):
    """Every case of the tensor unit: a root-level token, an embedding tied to a bias-free output, a two-layer
    LSTM, attention with bias_k and bias_v (a module of five units), a plain attention (one unit), a
    LayerNorm, a BatchNorm, a bias-free Linear and a Linear head."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 8))
        self.embed = nn.Embedding(20, 8)
        self.lstm = nn.LSTM(8, 8, num_layers=2)
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)
        self.plain_attn = nn.MultiheadAttention(8, 2)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.proj = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 3)
        self.out = nn.Linear(8, 20, bias=False)
        self.out.weight = self.embed.weight


MIXED_TENSOR_UNITS = {  # name -> keys, in state_dict order
    "cls_token": ("cls_token",),
    "embed": ("embed.weight", "out.weight"),
    **{
        f"lstm.weight_{kind}_l{i}": (f"lstm.weight_{kind}_l{i}", f"lstm.bias_{kind}_l{i}")
        for i in (0, 1)
        for kind in ("ih", "hh")
    },
    "attn.in_proj_weight": ("attn.in_proj_weight", "attn.in_proj_bias"),
    "attn.bias_k": ("attn.bias_k",),
    "attn.bias_v": ("attn.bias_v",),
    "attn.out_proj": ("attn.out_proj.weight", "attn.out_proj.bias"),
    "plain_attn": ("plain_attn.in_proj_weight", "plain_attn.in_proj_bias"),
    "plain_attn.out_proj": ("plain_attn.out_proj.weight", "plain_attn.out_proj.bias"),
    "norm": ("norm.weight", "norm.bias"),
    "bn": tuple(f"bn.{suffix}" for suffix in BN_KEYS),
    "proj": ("proj.weight",),
    "head": ("head.weight", "head.bias"),
}


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    return Mixed()


@pytest.fixture(scope="module")
def mixed_units(mixed):
    return model_layers(mixed, "tensor")


def test_a_tensor_unit_is_a_weight_with_its_bias_and_a_module_of_one_unit_keeps_its_name(mixed, mixed_units):
    assert {layer.name: layer.keys for layer in mixed_units} == MIXED_TENSOR_UNITS
    assert names(mixed_units) == list(MIXED_TENSOR_UNITS)  # state_dict order of each unit's first key
    assert [layer.index for layer in mixed_units] == list(range(len(MIXED_TENSOR_UNITS)))
    assert all(layer.unit == "tensor" for layer in mixed_units)
    assert sorted(keys_of(mixed_units)) == sorted(mixed.state_dict())  # every key once
    by_name = {layer.name: layer for layer in mixed_units}
    assert by_name["lstm.weight_hh_l1"].module_type == "LSTM" and not by_name["lstm.weight_hh_l1"].is_norm
    assert by_name["bn"].is_norm and by_name["norm"].is_norm
    assert by_name["attn.bias_k"].module_type == "MultiheadAttention"
    assert by_name["embed"].numel == 20 * 8  # the tied tensor counts once
    assert by_name["lstm.weight_ih_l0"].numel == 32 * 8 + 32


def test_at_the_module_unit_a_split_module_is_one_layer(mixed):
    layers = model_layers(mixed)
    assert layers == model_layers(mixed, "module") and all(layer.unit == "module" for layer in layers)
    assert names(layers) == [
        "cls_token", "embed", "lstm", "attn", "attn.out_proj", "plain_attn", "plain_attn.out_proj", "norm", "bn",
        "proj", "head",
    ]  # fmt: skip
    assert layers[2].keys == tuple(
        f"lstm.{k}_l{i}" for i in (0, 1) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )


@pytest.mark.parametrize("norm", ["none", "bn", "gn"])
def test_both_units_agree_on_models_whose_modules_are_one_unit_each(norm):
    model = build_model("resnet18", (1, 8, 8), 10, norm=norm)  # torchvision's ResNet18, BatchNorm included
    units = model_layers(model, "tensor")
    assert [(u.name, u.keys, u.numel, u.module_type, u.is_norm) for u in units] == [
        (m.name, m.keys, m.numel, m.module_type, m.is_norm) for m in model_layers(model)
    ]


def test_tensor_units_from_a_state_dict_are_those_of_the_module(mixed, mixed_units):
    from_state = model_layers(mixed.state_dict(), "tensor")  # its tensors still share memory: the tie is found
    assert [(x.name, x.keys, x.numel) for x in from_state] == [(x.name, x.keys, x.numel) for x in mixed_units]
    copied = model_layers({key: value.clone() for key, value in mixed.state_dict().items()}, "tensor")
    assert "out" in names(copied) and copied[1].keys == ("embed.weight",)  # a copy loses the tie


def test_root_level_tensors_are_units_of_their_own():
    model = nn.Module()
    model.pos_embedding = nn.Parameter(torch.zeros(4, 4))
    model.cls_token = nn.Parameter(torch.zeros(1, 4))
    model.head = nn.Linear(4, 2)
    assert [(x.name, x.keys) for x in model_layers(model, "tensor")] == [
        ("pos_embedding", ("pos_embedding",)),
        ("cls_token", ("cls_token",)),
        ("head", ("head.weight", "head.bias")),
    ]


def test_an_unknown_layer_unit_lists_the_choices(mixed):
    with pytest.raises(FedlayerError, match="unknown layer unit 'tensors'; valid choices: module, tensor"):
        model_layers(mixed, "tensors")
    assert LAYER_UNITS == ("module", "tensor")


TENSOR_SELECTOR_CASES = [
    ("lstm", [f"lstm.weight_{k}_l{i}" for i in (0, 1) for k in ("ih", "hh")]),  # a module picks all its units
    ("lstm.weight_hh_l0", ["lstm.weight_hh_l0"]),
    ("re:weight_hh", ["lstm.weight_hh_l0", "lstm.weight_hh_l1"]),
    ("*_l1", ["lstm.weight_ih_l1", "lstm.weight_hh_l1"]),
    ("attn", ["attn.in_proj_weight", "attn.bias_k", "attn.bias_v", "attn.out_proj"]),
    ("plain_attn", ["plain_attn", "plain_attn.out_proj"]),
    ("norm", ["norm", "bn"]),
    ("lstm,-re:_l1$", ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]),
    ("first:3", ["cls_token", "embed", "lstm.weight_ih_l0"]),
    ("middle:2", ["attn.bias_k", "attn.bias_v"]),
]


@pytest.mark.parametrize(("selector", "expected"), TENSOR_SELECTOR_CASES, ids=[s for s, _ in TENSOR_SELECTOR_CASES])
def test_selectors_on_tensor_units(mixed_units, selector, expected):
    assert names(select_layers(mixed_units, selector)) == expected


def test_orderings_and_windows_on_tensor_units(mixed_units):
    count = len(mixed_units)
    assert names(order_layers(mixed_units, "deep"))[:2] == ["head", "proj"]
    assert names(order_layers(mixed_units, "minimal"))[:10] == names(mixed_units[:5] + mixed_units[-5:])
    assert [len(group) for group in cumulative_groups(mixed_units, "shallow")] == list(range(1, count + 1))
    windows = sliding_windows(mixed_units, 2)
    assert len(windows) == count - 1 and names(windows[2]) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]


@pytest.mark.parametrize("selector", ["re:^lstm$", "re:^attn$", "at?n", "lstm,re:^attn$"])
def test_a_module_that_the_tensor_unit_splits_is_named_with_its_units(mixed_units, selector):
    module = "lstm" if "lstm$" in selector else "attn"
    lstm_units = [f"lstm.weight_{k}_l{i}" for i in (0, 1) for k in ("ih", "hh")]
    units = lstm_units if module == "lstm" else ["attn.in_proj_weight", "attn.bias_k", "attn.bias_v"]  # not out_proj
    with pytest.raises(FedlayerError, match="matches no layer") as info:
        select_layers(mixed_units, selector)
    message = str(info.value)
    assert f"names the module {module}, which is no layer at layer_unit = 'tensor'" in message
    assert f"its tensor units are {', '.join(units)})" in message


@pytest.mark.parametrize(
    ("selector", "unit", "layer"),
    [
        ("lstm.weight_ih_l0", "lstm.weight_ih_l0", "lstm"),
        ("re:weight_hh", "lstm.weight_hh_l0, lstm.weight_hh_l1", "lstm"),
        ("*.in_proj_weight", "attn.in_proj_weight", "attn"),
        ("attn.bias_k", "attn.bias_k", "attn"),
    ],
)
def test_a_tensor_unit_at_the_module_unit_says_to_set_layer_unit_tensor(mixed, selector, unit, layer):
    with pytest.raises(FedlayerError, match="matches no layer") as info:
        select_layers(model_layers(mixed), selector)
    assert (
        f"names the tensor unit {unit} of the layer {layer}: at layer_unit = 'module' a layer is a whole module; "
        "set layer_unit = 'tensor'"
    ) in str(info.value)


def test_a_name_of_neither_unit_gets_no_unit_hint(mixed, mixed_units):
    for layers in (mixed_units, model_layers(mixed)):
        with pytest.raises(FedlayerError, match="'gru' matches no layer; layers:"):
            select_layers(layers, "gru")


def test_describe_layers_shows_tensor_units_keys_relative_to_their_module(mixed_units):
    table = describe_layers(mixed_units).set_index("name")
    assert table.loc["lstm.weight_ih_l0", "keys"] == "weight_ih_l0, bias_ih_l0"
    assert table.loc["attn.bias_k", "keys"] == "bias_k" and table.loc["cls_token", "keys"] == "cls_token"
    assert table.loc["plain_attn", "keys"] == "in_proj_weight, in_proj_bias"
    assert table.loc["embed", "keys"] == "weight, out.weight"
    assert table.loc["lstm.weight_ih_l0", "type"] == "LSTM"


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


RECURRENT_NET = """\
from torch import nn


class RecurrentNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.lstm(x.reshape(len(x), 8, 8))[0][:, -1])


def make_net(input_shape, num_classes):
    return RecurrentNet(num_classes)
"""


def test_layers_cli_lists_tensor_units(tmp_path, capsys):
    spec = tmp_path / "recurrent.py"
    spec.write_text(RECURRENT_NET)
    args = ["layers", "--model", f"{spec}:make_net", "--dataset", "digits"]
    assert main([*args, "--layer-unit", "tensor", "--select", "lstm"]) == 0
    out = capsys.readouterr().out
    assert "total: 3 layers (layer unit tensor)" in out and "selector 'lstm' picks 2 of 3 layers" in out
    assert "lstm.weight_ih_l0" in out and "weight_hh_l0, bias_hh_l0" in out
    assert main([*args, "--select", "lstm.weight_ih_l0"]) == 2
    assert "set layer_unit = 'tensor'" in capsys.readouterr().err
    assert main([*args, "--layer-unit", "tensors"]) == 2
    assert "unknown layer unit 'tensors'; valid choices: module, tensor" in capsys.readouterr().err


def test_layers_cli_reports_a_bad_selector(capsys):
    assert main(["layers", "--model", "cnn", "--dataset", "digits", "--select", "conv3"]) == 2
    assert "'conv3' matches no layer; layers: conv1, conv2, fc1, fc2" in capsys.readouterr().err
