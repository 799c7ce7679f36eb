"""Presets: each averages its layers (and only those) in both personal modes; build errors come early."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net
from torch import nn

from fedlayer.errors import ConfigError, FedlayerError, ModelError
from fedlayer.layers import keys_of, model_layers
from strategies import PRESETS, BarrierAware, build_strategy, get_preset

NODES = 3
APP_KWARGS = {"min_available_nodes": NODES, "min_train_nodes": NODES, "min_evaluate_nodes": NODES}
KEYS = keys_of(model_layers(tiny_net()))
EXPECTED = {  # preset -> (averaged layers of tiny_net, train mode)
    "fedavg": (["0", "1", "3"], "standard"),
    "local": ([], "standard"),
    "fedper": (["0", "1"], "standard"),
    "lg-fedavg": (["3"], "standard"),
    "fedbn": (["0", "3"], "standard"),
    "fedrep": (["0", "1"], "fedrep"),
    "fedbabu": (["0", "1"], "fedbabu"),
}


def layer_keys(names: list[str]) -> list[str]:
    return [key for layer in model_layers(tiny_net()) if layer.name in names for key in layer.keys]


def run(strategy, client: ProtocolClient, rounds: int = 2) -> None:
    grid = InProcessGrid(client.app, NODES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=rounds)
    assert not grid.exceptions


def assert_layerwise(client: ProtocolClient, averaged: list[str]) -> None:
    """In round 2 every client loads the same averaged layers and its own round-1 personal layers."""
    for key in KEYS:
        for p in range(NODES):
            if key in averaged:
                np.testing.assert_array_equal(client.loaded[(p, 2)][key], client.loaded[(0, 2)][key])
            else:
                np.testing.assert_array_equal(client.loaded[(p, 2)][key], client.trained[(p, 1)][key])


def test_every_preset_is_listed():
    assert set(PRESETS) == set(EXPECTED) | {"barrier-aware"}


@pytest.mark.parametrize("class_path", ["", "FedAdam"])
@pytest.mark.parametrize("personal", ["server", "client"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_averages_its_layers(name, personal, class_path):
    layers, mode = EXPECTED[name]
    strategy = build_strategy(name, class_path=class_path, personal=personal, layers=tiny_net(), **APP_KWARGS)
    assert isinstance(strategy.strategy, FedAdam if class_path else FedAvg)
    assert (strategy.train_mode, strategy.preset.name) == (mode, name)
    averaged = layer_keys(layers)
    assert strategy.average_keys == averaged
    client = ProtocolClient(tiny_net, *digits())
    run(strategy, client)
    assert_layerwise(client, averaged)
    assert {c["train-mode"] for c in client.configs.values()} == {mode}
    assert {c["average-keys"] for c in client.configs.values()} == {",".join(averaged)}


def test_any_selector_is_a_preset():
    preset = get_preset("last:2")
    assert (preset.average, preset.train_mode) == ("last:2", "standard")
    strategy = build_strategy("last:2", layers=tiny_net(), **APP_KWARGS)
    assert strategy.average_keys == layer_keys(["1", "3"])
    client = ProtocolClient(tiny_net, *digits())
    run(strategy, client)
    assert_layerwise(client, strategy.average_keys)


def test_average_overrides_the_presets_selector_and_keeps_its_train_mode():
    strategy = build_strategy("fedrep", average="first:1", layers=tiny_net())
    assert (strategy.average_keys, strategy.train_mode) == (layer_keys(["0"]), "fedrep")


def test_kwargs_reach_the_flower_strategy():
    strategy = build_strategy(
        "fedper", class_path="flwr.serverapp.strategy:FedAdam", kwargs={"eta": 0.5}, fraction_evaluate=0.5
    )
    assert isinstance(strategy.strategy, FedAdam)
    assert (strategy.strategy.eta, strategy.strategy.fraction_evaluate) == (0.5, 0.5)


def test_barrier_aware_preset_needs_a_measure():
    with pytest.raises(FedlayerError, match="measure"):
        build_strategy("barrier-aware")
    strategy = build_strategy("barrier-aware", measure=lambda r, states: {}, threshold=0.3)
    assert isinstance(strategy, BarrierAware) and strategy.threshold == 0.3


def test_unknown_preset_names_the_presets():
    with pytest.raises(FedlayerError, match=r"'fedprox'.*fedavg, local, fedper"):
        build_strategy("fedprox", layers=tiny_net())
    strategy = build_strategy("fedprox")  # without the model it is checked by resolve(), before training
    with pytest.raises(FedlayerError, match=r"layers: 0, 1, 3.*not a preset"):
        strategy.resolve(tiny_net())


def test_bad_personal_mode_names_the_choices():
    with pytest.raises(FedlayerError, match="server, client"):
        build_strategy("fedper", personal="both")


@pytest.mark.parametrize(
    ("name", "model", "needs"),
    [
        ("fedbn", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "normalisation layers"),
        ("fedper", nn.Sequential(nn.Conv2d(1, 2, 3)), "a Linear classifier head"),
    ],
)
def test_a_preset_that_does_not_fit_the_model_says_what_it_needs(name, model, needs):
    with pytest.raises(ModelError, match=rf"preset '{name}' needs {needs}; model 'tiny' has none"):
        build_strategy(name, layers=model, model_name="tiny")
    strategy = build_strategy(name)  # checked later, by resolve(), with the same message
    with pytest.raises(ModelError, match=rf"preset '{name}' needs {needs}; the model has none"):
        strategy.resolve(model)


def test_a_users_own_average_that_does_not_fit_gets_the_selector_error():
    with pytest.raises(ConfigError, match=r"layer selector 'absent' matches no layer") as caught:
        build_strategy("fedper", average="absent", layers=tiny_net(), model_name="tiny")
    assert "preset" not in str(caught.value)
