"""Group specs resolve to readable, unique names of the right kind."""

import pytest
from torch import nn

from fedlayer.analysis import resolve_groups
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from fedlayer.models import build_model


@pytest.fixture(scope="module")
def layers():
    return model_layers(build_model("cnn", (1, 8, 8), 10))  # conv1, conv2, fc1, fc2


def test_every_kind_of_spec(layers):
    groups = resolve_groups(layers, ["layers", "full", "deep", "window:3", "conv*", "fc1,fc2", "layers"])
    by_kind = {}
    for group in groups:
        by_kind.setdefault(group.kind, []).append((group.name, group.layer_names))
    assert by_kind["layer"] == [(n, n) for n in ("conv1", "conv2", "fc1", "fc2")]
    assert by_kind["full"] == [("full", "conv1|conv2|fc1|fc2")]
    assert by_kind["deep"][:2] == [("deep:1", "fc2"), ("deep:2", "fc2|fc1")]
    assert by_kind["window"] == [("window:3@conv1", "conv1|conv2|fc1"), ("window:3@conv2", "conv2|fc1|fc2")]
    assert by_kind["selector"] == [("conv*", "conv1|conv2"), ("fc1,fc2", "fc1|fc2")]
    assert len(groups) == 4 + 1 + 4 + 2 + 2  # the repeated "layers" adds nothing


@pytest.mark.parametrize(
    ("spec", "message"),
    [("window:x", "window:W needs an integer"), ("window:9", "bad window width"), ("nope", "matches no layer"),
     ("", "empty group spec"), ([], "no group spec")],
)  # fmt: skip
def test_bad_specs_name_the_problem(layers, spec, message):
    with pytest.raises(FedlayerError, match=message):
        resolve_groups(layers, spec)


def test_groups_of_tensor_units_are_named_by_their_units():
    model = nn.Sequential()
    model.add_module("embed", nn.Embedding(10, 4))
    model.add_module("lstm", nn.LSTM(4, 4))
    model.add_module("fc", nn.Linear(4, 10))
    units = model_layers(model, "tensor")  # embed, lstm.weight_ih_l0, lstm.weight_hh_l0, fc
    groups = resolve_groups(units, ["layers", "deep", "window:2", "lstm"])
    assert [g.name for g in groups if g.kind == "layer"] == ["embed", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "fc"]
    assert [g.layer_names for g in groups if g.kind == "deep"][:2] == ["fc", "fc|lstm.weight_hh_l0"]
    assert [g.name for g in groups if g.kind == "window"][1] == "window:2@lstm.weight_ih_l0"
    selector = next(g for g in groups if g.kind == "selector")
    assert selector.keys == ["lstm.weight_ih_l0", "lstm.bias_ih_l0", "lstm.weight_hh_l0", "lstm.bias_hh_l0"]
    with pytest.raises(FedlayerError, match="it names the module lstm, which is no layer at layer_unit = 'tensor'"):
        resolve_groups(units, "re:^lstm$")
