"""Group specs resolve to readable, unique names of the right kind."""

import pytest

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
